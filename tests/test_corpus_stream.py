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
from workflows.config import CorpusConfig

TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "bpe-tokenizer"
SEQ_LEN = 128


@pytest.fixture(scope="module")
def tok():
    from tasks.capture.models import load_tokenizer

    return load_tokenizer(str(TOKENIZER))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, wikitext) -> dict[str, list[str]]:
    """The first 1,200 lines of WikiText-2 as .txt (two files), .jsonl (two files) and .parquet (row groups of
    100), each split into many units."""
    root = tmp_path_factory.mktemp("corpora")
    lines = wikitext.read_text(encoding="utf-8").split("\n")[:1200]
    halves = [lines[:700], lines[700:]]
    out = {}
    for i, half in enumerate(halves):
        (root / f"t{i}.txt").write_text("\n".join(half) + "\n", encoding="utf-8")
        (root / f"j{i}.jsonl").write_text("\n".join(json.dumps({"text": t, "n": 1}) for t in half) + "\n")
        pq.write_table(pa.table({"text": half}), root / f"p{i}.parquet", row_group_size=100)
    for kind, suffix in (("text", "txt"), ("jsonl", "jsonl"), ("parquet", "parquet")):
        out[kind] = [str(root / f"{'tjp'[['txt', 'jsonl', 'parquet'].index(suffix)]}*.{suffix}")]
    return out


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


def stream_shards(ray, tok, files, store, readers, shard_tokens, finished=(), **limits):
    """Every shard the stream gives, as the pool would take them (one read finishing at a time)."""
    corpus = CorpusConfig(source="files", files=tuple(files), shard_tokens=shard_tokens, **limits)
    units = list_units(corpus)
    plan = load_plan(store, "h", units)
    stream = ShardStream(corpus, framing(tok), units, store, "h", plan, set(finished), readers, backlog=10**6)
    tickets = []
    while not stream.done:
        stream.refill(0)
        ready, _ = ray.wait(stream.waiting(), num_returns=1)
        tickets += stream.on_ready(ready[0])
    return [ray.get(t.ref) for t in tickets], stream


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
def test_stream_gives_the_brute_force_shards_with_1_and_2_readers(ray_cluster, tok, corpora, small_units, kind,
                                                                   tmp_path):
    files = corpora[kind]
    want = brute_force(tok, files, 3000)
    for readers in (1, 2):
        got, stream = stream_shards(ray_cluster, tok, files, RunStore(str(tmp_path / f"r{readers}")), readers, 3000)
        same_shards(got, want)
        assert stream.totals.tokens == sum(s.n_tokens for s in want)
        assert stream.totals.documents == len(tokenize(load_texts("files", files=files), tok))


def test_max_tokens_cut_is_exact_and_nothing_past_it_is_read(ray_cluster, tok, corpora, small_units, tmp_path):
    files = corpora["text"]
    n_units = len(list_units(CorpusConfig(source="files", files=tuple(files))))
    for max_tokens in (10_000, 10_001, 23_456):
        want = brute_force(tok, files, 2000, max_tokens=max_tokens)
        got, stream = stream_shards(ray_cluster, tok, files, RunStore(str(tmp_path / str(max_tokens))), 1, 2000,
                                    max_tokens=max_tokens)
        same_shards(got, want)
        assert stream.totals.body_tokens == max_tokens == sum(s.n_tokens for s in want)  # GPT-2: no special tokens
        # one reader: the units read are exactly those up to the one holding the cut
        assert stream.totals.read_units == list(range(len(stream.totals.read_units)))
        assert len(stream.totals.read_units) < n_units
        before, end = read_before_last(stream)
        assert before < max_tokens and end  # the last unit read holds the cut


def test_max_docs_reads_nothing_past_the_last_document(ray_cluster, tok, corpora, small_units, tmp_path):
    files = corpora["jsonl"]
    want = brute_force(tok, files, 3000, max_docs=300)
    got, stream = stream_shards(ray_cluster, tok, files, RunStore(str(tmp_path / "d")), 1, 3000, max_docs=300)
    same_shards(got, want)
    assert stream.totals.documents == 300
    assert stream.totals.read_units == list(range(len(stream.totals.read_units)))
    before, end = read_before_last(stream)
    assert end and json.loads((Path(stream.store.root) / "corpus" / "unit-000000.json").read_text())["docs"] < 300


def test_resume_reads_only_what_unfinished_shards_need(ray_cluster, tok, corpora, small_units, tmp_path):
    files = corpora["text"]
    store = RunStore(str(tmp_path / "run"))
    first, stream = stream_shards(ray_cluster, tok, files, store, 2, 3000)
    n_units = len(stream.totals.read_units)
    plan = load_plan(store, "h", list_units(CorpusConfig(source="files", files=tuple(files))))
    assert planned_fingerprints(plan) == {s.index: s.fingerprint() for s in first}
    finished = {s.index for s in first if s.index != 3}  # every shard but one is done
    again, stream = stream_shards(ray_cluster, tok, files, store, 2, 3000, finished=finished)
    same_shards(again, [first[3]])
    assert 0 < len(stream.totals.read_units) < 4 < n_units
    assert stream.totals.tokens == sum(s.n_tokens for s in first)
    # everything done: nothing read at all
    _, stream = stream_shards(ray_cluster, tok, files, store, 2, 3000, finished={s.index for s in first})
    assert stream.totals.read_units == []


def test_changed_corpus_is_refused_on_resume(ray_cluster, tok, tmp_path, wikitext):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(wikitext.read_text(encoding="utf-8").split("\n")[:300]) + "\n", encoding="utf-8")
    store = RunStore(str(tmp_path / "run"))
    first, _ = stream_shards(ray_cluster, tok, [str(path)], store, 1, 3000)
    text = path.read_bytes()
    stat = os.stat(path)
    path.write_bytes(text.replace(b"the", b"tha", 1))  # the same size, one word edited
    with pytest.raises(UserError, match=r"corpus file '.*c\.txt' changed since this run directory's earlier attempt"):
        stream_shards(ray_cluster, tok, [str(path)], store, 1, 3000)
    # the modification time put back: the bytes read again for the unfinished shard give it away
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UserError, match=r"changed since this run directory's earlier attempt \(its bytes differ\)"):
        stream_shards(ray_cluster, tok, [str(path)], store, 1, 3000, finished={s.index for s in first[1:]})
