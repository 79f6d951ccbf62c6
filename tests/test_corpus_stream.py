"""The corpus read by Ray tasks (`tasks.corpus.stream`) against a brute-force reading of the same files in one
process (`load_texts` + `tokenize` + `make_sequences` + `make_shards`): the same documents, token ids and shards,
whatever the number of readers and units; `corpus.max_tokens` and `max_docs` cut exactly and read nothing
past the cut; a resumed run reads only what unfinished shards need and refuses a changed corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.corpus.sources as sources
from tasks.corpus.documents import load_texts, tokenize
from tasks.corpus.shards import make_sequences, make_shards, special_tokens
from tasks.corpus.sources import list_units, read_unit
from tasks.corpus.stream import ShardStream, load_plan, planned_fingerprints
from tasks.corpus.tokenized import Framing
from tasks.errors import UserError
from tasks.storage import RunStore
from tests.test_s3 import s3_endpoint  # noqa: F401  (fixture)
from workflows.config import CorpusConfig

TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "bpe-tokenizer"
SEQ_LEN = 128


@pytest.fixture(scope="module")
def tok():
    from tasks.checkpoint.loading import load_tokenizer

    return load_tokenizer(str(TOKENIZER))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, prose) -> dict[str, list[str]]:
    """The first 1,200 lines of the tests' text as .txt (two files), .jsonl (two files) and .parquet (row groups of
    100), each split into many units."""
    root = tmp_path_factory.mktemp("corpora")
    lines = prose.read_text(encoding="utf-8").split("\n")[:1200]
    halves = [lines[:700], lines[700:]]
    out = {}
    for i, half in enumerate(halves):
        (root / f"t{i}.txt").write_text("\n".join(half) + "\n", encoding="utf-8")
        (root / f"j{i}.jsonl").write_text("\n".join(json.dumps({"text": t, "n": 1}) for t in half) + "\n")
        pq.write_table(pa.table({"text": half}), root / f"p{i}.parquet", row_group_size=100)
    for kind, suffix in (("text", "txt"), ("jsonl", "jsonl"), ("parquet", "parquet")):
        out[kind] = [str(root / f"{'tjp'[['txt', 'jsonl', 'parquet'].index(suffix)]}*.{suffix}")]
    return out


@pytest.fixture(scope="module")
def readers(ray_cluster) -> list:
    """Two reader actors shared by the module's streams (each would otherwise start its own, loading the
    tokenizer's libraries again)."""
    from tasks.corpus.stream import reader_pool

    return reader_pool(2)


@pytest.fixture
def small_units(monkeypatch):
    monkeypatch.setattr(sources, "UNIT_BYTES", 7_000)  # dozens of units, line boundaries anywhere in them


def framing(tok, long_docs="window") -> Framing:
    prefix, suffix = special_tokens(tok)
    return Framing(str(TOKENIZER), None, False, tuple(prefix), tuple(suffix), SEQ_LEN - len(prefix) - len(suffix),
                   long_docs)


def brute_force(tok, files, shard_tokens, max_docs=None, max_tokens=None):
    docs = tokenize(load_texts("files", files=files), tok, max_docs=max_docs)
    if max_tokens is not None:  # the first max_tokens text tokens, the last document cut there
        ends = np.cumsum([len(d) for d in docs])
        last = int(np.searchsorted(ends, max_tokens))
        docs = docs[: last + 1]
        docs[-1] = docs[-1][: len(docs[-1]) - (int(ends[last]) - max_tokens)]
    return make_shards(make_sequences(docs, tok, SEQ_LEN, "window"), shard_tokens)


def stream_shards(pool, tok, files, store, readers, shard_tokens, finished=(), **limits):
    """Every shard the stream gives with `readers` of the reader actors `pool`, as the capture pool would take
    them (one read finishing at a time)."""
    corpus = CorpusConfig(source="files", files=tuple(files), shard_tokens=shard_tokens, **limits)
    units = list_units(corpus)
    plan = load_plan(store, "h", units)
    stream = ShardStream(corpus, framing(tok), units, store, "h", plan, set(finished), readers, backlog=10**6,
                         pool=pool[:readers])
    return drain(stream), stream


def drain(stream) -> list:
    """The shards of a stream, taken as the capture pool takes them (one finished read at a time)."""
    import ray

    tickets = []
    while not stream.done:
        stream.refill(0)
        ready, _ = ray.wait(stream.waiting(), num_returns=1)
        tickets += stream.on_ready(ready[0])
    return [ray.get(t.ref) for t in tickets]


