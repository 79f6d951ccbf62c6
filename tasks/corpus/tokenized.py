"""One unit's documents as model inputs, and shards assembled from slices of such units: the work the corpus
stage's reader actors do (`tasks.corpus.stream` schedules them), as plain functions testable without Ray.

A unit's sequences are built exactly as `tasks.corpus.shards.make_sequences` builds them (windows of at most the
context length, the tokenizer's special tokens around each), with document indices local to the unit; a shard is
a run of consecutive sequences of one or more units, its documents offset by the documents before each unit.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from tasks.corpus.shards import Shard
from tasks.corpus.sources import Unit, read_unit

TOKENIZE_CHUNK = 1000  # documents per tokenizer call


@dataclass(frozen=True)
class Framing:
    """How documents become sequences: the tokenizer (model name, revision, remote code), the ids put before and
    after each sequence, the body length of a window, `long_docs`, and the text column."""

    model: str
    revision: str | None
    trust_remote_code: bool
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    body: int
    long_docs: str
    text_field: str = "text"


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, revision: str | None, trust: bool):
    """Loaded once per reader actor's process."""
    from tasks.checkpoint.loading import load_tokenizer

    return load_tokenizer(model, revision, trust)


def unit_sequences(texts: list, tokenizer, framing: Framing) -> tuple[dict, dict]:
    """(meta, data) of a unit's texts: `data` holds the sequences flat (`ids`, `offsets`, local `doc`, `window`),
    `meta` what the driver needs to cut shards (`docs`, `body` per sequence, local `doc` per sequence)."""
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    docs: list[list[int]] = []
    for start in range(0, len(kept), TOKENIZE_CHUNK):
        docs.extend(tokenizer(kept[start : start + TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"])
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
    doc_start = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    body = framing.body
    n_win = -(-lengths // body) if framing.long_docs == "window" else np.minimum(lengths, 1)
    seq_doc = np.repeat(np.arange(len(docs)), n_win)
    window = np.arange(len(seq_doc)) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    body_start = doc_start[seq_doc] + window * body
    body_len = np.minimum(lengths[seq_doc] - window * body, body)
    pre, suf = np.asarray(framing.prefix, np.int32), np.asarray(framing.suffix, np.int32)
    seq_len = body_len + len(pre) + len(suf)
    offsets = np.concatenate([[0], np.cumsum(seq_len)]).astype(np.int64)
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    # every token's place in its sequence, then its source: prefix, a body token, or suffix
    seq_of = np.repeat(np.arange(len(seq_len)), seq_len)
    pos = np.arange(len(ids)) - offsets[:-1][seq_of]
    in_pre = pos < len(pre)
    in_suf = pos >= (len(pre) + body_len)[seq_of]
    in_body = ~in_pre & ~in_suf
    ids[in_pre] = pre[pos[in_pre]] if len(pre) else ids[in_pre]
    ids[in_suf] = suf[(pos - len(pre) - body_len[seq_of])[in_suf]] if len(suf) else ids[in_suf]
    ids[in_body] = flat[(body_start[seq_of] + pos - len(pre))[in_body]]
    meta = {"docs": len(docs), "texts": len(texts), "body": body_len.astype(np.int32),
            "seq_doc": seq_doc.astype(np.int64)}
    data = {"ids": ids, "offsets": offsets, "doc": seq_doc.astype(np.int64), "window": window.astype(np.int64)}
    return meta, data


def tokenize_unit(unit: Unit, framing: Framing) -> tuple[dict, dict]:
    """Read and tokenize one unit (a Ray task's body): (meta with the bytes' `sha256`, data)."""
    texts, digest = read_unit(unit, framing.text_field)
    tokenizer = _tokenizer(framing.model, framing.revision, framing.trust_remote_code)
    meta, data = unit_sequences(texts, tokenizer, framing)
    return {**meta, "unit": unit.index, "sha256": digest, "tokens": int(data["offsets"][-1])}, data


def assemble_shard(index: int, parts: list, cut: int | None, framing: Framing, origin: str, *datas: dict) -> Shard:
    """Shard `index` from `parts` [(unit, first sequence, end sequence, documents before the unit)], one unit's
    data per part; `cut` keeps that many body tokens of the last sequence (`corpus.max_tokens`), its special tokens
    kept around them."""
    ids, lengths, doc, window = [], [], [], []
    for (_, s0, s1, doc_offset), data in zip(parts, datas):
        off = data["offsets"]
        ids.append(data["ids"][off[s0] : off[s1]])
        lengths.append(np.diff(off[s0 : s1 + 1]))
        doc.append(data["doc"][s0:s1] + doc_offset)
        window.append(data["window"][s0:s1])
    lengths = np.concatenate(lengths)
    flat = np.concatenate(ids)
    if cut is not None:
        last = len(flat) - int(lengths[-1])
        seq = flat[last:]
        keep = np.concatenate([seq[: len(framing.prefix) + cut], seq[len(seq) - len(framing.suffix) :]])
        flat = np.concatenate([flat[:last], keep])
        lengths[-1] = len(keep)
    return Shard(index, flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.concatenate(doc),
                 np.concatenate(window), origin)
