"""The O(n d) reductions of a batch that the streaming statistics share: row norms, unit rows, a provisional
centre, and the fused pass that gives `Moments` its power sums and `UnitSums` its sums in one sweep.

On a CPU the elementwise passes run over row blocks that stay in cache, in the input's precision (float32 for
model activations) within a block and float64 across blocks; on a GPU a block is the whole batch. Measured costs
of these choices are in BENCHMARKS.md (capture overhead).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from tasks.stats.base import F64, as_batch, product_dtype

NORM_TINY = 2.0**-40  # float32 row norms below this may have lost precision to underflowing squares
CPU_BLOCK = 1 << 18  # elements per block for the O(n d) reductions on a CPU (1 MiB of float32); a GPU takes the batch


def row_slices(x: torch.Tensor) -> list[slice]:
    """Row ranges for the elementwise reductions: blocks of about `CPU_BLOCK` elements on a CPU (they stay
    in cache across the several passes), the whole batch on a GPU."""
    n = len(x)
    width = x[0].numel() if n and x.ndim > 1 else 1
    step = max(CPU_BLOCK // width, 1) if x.device.type == "cpu" else max(n, 1)
    return [slice(s, s + step) for s in range(0, n, step)]


_OUTER_THREADS: list[int] = []  # the intra-op threads outside each active `one_thread`, innermost last


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """On a CPU with at most two intra-op threads, run the O(n d) statistics on one (the capture hook wraps a
    site's whole statistics in it; `block_sums` its blocks). They are a few dozen elementwise ops and reductions of
    a few MiB each, and waking the thread pool for each costs more than a second thread saves once a forward pass
    has let the pool go idle (and far more when other processes hold the cores). With more threads the parallel
    gain grows (unmeasured), so they are left alone. The d x d products take every thread back (`all_threads`).
    None of the reductions run here splits a sum between threads, so their results do not depend on the count."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or threads > 2:
        yield
        return
    torch.set_num_threads(1)
    _OUTER_THREADS.append(threads)
    try:
        yield
    finally:
        _OUTER_THREADS.pop()
        torch.set_num_threads(threads)


@contextmanager
def all_threads() -> Iterator[None]:
    """Inside `one_thread`: the threads it took away, for a d x d product (BLAS gains from every core); elsewhere
    nothing changes."""
    if not _OUTER_THREADS or torch.get_num_threads() == _OUTER_THREADS[-1]:
        yield
        return
    torch.set_num_threads(_OUTER_THREADS[-1])
    try:
        yield
    finally:
        torch.set_num_threads(1)


def provisional_centre(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """A provisional centre for the power sums: the mean of the batch's first rows (float64); of those of them
    that `weights` keeps (zero when it keeps none: any centre is exact, a near one only keeps the sums small)."""
    m = min(len(x), 256)
    if weights is None:
        return x[:m].mean(0, dtype=F64)
    w = weights[:m]
    return torch.where(w[:, None], x[:m], 0).sum(0, dtype=F64) / w.sum().clamp(min=1)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (...): the Euclidean norm of every row, in float64, as exact as a float64 computation: finite
    for every row of finite values, however large or small (NaN or Inf for a row holding one). Computed once per
    site and batch (in the capture hook, where it also tells the finite rows) and shared by the statistics' parts.

    A float32 batch on a CPU is reduced in float32 (relative error about 1e-7), and only the rows where that
    overflows, underflows or meets a NaN or Inf are recomputed in float64, which is much cheaper than casting the
    whole batch to float64 first. On a GPU the cast is part of the reduction's kernel and costs nothing to speak
    of, and the row indices would cost a host synchronisation."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return torch.linalg.vector_norm(x, dim=-1, dtype=F64)
    norms = torch.linalg.vector_norm(x, dim=-1)
    odd = torch.nonzero(~((norms > NORM_TINY) & (norms < math.inf)).reshape(-1), as_tuple=True)[0]
    norms = norms.to(F64)
    if len(odd):
        norms.view(-1)[odd] = torch.linalg.vector_norm(x.reshape(-1, x.shape[-1])[odd], dim=-1, dtype=F64)
    return norms


def unit_scaled(x: torch.Tensor, dtype: torch.dtype, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero), in `dtype`; `norms` (float64) as from `row_norms`."""
    norms = (row_norms(x) if norms is None else norms)[:, None]
    scale = 1.0 / torch.where(norms > 0, norms, 1.0)
    return x.to(dtype) * scale.to(dtype)


def block_sums(x: torch.Tensor, centre: torch.Tensor | None = None, norms: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The O(n d) sums of a batch in one pass over cache-sized row blocks (of the rows `weights` keeps, if given;
    the others count as zero, NaN or not): with `centre`, the power sums sum (x - c)^p for p = 1..4, shape (4, d)
    (`Moments.add_power_sums`); with the rows' `norms`, the sum of unit vectors and of their squares, shape (2, d)
    (`UnitSums.add_sums`). None for what was not asked.

    Precision follows the input, as for the d x d products: float64 input is summed in float64 throughout; model
    activations (float32, bf16, fp16) are summed in float32 within a block (a few hundred rows on a CPU, the batch
    on a GPU: relative error about 1e-6, against a sampling error of 1e-4 or more at any corpus size up to 1e8
    tokens) and the blocks' sums in float64 across blocks, batches and merges: half the memory traffic and twice
    the SIMD width of float64."""
    d = x.shape[1]
    dtype = product_dtype(x)
    powers = torch.zeros(4, d, dtype=F64, device=x.device) if centre is not None else None
    units = torch.zeros(2, d, dtype=F64, device=x.device) if norms is not None else None
    c = None if centre is None else centre.to(dtype)
    part = torch.empty(4, d, dtype=dtype, device=x.device)
    with one_thread(x.device):
        for rows in row_slices(x):
            block = x[rows].to(dtype)  # never modified in place: it may be the caller's own tensor
            drop = None if weights is None else ~weights[rows, None]
            if powers is not None:
                dev = block - c
                if drop is not None:
                    dev.masked_fill_(drop, 0.0)
                torch.sum(dev, 0, out=part[0])
                dev2 = dev * dev
                torch.sum(dev2, 0, out=part[1])
                torch.sum(dev2.mul_(dev), 0, out=part[2])  # dev2 now holds dev^3 ...
                torch.sum(dev2.mul_(dev), 0, out=part[3])  # ... and now dev^4
                powers += part
            if units is not None:
                u = unit_scaled(block, dtype, norms[rows])
                if drop is not None:
                    u.masked_fill_(drop, 0.0)
                torch.sum(u, 0, out=part[0])
                torch.sum(u.square_(), 0, out=part[1])
                units += part[:2]
    return powers, units


class NormedRows:
    """The `add` of the statistics that read a batch's rows together with their norms (`UnitSums`,
    `UnitSecondMoment`, `NormHistogram`): the norms are computed here unless the caller already has them
    (`SiteStatistics` computes them once per site and batch), and a non-empty batch goes to `_add_rows`."""

    def add(self, x: torch.Tensor | np.ndarray, /, *, norms: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `norms`: its rows' norms if already known (`row_norms`); `weights`: a bool mask of
        the rows to feed (None: all)."""
        x = as_batch(x)
        if x.shape[0]:
            self._add_rows(x, row_norms(x) if norms is None else norms, weights)

    def _add_rows(self, x: torch.Tensor, norms: torch.Tensor, weights: torch.Tensor | None) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass has its own