def read_before_last(stream) -> tuple[int, bool]:
    """Text tokens of the units before the last one read, and whether the saved plan ends at that unit."""
    recs = [stream.store.read_json(f"corpus/unit-{u:06d}.json") for u in stream.totals.read_units]
    return sum(r["body_tokens"] for r in recs[:-1]), recs[-1]["end"]


def same_shards(got, want) -> None:
    assert [s.index for s in got] == [s.index for s in want]
    for a, b in zip(got, want):
        for name in ("ids", "offsets", "doc", "window"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (a.index, name)


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_units_read_the_documents_of_load_texts(corpora, small_units, kind):
    files = corpora[kind]
    units = list_units(CorpusConfig(source="files", files=tuple(files)))
    assert len(units) > 10
    texts = [t for u in units for t in read_unit(u)[0]]
    assert texts == list(load_texts("files", files=files))


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_stream_gives_the_brute_force_shards_with_1_and_2_readers(readers, tok, corpora, small_units, kind,
                                                                   tmp_path):
    files = corpora[kind]
    want = brute_force(tok, files, 3000)
    for n in (1, 2):
        got, stream = stream_shards(readers, tok, files, RunStore(str(tmp_path / f"r{n}")), n, 3000)
        same_shards(got, want)
        assert stream.totals.tokens == sum(s.n_tokens for s in want)
        assert stream.totals.documents == len(tokenize(load_texts("files", files=files), tok))


def test_hub_dataset_is_read_from_its_parquet_export(readers, tok, corpora, monkeypatch, tmp_path):
    """The hub path (the dataset's Parquet export, listed by config and split) on local files laid out as the hub
    lays them out gives the shards of a one-process reading of those files."""
    import glob
    import shutil

    split = tmp_path / "wikitext@~parquet" / "wikitext-2-raw-v1" / "validation"
    split.mkdir(parents=True)
    for i, path in enumerate(sorted(glob.glob(corpora["parquet"][0]))):
        shutil.copy(path, split / f"{i:04d}.parquet")
    (split.parent / "train").mkdir()  # another split beside it is not read
    pq.write_table(pa.table({"text": ["not this split"]}), split.parent / "train" / "0000.parquet")
    monkeypatch.setattr(sources, "HUB_PARQUET", str(tmp_path / "{name}@~parquet" / "{config}" / "{split}"))
    corpus = CorpusConfig(source="hub", name="wikitext", config="wikitext-2-raw-v1", split="validation",
                          shard_tokens=3000)
    units = list_units(corpus)
    stream = ShardStream(corpus, framing(tok), units, RunStore(str(tmp_path / "run")), "h", [], set(), 2, 10**6,
                         pool=readers)
    same_shards(drain(stream), brute_force(tok, [str(split / "*.parquet")], 3000))


def test_streamed_dataset_is_read_in_order_one_data_file_per_task(readers, tok, corpora, tmp_path):
    """`corpus.streaming`: a dataset read through `datasets` streaming, one task per data file (here a local
    dataset folder, the hub being out of reach), gives the shards of a one-process reading of its files."""
    import glob
    import shutil

    folder = tmp_path / "ds"
    folder.mkdir()
    local = sorted(glob.glob(corpora["parquet"][0]))
    for i, path in enumerate(local):
        shutil.copy(path, folder / f"validation-{i:05d}-of-{len(local):05d}.parquet")
    corpus = CorpusConfig(source="hub", name=str(folder), split="validation", streaming=True, shard_tokens=3000)
    units = list_units(corpus)
    assert [u.kind for u in units] == ["hub-stream"] * len(local)
    stream = ShardStream(corpus, framing(tok), units, RunStore(str(tmp_path / "run")), "h", [], set(), 2, 10**6,
                         pool=readers)
    same_shards(drain(stream), brute_force(tok, local, 3000))


def test_max_tokens_cut_is_exact_and_nothing_past_it_is_read(readers, tok, corpora, small_units, tmp_path):
    files = corpora["text"]
    n_units = len(list_units(CorpusConfig(source="files", files=tuple(files))))
    for max_tokens in (10_000, 10_001, 23_456):
        want = brute_force(tok, files, 2000, max_tokens=max_tokens)
        got, stream = stream_shards(readers, tok, files, RunStore(str(tmp_path / str(max_tokens))), 1, 2000,
                                    max_tokens=max_tokens)
        same_shards(got, want)
        assert stream.totals.body_tokens == max_tokens == sum(s.n_tokens for s in want)  # GPT-2: no special tokens
        # one reader: the units read are exactly those up to the one holding the cut
        assert stream.totals.read_units == list(range(len(stream.totals.read_units)))
        assert len(stream.totals.read_units) < n_units
        before, end = read_before_last(stream)
        assert before < max_tokens and end  # the last unit read holds the cut
        # two readers: the same cut (a read started past it is cancelled and its result dropped)
        got, stream = stream_shards(readers, tok, files, RunStore(str(tmp_path / f"{max_tokens}-2")), 2, 2000,
                                    max_tokens=max_tokens)
        same_shards(got, want)
        assert stream.totals.body_tokens == max_tokens


def test_max_docs_reads_nothing_past_the_last_document(readers, tok, corpora, small_units, tmp_path):
    files = corpora["jsonl"]
    want = brute_force(tok, files, 3000, max_docs=300)
    got, stream = stream_shards(readers, tok, files, RunStore(str(tmp_path / "d")), 1, 3000, max_docs=300)
    same_shards(got, want)
    assert stream.totals.documents == 300
    assert stream.totals.read_units == list(range(len(stream.totals.read_units)))
    before, end = read_before_last(stream)
    assert end and json.loads((Path(stream.store.root) / "corpus" / "unit-000000.json").read_text())["docs"] < 300


def test_resume_reads_only_what_unfinished_shards_need(readers, tok, corpora, small_units, tmp_path):
    files = corpora["text"]
    store = RunStore(str(tmp_path / "run"))
    first, stream = stream_shards(readers, tok, files, store, 2, 3000)
    n_units = len(stream.totals.read_units)
    plan = load_plan(store, "h", list_units(CorpusConfig(source="files", files=tuple(files))))
    assert planned_fingerprints(plan) == {s.index: s.fingerprint() for s in first}
    finished = {s.index for s in first if s.index != 3}  # every shard but one is done
    again, stream = stream_shards(readers, tok, files, store, 2, 3000, finished=finished)
    same_shards(again, [first[3]])
    assert 0 < len(stream.totals.read_units) < 4 < n_units
    assert stream.totals.tokens == sum(s.n_tokens for s in first)
    # everything done: nothing read at all
    _, stream = stream_shards(readers, tok, files, store, 2, 3000, finished={s.index for s in first})
    assert stream.totals.read_units == []


def test_changed_corpus_is_refused_on_resume(readers, tok, tmp_path, prose):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(prose.read_text(encoding="utf-8").split("\n")[:300]) + "\n", encoding="utf-8")
    store = RunStore(str(tmp_path / "run"))
    first, _ = stream_shards(readers, tok, [str(path)], store, 1, 3000)
    text = path.read_bytes()
    stat = os.stat(path)
    path.write_bytes(text.replace(b"the", b"tha", 1))  # the same size, one word edited
    with pytest.raises(UserError, match=r"corpus file '.*c\.txt' changed since this run directory's earlier attempt"):
        stream_shards(readers, tok, [str(path)], store, 1, 3000)
    # the modification time put back: the bytes read again for the unfinished shard give it away
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UserError, match=r"changed since this run directory's earlier attempt \(its bytes differ\)"):
        stream_shards(readers, tok, [str(path)], store, 1, 3000, finished={s.index for s in first[1:]})


