"""Streaming statistics of token states, mergeable in any order and grouping.

Every statistic follows the project's interface: `add(x)` a batch (an (n, d) tensor, on any device; shapes are
found from the first batch), `merge(other)`, `state()` to a dict of plain float64 arrays (saved as `.npz`, never
pickled) and `load(state)`. Batches are reduced on their device, then folded into float64 accumulators with the
pairwise update formulas, so a merge of partial statistics equals one pass over all the data up to rounding.

* `Moments`: count, mean and the central moment sums M2, M3, M4 of every coordinate (Pébay 2008, "Formulas for
  robust, one-pass parallel computation of covariances and arbitrary-order statistical moments", eqs. 2.1-2.3,
  generalising Chan, Golub & LeVeque 1979). Gives per-dimension variance, skewness and excess kurtosis.
* `Covariance`: mean and the co-moment matrix C = sum (x - mean)(x - mean)^T (Chan et al.'s pairwise update
  C = C_a + C_b + (n_a n_b / n) d d^T with d = mean_b - mean_a).
* `UnitSums`: sum of unit vectors s = sum u_i and their second moment Q = sum u_i u_i^T, which give the exact
  mean cosine and mean squared cosine over all pairs of distinct tokens.
* `NormHistogram`: counts of the states' Euclidean norms in fixed log-spaced bins, plus their moments.
"""

from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def _batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x) if isinstance(x, np.ndarray) else x


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """d x d products: float64 for float64 input (exact tests), float32 for model activations (speed)."""
    return F64 if x.dtype == F64 else torch.float32


class Moments:
    """Per-coordinate count, mean, M2, M3, M4 (sums of 2nd-4th powers of deviations from the mean)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2 = self.m3 = self.m4 = None

    def add(self, x) -> None:
        x = _batch(x)
        if x.shape[0] == 0:
            return
        xd = x.to(F64)
        mean = xd.mean(0)
        dev = xd - mean
        dev2 = dev * dev
        other = Moments()
        other.n = x.shape[0]
        other.mean = mean.cpu().numpy()
        other.m2 = dev2.sum(0).cpu().numpy()
        other.m3 = (dev2 * dev).sum(0).cpu().numpy()
        other.m4 = (dev2 * dev2).sum(0).cpu().numpy()
        self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = other.n, other.mean.copy(), other.m2.copy(), other.m3.copy(), other.m4.copy()
            return self
        na, nb = float(self.n), float(other.n)
        n = na + nb
        d = other.mean - self.mean
        d2 = d * d
        m2 = self.m2 + other.m2 + d2 * na * nb / n
        m3 = (self.m3 + other.m3 + d2 * d * na * nb * (na - nb) / n**2
              + 3.0 * d * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6.0 * d2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
              + 4.0 * d * (na * other.m3 - nb * self.m3) / n)
        self.mean = self.mean + d * nb / n
        self.m2, self.m3, self.m4, self.n = m2, m3, m4, int(n)
        return self

    @property
    def variance(self) -> np.ndarray:
        """Population variance per coordinate (M2 / n)."""
        return self.m2 / self.n

    @property
    def skewness(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(self.n) * self.m3 / self.m2**1.5

    @property
    def excess_kurtosis(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.n * self.m4 / self.m2**2 - 3.0

    def state(self) -> dict[str, np.ndarray]:
        if not self.n:
            return {"n": np.int64(0)}
        return {"n": np.int64(self.n), "mean": self.mean, "m2": self.m2, "m3": self.m3, "m4": self.m4}

    @classmethod
    def load(cls, state: dict) -> "Moments":
        m = cls()
        m.n = int(state["n"])
        if m.n:
            m.mean, m.m2, m.m3, m.m4 = (np.asarray(state[k], np.float64).copy() for k in ("mean", "m2", "m3", "m4"))
        return m


class Covariance:
    """Count, mean and co-moment matrix C; the covariance is C / (n - 1)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.comoment: np.ndarray | None = None

    def add(self, x) -> None:
        x = _batch(x)
        if x.shape[0] == 0:
            return
        # Centre on the batch mean (float64) before the product, so there is no E[xx] - E[x]E[x] cancellation;
        # the product runs in float64 for float64 input, else in float32 (then accumulated in float64).
        mean = x.to(F64).mean(0)
        dev = (x.to(F64) - mean).to(_product_dtype(x))
        other = Covariance()
        other.n = x.shape[0]
        other.mean = mean.cpu().numpy()
        other.comoment = (dev.T @ dev).to(F64).cpu().numpy()
        self.merge(other)

    def merge(self, other: "Covariance") -> "Covariance":
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.comoment = other.n, other.mean.copy(), other.comoment.copy()
            return self
        na, nb = float(self.n), float(other.n)
        n = na + nb
        d = other.mean - self.mean
        self.comoment = self.comoment + other.comoment + np.outer(d, d) * (na * nb / n)
        self.mean = self.mean + d * nb / n
        self.n = int(n)
        return self

    @property
    def covariance(self) -> np.ndarray:
        return self.comoment / max(self.n - 1, 1)

    def state(self) -> dict[str, np.ndarray]:
        if not self.n:
            return {"n": np.int64(0)}
        return {"n": np.int64(self.n), "mean": self.mean, "comoment": self.comoment}

    @classmethod
    def load(cls, state: dict) -> "Covariance":
        c = cls()
        c.n = int(state["n"])
        if c.n:
            c.mean = np.asarray(state["mean"], np.float64).copy()
            c.comoment = np.asarray(state["comoment"], np.float64).copy()
        return c


