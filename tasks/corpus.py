"""Corpus: documents in, model-sized token sequences out, grouped into shards and batches.

Stage 1 of the data flow (corpus -> capture -> merge -> similarity -> baselines -> report). Documents come
through `datasets` (hub or local files) or from the embedded demo text; they are tokenized without special
tokens, cut into context-length windows (or truncated), wrapped with the model's special tokens, and grouped
into shards of about `shard_tokens` tokens in corpus order. Every sequence is identified by (doc, window), where
`doc` is the document's index among the non-empty documents kept and `window` counts windows within it, so a
token's identity (doc, window, pos) does not depend on how shards are cut or which actor runs them.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tasks.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}


@dataclass(frozen=True)
class Shard:
    """A run of consecutive sequences, stored flat: `ids[offsets[i]:offsets[i+1]]` is sequence i.

    `doc` and `window` identify each sequence; arrays keep a shard cheap to ship through Ray's object store.
    """

    index: int
    ids: np.ndarray  # int32, all sequences concatenated
    offsets: np.ndarray  # int64, len = n_sequences + 1
    doc: np.ndarray  # int64, per sequence
    window: np.ndarray  # int64, per sequence

    @property
    def n_sequences(self) -> int:
        return len(self.doc)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the shard's contents: a saved result is reused only for the same shard."""
        h = hashlib.sha256()
        for a in (self.ids, self.offsets, self.doc, self.window):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Reading documents