def test_touched_corpus_is_the_same_corpus(readers, tok, tmp_path, prose):
    """A corpus file whose modification time changed over the same bytes (`touch`, restored from a copy) is not a
    changed corpus: the saved plan loads whole; the same size with other bytes is refused."""
    path = tmp_path / "c.txt"
    path.write_text("\n".join(prose.read_text(encoding="utf-8").split("\n")[:300]) + "\n", encoding="utf-8")
    store = RunStore(str(tmp_path / "run"))
    stream_shards(readers, tok, [str(path)], store, 1, 3000)
    units = list_units(CorpusConfig(source="files", files=(str(path),)))
    plan = load_plan(store, "h", units)
    text, stat = path.read_bytes(), os.stat(path)
    path.write_bytes(text)  # restored: the same bytes, a new modification time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = list_units(CorpusConfig(source="files", files=(str(path),)))
    assert touched[0].mtime != units[0].mtime
    assert load_plan(store, "h", touched) == plan
    path.write_bytes(text.replace(b"the", b"tha", 1))
    with pytest.raises(UserError, match=r"'.*c\.txt' changed since this run directory's earlier attempt \(its size or "
                                        r"contents differ\)"):
        load_plan(store, "h", list_units(CorpusConfig(source="files", files=(str(path),))))


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_unit_checksum_is_the_one_read_gives(corpora, small_units, kind):
    """`unit_sha256` (what a rerun compares for a touched file) is the checksum `read_unit` saved in the plan."""
    from tasks.corpus.sources import unit_sha256

    units = list_units(CorpusConfig(source="files", files=tuple(corpora[kind])))
    assert len(units) > 4
    assert [unit_sha256(u) for u in units] == [read_unit(u)[1] for u in units]


