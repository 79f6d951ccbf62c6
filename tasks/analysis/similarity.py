"""Similarity: the histogram of cosine similarity over every unordered pair of distinct sampled states, in tiles.

Stage 4 of the data flow. Rows are normalised once; each square tile of the upper triangle is one matrix product
(the GEMM does the work), binned arithmetically (bin = floor((c + 1) * bins / 2), clipped so that 1.0 lands in
the last bin) and counted with `bincount`: no sort, no N x N matrix, memory flat in N. The same tile pass, run
again, finds the pair at any quantile exactly: the quantile's bin is read off the cumulative counts, and only the
pairs in that bin are collected and ranked (with one finer sub-binning when a bin is too crowded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

COLLECT_CAP = 2_000_000  # most pairs gathered at once when ranking inside one bin
SUB_BINS = 4096
KEY_BUFFER = 1 << 24  # most keys (int32: 64 MiB) that the grouped pair counts hold before counting them
DENSE_CELLS = 1 << 24  # most cells (n_groups^2 x bins, int64: 128 MiB) of grouped pair counts kept as a dense array;
# beyond (bins far above the default 200), only the non-empty cells are kept (`SparseGroupedCounts`)


def unit_rows(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Rows scaled to unit length (norms taken in float64), as float32 on `device`. Zero rows stay zero."""
    x64 = torch.from_numpy(np.array(x, dtype=np.float64))
    norms = x64.norm(dim=1, keepdim=True)
    return (x64 / torch.where(norms > 0, norms, 1.0)).to(device=device, dtype=torch.float32)