def embedded_texts() -> list[str]:
    """Python's reference-manual topics (`pydoc_data.topics`), sorted by topic name: ~0.5 MB of English
    technical prose that every CPython ships, so the demo needs no download."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _expand_files(patterns: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise UserError(f"corpus.files pattern {pattern!r} matches no file; check the path")
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise UserError(f"corpus file {m!r} does not exist; check corpus.files")
            if p.stat().st_size == 0:
                raise UserError(f"corpus file {m!r} is empty; give a file with text in it")
            paths.append(p)
    kinds = {TEXT_SUFFIXES.get(p.suffix.lower()) for p in paths}
    if None in kinds:
        bad = next(p for p in paths if p.suffix.lower() not in TEXT_SUFFIXES)
        raise UserError(f"corpus file {str(bad)!r} has an unsupported type; use .txt, .parquet, .json or .jsonl")
    if len(kinds) > 1:
        raise UserError("corpus.files mixes file types; give files of one type (.txt, .parquet or .jsonl)")
    return paths


def _column(ds, text_field: str, where: str) -> list[str]:
    if text_field not in ds.column_names:
        raise UserError(
            f"{where} has no column {text_field!r} (columns: {', '.join(ds.column_names)}); set corpus.text_field"
        )
    return ds[text_field]


def load_texts(source: str, *, name=None, config=None, split="train", files=(), text_field="text") -> list[str]:
    """All documents of the configured source, in source order (empty ones included; they are dropped later)."""
    if source == "embedded":
        return embedded_texts()
    import datasets

    datasets.disable_progress_bars()
    if source == "files":
        paths = _expand_files(files)
        kind = TEXT_SUFFIXES[paths[0].suffix.lower()]
        if kind == "text":
            for p in paths:
                try:
                    p.read_bytes()[:65536].decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"corpus file {str(p)!r} is not UTF-8 text; convert it or remove it") from None
        try:
            ds = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train")
        except Exception as exc:  # datasets raises many types for unreadable files
            raise UserError(f"could not read corpus files ({type(exc).__name__}: {exc}); check their format") from None
        return _column(ds, text_field if kind != "text" else "text", "corpus files")
    if source == "hub":
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:
            raise UserError(
                f"could not load dataset {name!r} (config {config!r}, split {split!r}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check the names and network"
            ) from None
        return _column(ds, text_field, f"dataset {name!r}")
    raise UserError(f"corpus.source must be embedded, hub or files, got {source!r}")


# ---------------------------------------------------------------------------------------------------------
# Tokenizing and windowing


def tokenize(texts: Sequence[str], tokenizer, *, max_docs: int | None = None, chunk: int = 1000) -> list[list[int]]:
    """Token ids (no special tokens) of the non-empty documents, in order, up to `max_docs` of them."""
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if max_docs is not None:
        kept = kept[:max_docs]
    out: list[list[int]] = []
    for start in range(0, len(kept), chunk):
        out.extend(tokenizer(kept[start : start + chunk], add_special_tokens=False)["input_ids"])
    return out


def context_length(model_config, max_length: int | None) -> int:
    """Longest sequence the model accepts (GPT-2: `n_positions`; BERT: `max_position_embeddings`), capped by
    `max_length`."""
    ctx = getattr(model_config, "n_positions", None) or getattr(model_config, "max_position_embeddings", None)
    if ctx is None:
        raise UserError("cannot tell the model's context length; set corpus.max_length")
    return min(int(ctx), max_length) if max_length else int(ctx)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (BERT: [CLS] / [SEP]; GPT-2: none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise UserError("cannot tell where the tokenizer puts its special tokens; this tokenizer is not supported")


def special_ids(tokenizer) -> list[int]:
    """The ids of the tokenizer's marker tokens, which stand for no text: every special token (BERT's [CLS],
    [SEP], [PAD], [MASK]; GPT-2's <|endoftext|>) and whatever it wraps a sequence with, but not an unknown-token
    id that is nothing else (BERT's [UNK] replaces text the vocabulary lacks; GPT-2's is <|endoftext|>)."""
    prefix, suffix = special_tokens(tokenizer)
    ids = set(tokenizer.all_special_ids) | set(prefix) | set(suffix)
    unk = tokenizer.unk_token_id
    roles = {getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "sep", "cls", "pad", "mask")}
    if unk is not None and unk not in roles and unk not in prefix + suffix:
        ids.discard(unk)
    return sorted(int(i) for i in ids if i is not None)


@dataclass(frozen=True)
class Exclusion:
    """Which tokens stay out of the sample and the main streaming statistics (`capture.exclude`): the first
    token of every model input (`position0`) and tokens whose id is in `special_ids`. Empty: none."""

    position0: bool = False
    special_ids: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, kinds: Sequence[str], tokenizer) -> Exclusion:
        return cls("position0" in kinds, tuple(special_ids(tokenizer)) if "special" in kinds else ())

    def __bool__(self) -> bool:
        return self.position0 or bool(self.special_ids)

    def mask(self, token_ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """True for the excluded tokens among tokens with these ids and positions in their sequence."""
        out = np.isin(token_ids, np.asarray(self.special_ids, dtype=np.int64))
        if self.position0:
            out |= np.asarray(pos) == 0
        return out

    def count(self, shard: Shard) -> int:
        """Excluded tokens in a shard."""
        lengths = shard.lengths()
        pos = np.arange(shard.n_tokens) - np.repeat(shard.offsets[:-1], lengths)
        return int(self.mask(shard.ids, pos).sum())


def make_sequences(
    docs: Sequence[Sequence[int]], tokenizer, seq_len: int, long_docs: str
) -> Iterator[tuple[int, int, list[int]]]:
    """Yield (doc, window, ids) for each model input: windows of at most `seq_len` tokens including the
    tokenizer's special tokens (BERT's [CLS] ... [SEP]; none for GPT-2)."""
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    if body <= 0:
        raise UserError(f"sequence length {seq_len} leaves no room for tokens; raise corpus.max_length")
    for d, ids in enumerate(docs):
        if not ids:
            continue
        starts = range(0, len(ids), body) if long_docs == "window" else range(0, 1)
        for w, s in enumerate(starts):
            yield d, w, prefix + list(ids[s : s + body]) + suffix


def make_shards(sequences: Iterator[tuple[int, int, list[int]]], shard_tokens: int) -> list[Shard]:
    """Group consecutive sequences into shards of about `shard_tokens` tokens (a shard closes once it reaches
    the budget), deterministically from corpus order."""
    shards: list[Shard] = []
    ids: list[list[int]] = []
    docs: list[int] = []
    wins: list[int] = []
    total = 0

    def close() -> None:
        nonlocal ids, docs, wins, total
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
        shards.append(Shard(len(shards), flat, offsets, np.asarray(docs, np.int64), np.asarray(wins, np.int64)))
        ids, docs, wins, total = [], [], [], 0

    for d, w, seq in sequences:
        ids.append(seq)
        docs.append(d)
        wins.append(w)
        total += len(seq)
        if total >= shard_tokens:
            close()
    if ids:
        close()
    return shards


def batches(shard: Shard, batch_tokens: int) -> list[np.ndarray]:
    """Sequence indices of the shard grouped into batches, longest first, each at most `batch_tokens` once
    padded to its longest sequence (the seed's `length_collation`). A sequence longer than the budget gets a
    batch to itself."""
    lengths = shard.lengths()
    order = np.argsort(-lengths, kind="stable")
    out: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        out.append(order[start : start + size])
        start += size
    return out