# every character but the line ends that str.splitlines() also splits at
NOT_LINE_ENDS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", NOT_LINE_ENDS, ids=[f"U+{ord(c):04X}" for c in NOT_LINE_ENDS])
def test_txt_documents_end_only_at_line_ends(char, tmp_path):
    """A `.txt` file is one document per line, lines ending at \\n, \\r\\n or a lone \\r: the other characters
    str.splitlines() splits at stay inside their document, as `load_texts` (datasets' text reader) keeps them."""
    docs = [f"doc {i} before{char}after{char}" if i % 3 else f"{char}doc {i}" for i in range(40)]
    ends = ["\n", "\r\n", "\r"]
    path = tmp_path / "c.txt"
    path.write_bytes("".join(d + ends[i % 3] for i, d in enumerate(docs)).encode("utf-8"))
    (unit,) = list_units(CorpusConfig(source="files", files=(str(path),)))
    assert read_unit(unit)[0] == docs
    assert load_texts("files", files=[str(path)]) == docs


def test_txt_line_ends_across_unit_boundaries(tmp_path, monkeypatch):
    """Units cut a `.txt` file at \\n only (a unit ends at the first \\n at or past its last byte), so a \\r\\n
    split by a unit boundary and a lone \\r at a unit's end give the documents of the whole file, in order, at every
    unit size."""
    docs = [f"d{i}" + "x" * (i % 5) + ("\x0c" if i % 4 == 0 else "") for i in range(60)]
    ends = ["\r\n", "\r", "\n", "\r\r\n"]  # the last: a lone \r then \r\n, an empty line between two documents
    text = "".join(d + ends[i % 4] for i, d in enumerate(docs))
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    whole = [d for d in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if d]
    assert whole == docs
    for unit_bytes in range(1, 40):
        monkeypatch.setattr(sources, "UNIT_BYTES", unit_bytes)
        units = list_units(CorpusConfig(source="files", files=(str(path),)))
        assert [t for u in units for t in read_unit(u)[0] if t] == docs, unit_bytes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "parquet"])
def test_object_store_files_give_the_local_shards(s3_endpoint, readers, tok, corpora, small_units, kind,
                                                  tmp_path):
    """`s3://` globs (a local S3-compatible server) give the shards of the same files read locally."""
    import glob

    import pyarrow.fs as pafs

    options = f"endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://bucket?{options}")
    local = sorted(glob.glob(corpora[kind][0]))
    for path in local:
        with fs.open_output_stream(f"bucket/corpus-{kind}/{Path(path).name}") as f:
            f.write(Path(path).read_bytes())
    suffix = Path(local[0]).suffix
    remote = [f"s3://bucket/corpus-{kind}/*{suffix}?{options}"]
    got, stream = stream_shards(readers, tok, remote, RunStore(str(tmp_path / "s3")), 2, 3000)
    same_shards(got, brute_force(tok, local, 3000))
    assert stream.units[0].name == f"s3://bucket/corpus-{kind}/{Path(local[0]).name}"


def test_bad_file_mid_corpus_stops_with_its_name_and_no_shard_from_it(readers, tok, small_units, tmp_path,
                                                                       prose):
    lines = prose.read_text(encoding="utf-8").split("\n")[:600]
    good = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.txt").write_bytes(good)
    at = 20_000 + good[20_000:].index(b"\n") + 5  # five bytes into a line past the first units
    (tmp_path / "b.txt").write_bytes(good[:at] + b"\xff" + good[at + 1 :])
    (tmp_path / "c.txt").write_bytes(good)
    store = RunStore(str(tmp_path / "run"))
    line = good[:at].count(b"\n") + 1
    with pytest.raises(UserError, match=rf"corpus file '.*b\.txt' is not UTF-8 text: invalid byte 0xff at byte {at} "
                                        rf"\(line {line}\)"):
        stream_shards(readers, tok, [str(tmp_path / "*.txt")], store, 2, 3000)
    units = list_units(CorpusConfig(source="files", files=(str(tmp_path / "*.txt"),)))
    bad = next(u for u in units if u.path.endswith("b.txt") and u.start <= at < u.stop)
    saved = [int(name[5:11]) for name in store.list("corpus")]
    assert saved and max(saved) < bad.index  # nothing planned from the bad unit or past it