class UnitSums:
    """n, s = sum of unit vectors u_i = x_i / |x_i|, and Q = sum u_i u_i^T. Zero vectors count as zero."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.second: np.ndarray | None = None

    def add(self, x) -> None:
        x = _batch(x)
        if x.shape[0] == 0:
            return
        xd = x.to(F64)
        norms = xd.norm(dim=1, keepdim=True)
        u = xd / torch.where(norms > 0, norms, 1.0)
        up = u.to(_product_dtype(x))
        other = UnitSums()
        other.n, other.sum, other.second = x.shape[0], u.sum(0).cpu().numpy(), (up.T @ up).to(F64).cpu().numpy()
        self.merge(other)

    def merge(self, other: "UnitSums") -> "UnitSums":
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.sum, self.second = other.n, other.sum.copy(), other.second.copy()
        else:
            self.n += other.n
            self.sum = self.sum + other.sum
            self.second = self.second + other.second
        return self

    def state(self) -> dict[str, np.ndarray]:
        if not self.n:
            return {"n": np.int64(0)}
        return {"n": np.int64(self.n), "sum": self.sum, "second": self.second}

    @classmethod
    def load(cls, state: dict) -> "UnitSums":
        u = cls()
        u.n = int(state["n"])
        if u.n:
            u.sum = np.asarray(state["sum"], np.float64).copy()
            u.second = np.asarray(state["second"], np.float64).copy()
        return u


class NormHistogram:
    """Counts of state norms in `bins` log-spaced bins on [lo, hi] (outside values clipped into the end bins),
    with the norms' moments (a `Moments` of dimension 1)."""

    LO, HI, BINS = 1e-3, 1e5, 400

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.moments = Moments()

    @classmethod
    def edges(cls) -> np.ndarray:
        return np.geomspace(cls.LO, cls.HI, cls.BINS + 1)

    def add(self, x) -> None:
        x = _batch(x)
        if x.shape[0] == 0:
            return
        norms = x.to(F64).norm(dim=1)
        scaled = (torch.log(norms.clamp(self.LO, self.HI)) - np.log(self.LO)) * (self.BINS / np.log(self.HI / self.LO))
        idx = scaled.long().clamp_(0, self.BINS - 1)
        self.counts += torch.bincount(idx, minlength=self.BINS).cpu().numpy()
        self.moments.add(norms[:, None])

    def merge(self, other: "NormHistogram") -> "NormHistogram":
        self.counts += other.counts
        self.moments.merge(other.moments)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy(), **{f"m_{k}": v for k, v in self.moments.state().items()}}

    @classmethod
    def load(cls, state: dict) -> "NormHistogram":
        h = cls()
        h.counts = np.asarray(state["counts"], np.int64).copy()
        h.moments = Moments.load({k[2:]: v for k, v in state.items() if k.startswith("m_")})
        return h


class SiteStatistics:
    """All streaming statistics of one (layer, site): moments and norms over every token; the two d x d
    statistics (covariance, unit sums) over the tokens chosen for second-order statistics (all, or a fraction
    where cost demands it). Tokens excluded from the analysis (`capture.exclude`: position 0, special tokens)
    feed only their own norms, `excluded_norms` (their count is its moments' n)."""

    PARTS = {"moments": Moments, "norms": NormHistogram, "covariance": Covariance, "units": UnitSums,
             "excluded_norms": NormHistogram}

    def __init__(self) -> None:
        self.moments, self.norms, self.covariance, self.units = Moments(), NormHistogram(), Covariance(), UnitSums()
        self.excluded_norms = NormHistogram()

    def add(self, x, second_order_rows=None) -> None:
        """Add a batch (n, d); `second_order_rows` (indices or None for all) feed the d x d statistics."""
        x = _batch(x)
        self.moments.add(x)
        self.norms.add(x)
        y = x if second_order_rows is None else x[second_order_rows]
        self.covariance.add(y)
        self.units.add(y)

    def add_excluded(self, x) -> None:
        """Add a batch (n, d) of excluded tokens: their norms only."""
        self.excluded_norms.add(_batch(x))

    def merge(self, other: "SiteStatistics") -> "SiteStatistics":
        for name in self.PARTS:
            getattr(self, name).merge(getattr(other, name))
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {f"{name}.{k}": v for name in self.PARTS for k, v in getattr(self, name).state().items()}

    @classmethod
    def load(cls, state: dict) -> "SiteStatistics":
        s = cls()
        for name, part in cls.PARTS.items():
            prefix = f"{name}."
            setattr(s, name, part.load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}))
        return s


def stack_states(per_site: list[SiteStatistics]) -> dict[str, np.ndarray]:
    """The states of several sites in one flat dict (`s{index}.{key}`), ready for one `.npz`."""
    return {f"s{i}.{k}": v for i, s in enumerate(per_site) for k, v in s.state().items()}


def unstack_states(arrays: dict[str, np.ndarray], n_sites: int) -> list[SiteStatistics]:
    return [SiteStatistics.load({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"s{i}.")})
            for i in range(n_sites)]
