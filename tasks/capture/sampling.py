"""The token identities behind the sample: a 64-bit hash per token, the candidate threshold, and exemplar context.

Every token gets a 64-bit hash of (seed, doc, window, pos) (SplitMix64 finalizer, Steele et al. 2014). The sample
(`tasks.stats.bottom_k.BottomKSample`) is the k tokens with the smallest hashes (bottom-k sampling: Cohen &
Kaplan 2007): a uniform random sample without replacement, fixed by the seed, mergeable in any order or grouping.

To keep a shard's sample in proportion to its share of the corpus (not k per shard) without knowing the corpus
size in advance, each shard gets a threshold when it is dispatched (`StreamingThreshold`): the k-th smallest
candidate hash returned by the shards finished so far. It only tightens, and it is never below the final k-th
smallest hash of the corpus (the k-th smallest of a subset is at least the k-th smallest of the whole), so every
token of the global bottom-k passes it and the merged bottom-k is exact. A shard dispatched once j shards have
finished keeps about k / j candidates, so over N tokens in shards of m the candidates total about
k (S0 + 0.58 + ln(N / m - S0)) <= k (S0 + 1 + ln(N / m)), S0 being the shards dispatched before the first one
finished (the actors' slots), each keeping up to k (`candidate_threshold`, from a known corpus size, stays for
callers that know it).
"""

from __future__ import annotations

import math

import numpy as np

from tasks.stats.bottom_k import CONTEXT, MASK64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output mix on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def token_hash(seed: int, doc: np.ndarray, window: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """64-bit hash of each token's identity; uniform, and independent across distinct identities."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    h = _splitmix64(np.full(np.shape(doc), np.uint64(seed & MASK64)) + golden)
    for part in (doc, window, pos):
        h = _splitmix64(h ^ np.asarray(part).astype(np.uint64)) + golden
    return _splitmix64(h)


def candidate_threshold(k: int, total_tokens: int) -> np.uint64:
    """Hash threshold under which tokens are kept as candidates: expected count k + 8 sqrt(k) + 64 over
    `total_tokens` tokens (everything when the corpus is that small)."""
    p = (k + 8.0 * math.sqrt(k) + 64.0) / max(total_tokens, 1)
    if p >= 1.0:
        return np.uint64(MASK64)
    return np.uint64(int(p * 2.0**64))


class StreamingThreshold:
    """The candidate threshold handed to each shard at dispatch: the k-th smallest of the candidate hashes that
    finished shards returned (no limit until k are known). Holds at most 2k hashes."""

    def __init__(self, k: int):
        self.k = int(k)
        self.hashes = np.empty(0, dtype=np.uint64)

    def add(self, hashes: np.ndarray) -> None:
        """Fold in a finished shard's candidate hashes. A set, not a multiset: a shard run again (its actor died
        before its statistics were written) returns the same tokens' hashes a second time, and counting them twice
        would put the k-th smallest below the corpus's, dropping tokens of the true bottom-k."""
        self.hashes = np.union1d(self.hashes, np.asarray(hashes, dtype=np.uint64))
        if len(self.hashes) > 2 * self.k:
            self.hashes = self.hashes[: self.k]  # sorted by union1d

    def threshold(self) -> np.uint64:
        """The strict bound for `BottomKSample` (a token passes when its hash is below it): one above the k-th
        smallest hash seen, so a token tied with it still passes."""
        if len(self.hashes) < self.k:
            return np.uint64(MASK64)
        kth = int(np.partition(self.hashes, self.k - 1)[self.k - 1])
        return np.uint64(min(kth + 1, MASK64))


def context_ids(ids: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """For tokens at `pos` of sequences starting at `seq_start` in the flat `ids`: the CONTEXT ids ending at the
    token (-1 before the sequence start) followed by the next token's id (-1 at the end). Shape (n, CONTEXT+1)."""
    offs = np.arange(-CONTEXT + 1, 2)  # CONTEXT tokens ending at pos, then pos + 1
    rel = pos[:, None] + offs[None, :]
    valid = (rel >= 0) & (rel < seq_len[:, None])
    flat = np.where(valid, seq_start[:, None] + rel, 0)
    return np.where(valid, ids[flat], -1).astype(np.int32)
