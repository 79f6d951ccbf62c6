"""Per-coordinate count, mean and central moment sums M2, M3, M4, merged in any order and grouping.

Merges use Pébay's pairwise update (P. Pébay, "Formulas for robust, one-pass parallel computation of covariances
and arbitrary-order statistical moments", Sandia report SAND2008-6212, 2008, eqs. 2.1-2.3), which generalises the
variance update of Chan, Golub & LeVeque ("Updating formulae and a pairwise algorithm for computing sample
variances", 1979) to third and fourth moments. A merge of partial statistics then equals one pass over all the
data up to rounding. A batch enters through its power sums about a provisional centre (`reductions.block_sums`),
shifted to the batch mean by the binomial formulas; both formulas run as a few elementwise kernels over the width.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from tasks.stats.base import (F64, FieldStatistic, as_batch, as_number, float_count, positive, row_count)
from tasks.stats.reductions import block_sums, provisional_centre

# Where the count-dependent coefficients of `Moments.merge` go in its (4, 4, 5) weight tensor.
_MERGE_PLACES = ((0, 0, 0), (1, 1, 0), (2, 2, 0), (2, 0, 1), (2, 0, 3), (3, 3, 0), (3, 1, 1), (3, 1, 3), (3, 0, 2),
                 (3, 0, 4))  # (moment p, power i of delta - 1, term k of [1, M2a, M3a, M2b, M3b]) per coefficient


@functools.lru_cache(maxsize=8)
def _merge_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(places, tail scale, order): the flat indices of `_MERGE_PLACES` in a (4, 4, 5) weight tensor, and two
    constants that assemble the coefficients; built once per device so that no call copies them from the host."""
    places = torch.tensor([p * 20 + i * 5 + k for p, i, k in _MERGE_PLACES])
    tail = torch.tensor([-3.0, 3.0, 6.0, 6.0, -4.0, 4.0], dtype=F64)
    order = torch.tensor([0, 1, 2, 4, 5, 3, 6, 7, 8, 9])
    return places.to(device), tail.to(device), order.to(device)


def _merge_weights(na, nb, device: torch.device) -> torch.Tensor:
    """The (4, 4, 5) weights of `Moments.merge`, from the counts (floats, or tensors on `device`): in
    `_MERGE_PLACES` order, with fa = na / n and fb = nb / n, fb, n fa fb, n fa fb (fa - fb), -3 fb, 3 fa,
    n fa fb (fa^2 - fa fb + fb^2), 6 fb^2, 6 fa^2, -4 fb, 4 fa."""
    places, tail, order = _merge_tables(device)
    if isinstance(na, torch.Tensor) or isinstance(nb, torch.Tensor):
        v = torch.stack([torch.as_tensor(na, dtype=F64, device=device), torch.as_tensor(nb, dtype=F64, device=device)])
        n = v.sum().clamp(min=1)
        f = v / n  # fa, fb
        g = f.prod()
        c1 = n * g
        sq = f * f
        head = torch.stack([f[1], c1, c1 * (f[0] - f[1]), c1 * (sq.sum() - g)])  # fb, c1, c2, c5
        values = torch.cat([head, torch.cat([f.flip(0), sq.flip(0), f.flip(0)]) * tail])[order]
    else:
        n = max(na + nb, 1.0)
        fa, fb = na / n, nb / n
        c1 = n * fa * fb
        values = torch.tensor([fb, c1, c1 * (fa - fb), -3 * fb, 3 * fa, c1 * (fa * fa - fa * fb + fb * fb),
                               6 * fb * fb, 6 * fa * fa, -4 * fb, 4 * fa], dtype=F64).to(device)
    return torch.zeros(80, dtype=F64, device=device).index_put_((places,), values).view(4, 4, 5)


