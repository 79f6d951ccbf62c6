"""A uniform, deterministic, mergeable sample of token states: bottom-k by a hash of the token's identity.

Every token gets a 64-bit hash of (seed, doc, window, pos) (SplitMix64 finalizer, Steele et al. 2014). The sample
is the k tokens with the smallest hashes (bottom-k sampling: Cohen & Kaplan 2007): a uniform random sample
without replacement, fixed by the seed, and the union of two bottom-k samples reduces to the bottom-k of both,
so shards can be sampled independently and merged in any order or grouping with the same result.

To keep a shard's sample in proportion to its share of the corpus (not k per shard), a token is a candidate
only if its hash is below a threshold chosen from the corpus size so that, with overwhelming probability, at
least k tokens in the whole corpus pass it (mean + 8 standard deviations). The final sample is the same
bottom-k as without the threshold; the driver checks the count and fails loudly in the ~1e-15 case it is short.
"""

from __future__ import annotations

import math

import numpy as np

CONTEXT = 10  # tokens of context shown for an exemplar, ending at the token itself
MASK64 = (1 << 64) - 1


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


KEYS = ("hash", "doc", "window", "pos", "token_id", "context")


class BottomKSample:
    """The k smallest-hash tokens seen so far, with their identity, context ids and state vectors at every site.

    Methods follow the project's statistic interface: `add` a batch, `merge` another sample, `state` to plain
    arrays and `load` back. The vector array has shape (sites, n, d), found from the first batch.
    """

    def __init__(self, k: int, threshold: np.uint64 = np.uint64(MASK64)):
        self.k = int(k)
        self.threshold = np.uint64(threshold)
        self.keys: dict[str, np.ndarray] | None = None
        self.vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else len(self.keys["hash"])

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """Boolean mask of the tokens that may enter the sample (below the threshold)."""
        return hashes < self.threshold

    def add(self, keys: dict[str, np.ndarray], vectors: np.ndarray) -> None:
        """Offer tokens (`keys` arrays of length n, `vectors` (sites, n, d)); keep the bottom k overall."""
        mask = self.candidates(keys["hash"])
        keys = {name: np.asarray(keys[name])[mask] for name in KEYS}
        vectors = np.asarray(vectors, dtype=np.float32)[:, mask]
        if self.keys is None:
            self.keys, self.vectors = keys, vectors
        else:
            self.keys = {name: np.concatenate([self.keys[name], keys[name]]) for name in KEYS}
            self.vectors = np.concatenate([self.vectors, vectors], axis=1)
        self._trim()

    def merge(self, other: "BottomKSample") -> "BottomKSample":
        """Fold another sample (of the same sites and width) into this one; returns self."""
        if other.keys is not None:
            self.add(other.keys, other.vectors)
        return self

    def _trim(self) -> None:
        """Sort by (hash, doc, window, pos), a total order, and keep the first k."""
        k = self.keys
        order = np.lexsort((k["pos"], k["window"], k["doc"], k["hash"]))[: self.k]
        self.keys = {name: k[name][order] for name in KEYS}
        self.vectors = self.vectors[:, order]

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle needed): the keys, the vectors, k and the threshold."""
        if self.keys is None:
            raise ValueError("empty sample has no state")
        return {**self.keys, "vectors": self.vectors, "k": np.int64(self.k), "threshold": self.threshold}

    @classmethod
    def load(cls, state: dict[str, np.ndarray]) -> "BottomKSample":
        sample = cls(int(state["k"]), np.uint64(state["threshold"]))
        sample.keys = {name: np.asarray(state[name]) for name in KEYS}
        sample.vectors = np.asarray(state["vectors"])
        return sample


def context_ids(ids: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """For tokens at `pos` of sequences starting at `seq_start` in the flat `ids`: the CONTEXT ids ending at the
    token (-1 before the sequence start) followed by the next token's id (-1 at the end). Shape (n, CONTEXT+1)."""
    offs = np.arange(-CONTEXT + 1, 2)  # CONTEXT tokens ending at pos, then pos + 1
    rel = pos[:, None] + offs[None, :]
    valid = (rel >= 0) & (rel < seq_len[:, None])
    flat = np.where(valid, seq_start[:, None] + rel, 0)
    return np.where(valid, ids[flat], -1).astype(np.int32)
