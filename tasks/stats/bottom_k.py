"""A uniform, deterministic, mergeable sample of token states: the k tokens with the smallest hashes.

Bottom-k sampling (E. Cohen & H. Kaplan, "Summarizing data using bottom-k sketches", PODC 2007): with a hash that
is uniform and independent across token identities (`tasks.capture.sampling.token_hash`), the k tokens of smallest
hash are a uniform random sample without replacement, fixed by the seed, and the bottom-k of a union is the
bottom-k of the parts' bottom-k: shards are sampled independently and merged in any order or grouping with the
same result, bit for bit (ties in the hash are broken by the token's identity).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

MASK64 = (1 << 64) - 1

CONTEXT = 10  # tokens of context kept with a sampled token, ending at the token itself (then the next id)
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


def _to_numpy(vectors: Vectors, copy: bool) -> np.ndarray:
    """float32 host array (with `copy`, never a view of `vectors`). From a GPU, the tensor crosses in its own dtype
    (bf16/fp16: half the bytes of float32) into page-locked memory (a DMA copy at full link speed, where pageable
    memory goes through a staging buffer; torch's host allocator caches the pinned block for the next shard), then
    widens on the host."""
    if isinstance(vectors, torch.Tensor):
        if vectors.is_cuda:
            host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            host.copy_(vectors, non_blocking=True)
            torch.cuda.current_stream(vectors.device).synchronize()
            return host.float().numpy()
        out = vectors.float().numpy()
        return out.copy() if copy and vectors.dtype == torch.float32 else out
    return np.array(vectors, dtype=np.float32, copy=True if copy else None)


class BottomKSample:
    """The k smallest-hash tokens seen so far, with their identity, context ids and state vectors at every site.

    A `Statistic`: `add(vectors, keys=...)` offers a batch, `merge` folds in another sample, `state` gives plain
    arrays and `load` reads them back; merges are exact in any grouping and order. The vectors have shape
    (sites, n, d), found from the first batch; they may be a torch tensor on the capturing device (kept there, in
    the model's dtype, until `state`) or a NumPy array. Batches are appended and sorted out only when more than 2k
    rows are pending (amortised O(1) copies per row), and once k rows are held, `candidates` admits only hashes at
    or below the current k-th smallest: over a stream of n tokens only about k ln(n / k) of them ever need their
    vectors gathered.

    State: the keys (`KEYS`), `vectors` as float32, `k` and `threshold`. An empty sample has none (`state` raises:
    it would not know its vectors' shape), so callers store None for it. `packed` is accepted and changes nothing
    (no symmetric field); `load` always copies, since it selects rows through `add`.
    """

    def __init__(self, k: int, threshold: np.uint64 = np.uint64(MASK64)):
        self.k = int(k)
        self.threshold = np.uint64(threshold)
        self.cutoff = np.uint64(MASK64)  # k-th smallest hash held, once k are held
        self._keys: list[dict[str, np.ndarray]] = []
        self._vectors: list[np.ndarray] = []
        self._rows = 0
        self._dirty = False  # rows appended since the last trim

    @property
    def n(self) -> int:
        """The number of tokens held (at most k)."""
        self._trim()
        return self._rows

    @property
    def is_empty(self) -> bool:
        """True while no token is held."""
        return self.n == 0

    def candidates(self, hashes: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Boolean mask of the tokens of one batch that may still enter the sample: under the threshold, at or
        below the current cutoff, and among the batch's k smallest (no more than k of one batch can enter; `limit`
        more when some of those are known to be unusable, as states with a NaN are)."""
        limit = self.k if limit is None else limit
        mask = (hashes < self.threshold) & (hashes <= self.cutoff)
        if mask.sum() > limit:
            mask &= hashes <= np.partition(hashes[mask], limit - 1)[limit - 1]
        return mask

    def add(self, vectors: Vectors, /, *, keys: Mapping[str, np.ndarray]) -> None:
        """Offer tokens (`vectors` (sites, n, d), `keys` arrays of length n); keep the bottom k overall."""
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

    def merge(self, other: BottomKSample) -> BottomKSample:
        """Fold another sample (of the same sites and width) into this one; returns self."""
        if not other.is_empty:
            self.add(other._vectors[0], keys=other._keys[0])
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

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle needed): the keys, the vectors, k and the threshold; with `copy=False`, views of
        the sample's own arrays where they are on the host, for a sample about to be dropped."""
        if self.is_empty:
            raise ValueError("empty sample has no state")
        keys = {name: v.copy() for name, v in self._keys[0].items()} if copy else self._keys[0]
        return {**keys, "vectors": _to_numpy(self._vectors[0], copy), "k": np.int64(self.k),
                "threshold": self.threshold}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> BottomKSample:
        sample = cls(int(state["k"]), np.uint64(state["threshold"]))
        sample.add(np.asarray(state["vectors"]), keys={name: np.asarray(state[name]) for name in KEYS})
        return sample