def bin_index(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each cosine on [-1, 1]: floor((c + 1) * bins / 2) after clipping to [-1, 1], with 1.0
    in the last bin. (Truncation equals floor here because c + 1 >= 0; int32 and in-place steps keep this pass
    cheap next to the GEMM that made the values.)"""
    idx = values.clamp(-1.0, 1.0)
    idx.add_(1.0).mul_(bins / 2.0)
    return idx.to(torch.int32).clamp_(max=bins - 1)


def bin_edges(bins: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, bins + 1)


def iter_tiles(units: torch.Tensor, tile: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """Yield (i0, j0, block, mask) over the upper triangle: block[r, c] = cos(i0 + r, j0 + c); mask (or None
    for all) marks the pairs with i < j, so each unordered pair appears exactly once."""
    n = units.shape[0]
    for i0 in range(0, n, tile):
        a = units[i0 : i0 + tile]
        for j0 in range(i0, n, tile):
            block = a @ units[j0 : j0 + tile].T
            mask = None
            if j0 == i0:
                mask = torch.ones(block.shape, dtype=torch.bool, device=block.device).triu_(1)
            yield i0, j0, block, mask


@dataclass
class CosineHistogram:
    """Exact integer counts of pair cosines in `bins` equal bins on [-1, 1], plus the float64 sum and sum of
    squares of the (unclipped) cosines.

    A `Statistic` (`tasks.stats.base`): counts merge exactly in any grouping and order, the sums up to float64
    rounding. State: `counts` (int64) and `sums` ([total, total_sq]); `packed` is accepted and changes nothing (no
    symmetric field). `copy=False` lets `state` return the counts array itself and `load` keep the given one,
    which merges then add to in place: for a histogram about to be dropped, or one loaded only to be read or
    merged from."""

    bins: int
    counts: np.ndarray | None = None
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)

    @property
    def n(self) -> int:
        """The number of pairs counted."""
        return int(self.counts.sum())

    @property
    def n_pairs(self) -> int:
        """The number of pairs counted (`n`, by the name the tables use)."""
        return self.n

    @property
    def is_empty(self) -> bool:
        """True while nothing has been counted or summed."""
        return not self.counts.any() and self.total == 0.0 and self.total_sq == 0.0

    def add(self, values: torch.Tensor, /) -> None:
        """Count a tensor of cosines (a flat vector, or a 2-D tile whose every entry is a pair)."""
        if values.numel() == 0:
            return
        self.counts += torch.bincount(bin_index(values, self.bins).reshape(-1), minlength=self.bins).cpu().numpy()
        self.add_sums(values)

    def add_sums(self, values: torch.Tensor) -> None:
        """Only the float64 sum and sum of squares of `values`, as `add` takes them (for a pass that counts the
        bins its own way: `grouped_cosine_counts`)."""
        if values.dim() == 2:  # float32 row sums (<= tile terms each), accumulated across rows in float64
            self.total += float(values.sum(dim=1).double().sum())
            self.total_sq += float(torch.linalg.vector_norm(values, dim=1).double().pow(2).sum())
        else:
            self.total += float(torch.sum(values, dtype=torch.float64))
            self.total_sq += float(values.double().pow(2).sum())

    def merge(self, other: CosineHistogram) -> CosineHistogram:
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms with {self.bins} and {other.bins} bins")
        self.counts += other.counts
        self.total += other.total
        self.total_sq += other.total_sq
        return self

    @property
    def mean(self) -> float:
        return self.total / self.n_pairs

    @property
    def std(self) -> float:
        n = self.n_pairs
        return float(np.sqrt(max(self.total_sq / n - self.mean**2, 0.0)))

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        counts = self.counts.copy() if copy else self.counts
        return {"counts": counts, "sums": np.array([self.total, self.total_sq], dtype=np.float64)}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> CosineHistogram:
        counts = np.array(state["counts"], dtype=np.int64, copy=True if copy else None)
        total, total_sq = (float(v) for v in state["sums"])
        return cls(len(counts), counts, total, total_sq)


def cosine_histogram(units: torch.Tensor, bins: int, tile: int) -> CosineHistogram:
    """Histogram of cos(i, j) over all i < j of the unit rows `units`."""
    hist = CosineHistogram(bins)
    for _i0, _j0, block, mask in iter_tiles(units, tile):
        hist.add(block[mask] if mask is not None else block)
    return hist


@dataclass(frozen=True)
class QuantilePair:
    """The pair (i < j) whose cosine has rank `rank` (0-based, ascending; ties broken by i, then j)."""

    quantile: float
    rank: int
    i: int
    j: int
    cos: float


def quantile_pairs(
    units: torch.Tensor, hist: CosineHistogram, quantiles: tuple[float, ...], tile: int
) -> list[QuantilePair]:
    """The exact pair at each quantile (rank floor(q (n_pairs - 1)) in ascending order of cosine)."""
    n_pairs = hist.n_pairs
    if n_pairs == 0:
        return []
    bins = hist.bins
    cum = np.cumsum(hist.counts)
    ranks = [int(np.floor(q * (n_pairs - 1))) for q in quantiles]
    # target: (bin, sub-bin or -1) -> list of (quantile index, rank within that cell)
    targets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    crowded: dict[int, list[tuple[int, int]]] = {}
    for qi, r in enumerate(ranks):
        b = int(np.searchsorted(cum, r, side="right"))
        within = r - int(cum[b] - hist.counts[b])
        (crowded.setdefault(b, []) if hist.counts[b] > COLLECT_CAP else targets.setdefault((b, -1), [])).append(
            (qi, within)
        )

    def sub_index(values: torch.Tensor, b: int) -> torch.Tensor:
        left = -1.0 + 2.0 * b / bins
        return torch.floor((values.clamp(-1.0, 1.0) - left) * (bins * SUB_BINS / 2.0)).long().clamp_(0, SUB_BINS - 1)

    if crowded:  # one extra pass: split crowded bins into sub-bins, then rank inside a sub-bin
        sub_counts = {b: np.zeros(SUB_BINS, dtype=np.int64) for b in crowded}
        for _i0, _j0, block, mask in iter_tiles(units, tile):
            values = block[mask] if mask is not None else block.reshape(-1)
            idx = bin_index(values, bins)
            for b in crowded:
                v = values[idx == b]
                sub_counts[b] += torch.bincount(sub_index(v, b), minlength=SUB_BINS).cpu().numpy()
        for b, wanted in crowded.items():
            sub_cum = np.cumsum(sub_counts[b])
            for qi, within in wanted:
                s = int(np.searchsorted(sub_cum, within, side="right"))
                targets.setdefault((b, s), []).append((qi, within - int(sub_cum[s] - sub_counts[b][s])))

    found: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {t: [] for t in targets}
    for i0, j0, block, mask in iter_tiles(units, tile):
        idx = bin_index(block, bins)
        for b, s in targets:
            sel = idx == b
            if mask is not None:
                sel &= mask
            if s >= 0:
                sel &= sub_index(block, b) == s
            r, c = torch.nonzero(sel, as_tuple=True)
            if r.numel():
                found[(b, s)].append(
                    (block[r, c].cpu().numpy(), (r + i0).cpu().numpy(), (c + j0).cpu().numpy())
                )

    out: list[QuantilePair | None] = [None] * len(quantiles)
    for key, wanted in targets.items():
        vals, ii, jj = (np.concatenate(parts) for parts in zip(*found[key]))
        order = np.lexsort((jj, ii, vals))
        for qi, within in wanted:
            k = order[within]
            out[qi] = QuantilePair(quantiles[qi], ranks[qi], int(ii[k]), int(jj[k]), float(vals[k]))
    return out


@dataclass
class SparseGroupedCounts:
    """The grouped pair counts C[a, b, k] of `grouped_cosine_counts` as their non-empty cells: sorted flat keys
    (a * n_groups + b) * bins + k and their counts (int64). At most one cell per pair of sampled states, whatever
    `bins`, where the dense array has n_groups^2 x bins."""

    n_groups: int
    bins: int
    keys: np.ndarray
    counts: np.ndarray

    def total(self) -> np.ndarray:
        """C.sum((0, 1)): the histogram of all pairs (int64)."""
        out = np.zeros(self.bins, dtype=np.int64)
        np.add.at(out, self.keys % self.bins, self.counts)
        return out


def grouped_cosine_counts(units: torch.Tensor, groups: np.ndarray, n_groups: int, bins: int, tile: int,
                          hist: CosineHistogram | None = None,
                          max_dense: int | None = None) -> np.ndarray | SparseGroupedCounts:
    """Pair counts split by the groups of the two tokens: C[a, b, k] = number of pairs i < j with group(i) = a,
    group(j) = b and cos(i, j) in bin k (int64, shape (n_groups, n_groups, bins)).

    The same tile pass and the same arithmetic bins (`bin_index`) as `cosine_histogram`, so C.sum((0, 1)) equals
    its counts exactly; the tiles' combined keys (a * n_groups + b) * bins + k are counted by `bincount` whenever
    as many as min(cells, KEY_BUFFER) have gathered. Memory: the count array (n_groups^2 * bins int64) plus that
    many keys. Used by the document bootstrap of the
    histogram distances (`tasks.analysis.distances.replicate_histograms`): a resample of groups reweights whole cells of C.
    Given an empty `hist`, the same pass fills it, equal to `cosine_histogram`'s to the bit (one tile pass, not two).
    When n_groups^2 x bins exceeds `max_dense` cells (a large `similarity.bins`), the counts come back as their
    non-empty cells (`SparseGroupedCounts`, the same numbers): memory bounded by the pairs, not by bins.
    `max_dense` defaults to `DENSE_CELLS`.
    """
    g = torch.as_tensor(np.asarray(groups, dtype=np.int64), device=units.device)
    if g.shape != (units.shape[0],) or (len(g) and (int(g.min()) < 0 or int(g.max()) >= n_groups)):
        raise ValueError(f"groups must hold one code in [0, {n_groups}) per row")
    size = n_groups * n_groups * bins
    if size > (DENSE_CELLS if max_dense is None else max_dense):
        return _sparse_grouped_counts(units, g, n_groups, bins, tile, hist)
    key_type = torch.int32 if size < 2**31 else torch.int64  # half the memory traffic of int64 keys where they fit
    # A bincount costs O(size) on top of its keys (a zeroed output of n_groups^2 x bins, often more cells than a
    # tile has pairs): keys wait in a buffer until they number at least that, or KEY_BUFFER.
    counts, pending, held = None, [], 0

    def count() -> None:
        nonlocal counts, pending, held
        found = torch.bincount(torch.cat(pending), minlength=size)
        counts = found if counts is None else counts.add_(found)
        pending, held = [], 0

    for keys in _cell_keys(units, g, n_groups, bins, tile, hist, key_type):
        pending.append(keys)
        held += keys.numel()
        if held >= min(size, KEY_BUFFER):
            count()
    if pending or counts is None:
        pending.append(torch.zeros(0, dtype=key_type, device=units.device))
        count()
    out = counts.cpu().numpy().reshape(n_groups, n_groups, bins)
    if hist is not None:
        hist.counts += out.sum((0, 1))
    return out


def _cell_keys(units: torch.Tensor, g: torch.Tensor, n_groups: int, bins: int, tile: int,
               hist: CosineHistogram | None, key_type: torch.dtype) -> Iterator[torch.Tensor]:
    """Every tile's pairs as their cells' keys (group(i) * n_groups + group(j)) * bins + bin, in `key_type`; the
    tile's cosines also go into `hist` where one is given."""
    row_key = (g * (n_groups * bins)).to(key_type)
    col_key = (g * bins).to(key_type)
    for i0, j0, block, mask in iter_tiles(units, tile):
        key = bin_index(block, bins).to(key_type)
        key += row_key[i0 : i0 + block.shape[0], None]
        key += col_key[None, j0 : j0 + block.shape[1]]
        if hist is not None:
            hist.add_sums(block[mask] if mask is not None else block)
        yield key[mask] if mask is not None else key.reshape(-1)


def _sparse_grouped_counts(units: torch.Tensor, g: torch.Tensor, n_groups: int, bins: int, tile: int,
                           hist: CosineHistogram | None) -> SparseGroupedCounts:
    """`grouped_cosine_counts` keeping only the non-empty cells: the same keys (int64), merged by `unique` whenever
    KEY_BUFFER have gathered."""
    keys = torch.zeros(0, dtype=torch.int64, device=units.device)
    counts = torch.zeros(0, dtype=torch.int64, device=units.device)
    pending, held = [], 0

    def merge() -> None:
        nonlocal keys, counts, pending, held
        fresh = torch.cat(pending)
        everything, inverse = torch.unique(torch.cat([keys, fresh]), return_inverse=True)
        weights = torch.cat([counts, torch.ones(len(fresh), dtype=torch.int64, device=units.device)])
        keys, counts = everything, torch.zeros(len(everything), dtype=torch.int64, device=units.device).scatter_add_(0, inverse, weights)
        pending, held = [], 0

    for cell_keys in _cell_keys(units, g, n_groups, bins, tile, hist, torch.int64):
        pending.append(cell_keys)
        held += cell_keys.numel()
        if held >= KEY_BUFFER:
            merge()
    if pending:
        merge()
    out = SparseGroupedCounts(n_groups, bins, keys.cpu().numpy(), counts.cpu().numpy())
    if hist is not None:
        hist.counts += out.total()
    return out
