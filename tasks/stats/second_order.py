"""The statistics behind the all-pairs cosine moments and the covariance spectrum.

* `Covariance`: mean and co-moment matrix C = sum (x - mean)(x - mean)^T, merged by the pairwise update of Chan,
  Golub & LeVeque (1979) in its co-moment form (Pébay 2008), C = C_a + C_b + (n_a n_b / n) d d^T with
  d = mean_b - mean_a. One d x d product per batch.
* `UnitSums`: with unit vectors u_i = x_i / |x_i|, s = sum u_i and the per-coordinate sq = sum u_ik^2 (O(n d):
  fed every token), which give the exact mean cosine over all pairs and each coordinate's share of it.
* `UnitSecondMoment`: Q = sum u_i u_i^T (one d x d product per batch), which gives the exact mean squared cosine
  over all pairs.

The d x d products run in float64 for float64 input and in float32 for model activations, accumulated in float64;
`SiteStatistics` feeds the two d x d statistics a deterministic fraction of the tokens where their cost matters.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.stats.base import (F64, FieldStatistic, SumStatistic, as_batch, as_number, float_count, positive,
                              product_dtype, row_count)
from tasks.stats.reductions import NormedRows, all_threads, block_sums, unit_scaled


class Covariance(FieldStatistic):
    """Count, mean and co-moment matrix C; the covariance is C / (n - 1)."""

    FIELDS = ("mean", "comoment")
    SYMMETRIC = ("comoment",)

    @property
    def mean(self) -> np.ndarray | None:
        return self._array("mean")

    @property
    def comoment(self) -> np.ndarray | None:
        return self._array("comoment")

    def add(self, x: torch.Tensor | np.ndarray, /, *, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `weights`: a bool mask of the rows to feed (None: all)."""
        x = as_batch(x)
        if x.shape[0] == 0:
            return
        # Centre on the batch mean before the product, so there is no E[xx] - E[x]E[x] cancellation.
        n = row_count(weights, x.shape[0])
        if weights is None:
            mean = x.mean(0, dtype=F64)
        else:
            mean = torch.where(weights[:, None], x, 0).sum(0, dtype=F64) / positive(n)
        dtype = product_dtype(x)
        dev = x.to(dtype) - mean.to(dtype)
        if weights is not None:
            dev.masked_fill_(~weights[:, None], 0.0)
        with all_threads():
            product = dev.T @ dev
        other = Covariance()
        other._n, other.t = n, {"mean": mean, "comoment": product.to(F64)}
        self._absorb(other)

    def merge(self, other: Covariance) -> Covariance:
        """Chan et al.'s pairwise update: C = C_a + C_b + (n_a n_b / n) d d^T, mean = mean_a + d n_b / n."""
        if self._take(other):
            return self
        b = self._fields_of(other)
        device = self.t["mean"].device
        na, nb = float_count(self._n, device), float_count(other._n, device)
        n_sum = na + nb
        n = positive(n_sum)
        d = b["mean"] - self.t["mean"]
        comoment = self._add("comoment", b["comoment"])
        if isinstance(n, torch.Tensor):  # a device count: the weight scales a vector (addr_ takes a number)
            comoment.addr_(d * (na * nb / n), d)
        else:
            comoment.addr_(d, d, alpha=na * nb / n)  # in place: no d x d temporaries
        self.t["mean"] = self.t["mean"] + d * (nb / n)
        self._n = as_number(n_sum)
        return self

    @property
    def covariance(self) -> np.ndarray:
        """The sample covariance C / (n - 1)."""
        return self.comoment / max(self.n - 1, 1)


class UnitSums(NormedRows, SumStatistic):
    """n, s = sum of unit vectors u_i = x_i / |x_i| and sq = per-coordinate sum of u_ik^2 (zero vectors count as
    zero): the exact all-pairs mean cosine (|s|^2 - sum(sq)) / (n (n - 1)) and each coordinate's share of it.
    Plain sums, so merges are exact up to the rounding of one addition."""

    FIELDS = ("sum", "sq")

    @property
    def sum(self) -> np.ndarray | None:
        return self._array("sum")

    @property
    def sq(self) -> np.ndarray | None:
        return self._array("sq")

    def _add_rows(self, x: torch.Tensor, norms: torch.Tensor, weights: torch.Tensor | None) -> None:
        self.add_sums(block_sums(x, norms=norms, weights=weights)[1], n=row_count(weights, len(x)))

    def add_sums(self, sums: torch.Tensor, *, n: int | torch.Tensor) -> None:
        """Add a batch of n rows given as its (2, d) sums of unit vectors and of their squares (as
        `reductions.block_sums` gives them): for a caller that computes them in a shared pass (`SiteStatistics`)."""
        other = UnitSums()
        other._n, other.t = n, {"sum": sums[0], "sq": sums[1]}
        self._absorb(other)



class UnitSecondMoment(NormedRows, SumStatistic):
    """n and Q = sum u_i u_i^T of unit vectors (zero vectors count as zero): the exact all-pairs mean squared
    cosine (||Q||_F^2 - n) / (n (n - 1)). Plain sums, so merges are exact up to the rounding of one addition."""

    FIELDS = ("second",)
    SYMMETRIC = ("second",)

    @property
    def second(self) -> np.ndarray | None:
        return self._array("second")

    def _add_rows(self, x: torch.Tensor, norms: torch.Tensor, weights: torch.Tensor | None) -> None:
        u = unit_scaled(x, product_dtype(x), norms)
        if weights is not None:
            u.masked_fill_(~weights[:, None], 0.0)
        with all_threads():
            product = u.T @ u
        other = UnitSecondMoment()
        other._n, other.t = row_count(weights, x.shape[0]), {"second": product.to(F64)}
        self._absorb(other)