def test_progress_lines_outside_a_terminal(caplog):
    """A log line every `every` seconds with tokens read and captured, the total once known, tokens/s, ETA,
    shards done and retries."""
    import logging
    from collections import Counter

    from tasks.corpus.stream import Totals
    from workflows.progress import Progress

    totals = Totals(units=10, units_read=5, documents=50, tokens=5000, shards=4)
    progress = Progress(0.0, totals, done_tokens=1000, terminal=False)
    progress.captured(2000)
    with caplog.at_level(logging.INFO, logger="workflows.progress"):
        progress.maybe_log(3, Counter({1: 2, "actor 0": 1}))
        totals.done, totals.units_read, totals.tokens = True, 10, 10_000
        progress.maybe_log(3, Counter({1: 2}))
    first, last = [r.getMessage() for r in caplog.records if r.name == "workflows.progress"]
    assert "corpus: 5,000 tokens read (5/10 units, " in first and "capture: 3,000 of ~10,000 tokens" in first
    assert "3 shards done, 2 retries" in first and "tok/s, ETA " in first
    assert "capture: 3,000 of 10,000 tokens" in last
    # with corpus.max_tokens the corpus ends at the cut, not at the last unit: 4,000 of 8,000 text tokens read
    # (5,000 model tokens) is half of it, whatever the share of units
    cut = Totals(units=100, units_read=5, documents=50, tokens=5000, body_tokens=4000, shards=4)
    line = Progress(0.0, cut, done_tokens=0, terminal=False, max_tokens=8000).line(0, 0)
    assert "capture: 0 of ~10,000 tokens" in line and "(5/100 units, " in line


def test_progress_rate_counts_from_the_stage_start():
    """With one shard of 8,226 tokens captured 10 s after the stage started, the line gives 823 tok/s (this
    attempt's tokens over the time since the stage started; the earlier attempts' 1,000 tokens took none of it)
    and an ETA from that rate, not 0 tok/s until a second shard."""
    from tasks.corpus.stream import Totals
    from workflows.progress import Progress

    now = [100.0]
    totals = Totals(units=1, units_read=1, documents=9, tokens=17_452, shards=2, done=True)
    progress = Progress(30.0, totals, done_tokens=1000, terminal=False, clock=lambda: now[0])
    now[0] = 110.0
    progress.captured(8226)
    line = progress.line(1, 0)
    assert "capture: 9,226 of 17,452 tokens, 823 tok/s, ETA 0m10s, 1 shards done" in line, line


@pytest.mark.parametrize("name, content, message", [
    ("strings.jsonl", '"first document"\n"second document"\n',
     "'{path}' line 1: a JSON string (\"first document\"), not an object; give each document as an object with its "
     "text in the field corpus.text_field names ('text'), e.g. {{\"text\": \"...\"}}"),
    ("late.jsonl", '{"text": "fine"}\n\n[1, 2]\n', "'{path}' line 3: a JSON list ([1, 2]), not an object"),
    ("list.json", '["first", "second"]', "'{path}' row 1: a JSON string (\"first\"), not an object"),
    ("numbers.jsonl", '{"text": 1}\n{"text": 2}\n',
     "'{path}' line 1: 'text' is a JSON number (1), not text; give the documents as JSON strings, or set "
     "corpus.text_field to the field that holds them"),
    ("mixed.jsonl", '{"text": "fine"}\n{"text": null}\n{"text": {"a": 1}}\n',
     "'{path}' line 3: 'text' is a JSON object ({{\"a\": 1}}), not text"),
], ids=["strings", "a list after a line", "a .json list of strings", "numbers", "an object after null"])
def test_json_rows_that_are_not_objects_or_not_text_are_named(tmp_path, name, content, message):
    """A JSON row that is not an object, or a text field that is not text (null is an empty document), is told
    as such with its line, not as a missing column or an empty corpus."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    (unit,) = list_units(CorpusConfig(source="files", files=(str(path),)))
    with pytest.raises(UserError) as refused:
        read_unit(unit)
    assert str(refused.value).startswith("corpus file " + message.format(path=path)), str(refused.value)


def test_parquet_text_column_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    (unit,) = list_units(CorpusConfig(source="files", files=(str(path),)))
    with pytest.raises(UserError, match=r"n\.parquet': column 'text' holds int64, not text; set corpus.text_field"):
        read_unit(unit)