class Moments(FieldStatistic):
    """Per-coordinate count, mean, M2, M3, M4 (sums of 2nd-4th powers of deviations from the mean): variance,
    skewness and excess kurtosis of every coordinate, in one pass and mergeable (Pébay 2008)."""

    FIELDS = ("mean", "m2", "m3", "m4")

    @property
    def mean(self) -> np.ndarray | None:
        return self._array("mean")

    @property
    def m2(self) -> np.ndarray | None:
        return self._array("m2")

    @property
    def m3(self) -> np.ndarray | None:
        return self._array("m3")

    @property
    def m4(self) -> np.ndarray | None:
        return self._array("m4")

    def add(self, x: torch.Tensor | np.ndarray, /, *, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `weights`: a bool mask of the rows to feed (None: all)."""
        x = as_batch(x)
        if x.shape[0] == 0:
            return
        centre = provisional_centre(x, weights)
        powers = block_sums(x, centre=centre, weights=weights)[0]
        self.add_power_sums(centre, powers, n=row_count(weights, len(x)))

    def add_power_sums(self, centre: torch.Tensor, sums: torch.Tensor, *, n: int | torch.Tensor) -> None:
        """Add a batch of n rows given as its power sums about `centre` (as `reductions.block_sums` gives them):
        for a caller that computes them in a pass it shares with other statistics (`SiteStatistics`)."""
        self._absorb(self.from_power_sums(n, centre, sums))

    @classmethod
    def from_power_sums(cls, n: int | torch.Tensor, centre: torch.Tensor, s: torch.Tensor) -> Moments:
        """The statistic of n rows (an int, or a device count) from their power sums s[p - 1] = sum (x - c)^p,
        p = 1..4, about a centre c: the binomial shift to their mean, with delta = S_1 / n (small against the
        spread when c is near the mean, so no cancellation to speak of; n delta^k = delta^(k-1) S_1),
        M2 = S2 - delta S1, M3 = S3 - 3 delta S2 + 2 delta^2 S1, M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 delta^3 S1."""
        delta = s[0] / positive(n)
        d2 = delta * delta
        d3 = d2 * delta  # delta, delta^2, delta^3 as cumprod gives them
        # Term by term, in the order a contraction over the binomial table sums them (the same bits), without the
        # batched product over d of tiny matrices that a contraction runs.
        shift = torch.stack([-delta * s[0], (2.0 * d2) * s[0] + (-3.0 * delta) * s[1],
                             ((-3.0 * d3) * s[0] + (6.0 * d2) * s[1]) + (-4.0 * delta) * s[2]])
        other = cls()
        other._n = n
        other._set(torch.cat([(centre + delta)[None], s[1:] + shift]))
        return other

    def _set(self, stacked: torch.Tensor) -> None:
        self.t = dict(zip(self.FIELDS, stacked.unbind(0)))

    def _stacked(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([fields[k] for k in self.FIELDS])

    def merge(self, other: Moments) -> Moments:
        """Pébay's pairwise update (2008, eqs. 2.1-2.3): with delta = mean_b - mean_a and n = n_a + n_b,
        mean = mean_a + delta n_b / n, M2 = M2a + M2b + delta^2 n_a n_b / n,
        M3 = M3a + M3b + delta^3 n_a n_b (n_a - n_b) / n^2 + 3 delta (n_a M2b - n_b M2a) / n,
        M4 = M4a + M4b + delta^4 n_a n_b (n_a^2 - n_a n_b + n_b^2) / n^3 + 6 delta^2 (n_a^2 M2b + n_b^2 M2a) / n^2
             + 4 delta (n_a M3b - n_b M3a) / n,
        as one product of [1, M2a, M3a, M2b, M3b] with count-dependent weights (`_merge_weights`) and a sum over
        the powers of delta: a few dozen kernels with counts on a device, instead of one per term."""
        if self._take(other):
            return self
        a, b = self._stacked(self.t), self._stacked(self._fields_of(other))
        device = a.device
        na, nb = float_count(self._n, device), float_count(other._n, device)
        delta = b[0] - a[0]
        d2 = delta * delta
        d3 = d2 * delta
        d4 = d3 * delta  # delta .. delta^4 as cumprod gives them
        terms = torch.cat([torch.ones_like(delta)[None], a[1:3], b[1:3]])
        t = (_merge_weights(na, nb, device).view(16, 5) @ terms).view(4, 4, -1)  # t[p, i]: the weight of delta^(i+1)
        # The contraction over i term by term, where t is not zero, in the order a contraction sums them (the same
        # bits), without its batched products of tiny matrices over the width.
        shift = torch.stack([t[0, 0] * delta, t[1, 1] * d2, t[2, 0] * delta + t[2, 2] * d3,
                             (t[3, 0] * delta + t[3, 1] * d2) + t[3, 3] * d4])
        self._set(torch.cat([a[:1], a[1:] + b[1:]]) + shift)
        self._n = as_number(na + nb)
        return self

    @property
    def variance(self) -> np.ndarray:
        """Population variance per coordinate (M2 / n; at least 0, which rounding can take M2 a hair below)."""
        return np.maximum(self.m2 / self.n, 0.0)

    @property
    def skewness(self) -> np.ndarray:
        """Population skewness per coordinate, sqrt(n) M3 / M2^1.5 (scipy's `skew(bias=True)`)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(self.n) * self.m3 / self.m2**1.5

    @property
    def excess_kurtosis(self) -> np.ndarray:
        """Population excess kurtosis per coordinate, n M4 / M2^2 - 3 (scipy's `kurtosis(bias=True)`)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.n * self.m4 / self.m2**2 - 3.0
