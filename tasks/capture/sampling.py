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
import torch

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

Vectors = np.ndarray | torch.Tensor  # (sites, n, d); a capture actor keeps them on its device until `state`


def _take(vectors: Vectors, index: np.ndarray) -> Vectors:
    if isinstance(vectors, torch.Tensor):
        return vectors.index_select(1, torch.as_tensor(index, device=vectors.device))
    return vectors[:, index]


def _concat(chunks: list[Vectors]) -> Vectors:
    if len(chunks) == 1:
        return chunks[0]
    return torch.cat(chunks, dim=1) if isinstance(chunks[0], torch.Tensor) else np.concatenate(chunks, axis=1)


def _to_numpy(vectors: Vectors) -> np.ndarray:
    """float32 host array. From a GPU, the tensor crosses in its own dtype (bf16/fp16: half the bytes of float32)
    into page-locked memory (a DMA copy at full link speed, where pageable memory goes through a staging buffer;
    torch's host allocator caches the pinned block for the next shard), then widens on the host."""
    if isinstance(vectors, torch.Tensor):
        if vectors.is_cuda:
            host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            host.copy_(vectors, non_blocking=True)
            torch.cuda.current_stream(vectors.device).synchronize()
            vectors = host
        return vectors.float().numpy()
    return np.asarray(vectors, dtype=np.float32)


class BottomKSample:
    """The k smallest-hash tokens seen so far, with their identity, context ids and state vectors at every site.

    Methods follow the project's statistic interface: `add` a batch, `merge` another sample, `state` to plain
    arrays and `load` back. The vectors have shape (sites, n, d), found from the first batch; they may be a torch
    tensor on the capturing device (kept there, in the model's dtype, until `state`) or a NumPy array. Batches are
    appended and sorted out only when more than 2k rows are pending (amortised O(1) copies per row), and once k
    rows are held, `candidates` admits only hashes at or below the current k-th smallest: over a stream of n
    tokens only about k ln(n / k) of them ever need their vectors gathered.
    """

    def __init__(self, k: int, threshold: np.uint64 = np.uint64(MASK64)):
        self.k = int(k)
        self.threshold = np.uint64(threshold)
        self.cutoff = np.uint64(MASK64)  # k-th smallest hash held, once k are held
        self._keys: list[dict[str, np.ndarray]] = []
        self._vectors: list[np.ndarray] = []
        self._rows = 0
        self._dirty = False  # rows appended since the last trim

    def __len__(self) -> int:
        self._trim()
        return self._rows

    def candidates(self, hashes: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Boolean mask of the tokens of one batch that may still enter the sample: under the threshold, at or
        below the current cutoff, and among the batch's k smallest (no more than k of one batch can enter; `limit`
        more when some of those are known to be unusable, as states with a NaN are)."""
        limit = self.k if limit is None else limit
        mask = (hashes < self.threshold) & (hashes <= self.cutoff)
        if mask.sum() > limit:
            mask &= hashes <= np.partition(hashes[mask], limit - 1)[limit - 1]
        return mask

    def add(self, keys: dict[str, np.ndarray], vectors: np.ndarray) -> None:
        """Offer tokens (`keys` arrays of length n, `vectors` (sites, n, d)); keep the bottom k overall."""
        mask = self.candidates(np.asarray(keys["hash"]))
        if not mask.any():
            return
        index = np.flatnonzero(mask)
        self._keys.append({name: np.asarray(keys[name])[index] for name in KEYS})
        self._vectors.append(_take(vectors, index))
        self._rows += int(mask.sum())
        self._dirty = True
        if self._rows > 2 * self.k:
            self._trim()

    def merge(self, other: "BottomKSample") -> "BottomKSample":
        """Fold another sample (of the same sites and width) into this one; returns self."""
        if len(other):
            self.add(other._keys[0], other._vectors[0])
        return self

    def _trim(self) -> None:
        """Sort by (hash, doc, window, pos), a total order, keep the first k, tighten the cutoff."""
        if not self._dirty:
            return
        k = {name: np.concatenate([c[name] for c in self._keys]) for name in KEYS}
        order = np.lexsort((k["pos"], k["window"], k["doc"], k["hash"]))[: self.k]
        self._keys = [{name: k[name][order] for name in KEYS}]
        self._vectors = [_take(_concat(self._vectors), order)]
        self._rows = len(order)
        self._dirty = False
        if self._rows == self.k:
            self.cutoff = self._keys[0]["hash"][-1]

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle needed): the keys, the vectors, k and the threshold."""
        if not len(self):
            raise ValueError("empty sample has no state")
        return {**self._keys[0], "vectors": _to_numpy(self._vectors[0]), "k": np.int64(self.k), "threshold": self.threshold}

    @classmethod
    def load(cls, state: dict[str, np.ndarray]) -> "BottomKSample":
        sample = cls(int(state["k"]), np.uint64(state["threshold"]))
        sample.add({name: np.asarray(state[name]) for name in KEYS}, np.asarray(state["vectors"]))
        return sample


def context_ids(ids: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """For tokens at `pos` of sequences starting at `seq_start` in the flat `ids`: the CONTEXT ids ending at the
    token (-1 before the sequence start) followed by the next token's id (-1 at the end). Shape (n, CONTEXT+1)."""
    offs = np.arange(-CONTEXT + 1, 2)  # CONTEXT tokens ending at pos, then pos + 1
    rel = pos[:, None] + offs[None, :]
    valid = (rel >= 0) & (rel < seq_len[:, None])
    flat = np.where(valid, seq_start[:, None] + rel, 0)
    return np.where(valid, ids[flat], -1).astype(np.int32)
