"""The token identities behind the sample: a 64-bit hash per token, the candidate threshold, and exemplar context.

Every token gets a 64-bit hash of (seed, doc, window, pos) (SplitMix64 finalizer, Steele et al. 2014). The sample
(`tasks.stats.bottom_k.BottomKSample`) is the k tokens with the smallest hashes (bottom-k sampling: Cohen &
Kaplan 2007): a uniform random sample without replacement, fixed by the seed, mergeable in any order or grouping.

To keep a shard's sample in proportion to its share of the corpus (not k per shard), a token is a candidate
only if its hash is below a threshold chosen from the corpus size so that, with overwhelming probability, at
least k tokens in the whole corpus pass it (mean + 8 standard deviations). The final sample is the same
bottom-k as without the threshold; the driver checks the count and fails loudly in the ~1e-15 case it is short.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.stats.bottom_k import MASK64

CONTEXT = 10  # tokens of context shown for an exemplar, ending at the token itself


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


def context_ids(ids: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """For tokens at `pos` of sequences starting at `seq_start` in the flat `ids`: the CONTEXT ids ending at the
    token (-1 before the sequence start) followed by the next token's id (-1 at the end). Shape (n, CONTEXT+1)."""
    offs = np.arange(-CONTEXT + 1, 2)  # CONTEXT tokens ending at pos, then pos + 1
    rel = pos[:, None] + offs[None, :]
    valid = (rel >= 0) & (rel < seq_len[:, None])
    flat = np.where(valid, seq_start[:, None] + rel, 0)
    return np.where(valid, ids[flat], -1).astype(np.int32)
