"""Token ids in, model-sized sequences out, grouped into shards and batches.

Documents' token ids are cut into context-length windows (or truncated), wrapped with the model's special
tokens, and grouped into shards of about `shard_tokens` tokens in corpus order. Every sequence is identified by
(doc, window), where `doc` is the document's index among the non-empty documents kept and `window` counts
windows within it, so a token's identity (doc, window, pos) does not depend on how shards are cut or which actor
runs them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from tasks.errors import UserError


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
    origin: str = ""  # where the shard comes from (units' checksums and slices), when it was planned from them

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
        """SHA-256 (16 hex digits) of the shard's contents, or of its `origin` (the checksums of the bytes it was
        read from and its slices of them) when it has one: a saved result is reused only for the same shard."""
        if self.origin:
            return hashlib.sha256(self.origin.encode()).hexdigest()[:16]
        h = hashlib.sha256()
        for a in (self.ids, self.offsets, self.doc, self.window):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def context_length(model_config, max_length: int | None) -> int:
    """Longest sequence the model accepts (GPT-2: `n_positions`; BERT: `max_position_embeddings`), capped by
    `max_length`."""
    ctx = getattr(model_config, "n_positions", None) or getattr(model_config, "max_position_embeddings", None)
    if ctx is None:
        raise UserError("cannot tell the model's context length; set corpus.max_length")
    if getattr(model_config, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
        ctx -= int(model_config.pad_token_id) + 1  # RoBERTa's positions start after its padding index (514 -> 512)
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

    def per_sequence(self, prefix: Sequence[int], suffix: Sequence[int]) -> int:
        """The excluded tokens of every sequence whatever its text: the special ids among the ids put before and
        after it, and its first token (text or not) under `position0`. A corpus's sequences times this is a lower
        bound of its excluded tokens, known before any shard is captured."""
        special = set(self.special_ids)
        n = sum(i in special for i in (*prefix, *suffix))
        if self.position0 and not (prefix and prefix[0] in special):
            n += 1
        return n

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
