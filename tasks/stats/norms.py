"""The distribution of the states' Euclidean norms: exact counts in fixed log-spaced bins, plus their moments.

Row norms themselves come from `tasks.stats.reductions.row_norms`, computed once per site and batch and shared.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from tasks.stats.base import F64, row_count, to_array, to_tensor
from tasks.stats.moments import Moments
from tasks.stats.reductions import NormedRows, provisional_centre


class NormHistogram(NormedRows):
    """Counts of state norms in `BINS` log-spaced bins on [LO, HI] (outside values clipped into the end bins), with
    the norms' moments (read as a `Moments` of dimension 1). Counts merge exactly; moments as `Moments` does.

    The moments are kept as the power sums sum (r - c)^p, p = 1..4, of the norms r about a centre c fixed by the
    first batch (the mean of its first rows), which a batch adds to in a few operations where a `Moments` merge
    takes dozens; that matters in the capture hooks, which run it twice per site and forward pass. The shift to
    the mean happens when read (the binomial formulas of `Moments.from_power_sums`), in float64, like the norms
    themselves: the rounding grows as (distance of the mean from c / spread)^4 x 1e-16, nothing to speak of unless
    the norms drift by hundreds of standard deviations from the first batch's. Merges go through `Moments.merge`
    (Pébay 2008).

    State: `counts` (int64) and the moments' state under `m_`; `packed` is accepted and changes nothing (no
    symmetric field); `copy=False` shares the counts' and moments' memory where they are on the CPU."""

    LO, HI, BINS = 1e-3, 1e5, 400

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None
        self._centre: torch.Tensor | None = None  # (1,) float64
        self._sums: torch.Tensor | None = None  # (4, 1) float64: sum (r - c)^p, p = 1..4
        self._n: int | torch.Tensor = 0  # int, or a device count (weighted batches)

    @property
    def n(self) -> int:
        """The number of norms counted (reading a device count waits for it)."""
        return int(self._n)

    @property
    def is_empty(self) -> bool:
        """True while no batch has been added or merged in."""
        return self._sums is None

    @property
    def counts(self) -> np.ndarray:
        return np.zeros(self.BINS, np.int64) if self._counts is None else self._counts.cpu().numpy()

    @property
    def moments(self) -> Moments:
        """The norms' count, mean and central moment sums, as a `Moments` of dimension 1."""
        if self._sums is None:
            return Moments()
        return Moments.from_power_sums(self._n, self._centre, self._sums)

    def _set_moments(self, m: Moments) -> None:
        """Take the power sums from a `Moments` of dimension 1: about its mean, S_1 = 0 and S_p = M_p."""
        if m.is_empty:
            self._centre = self._sums = None
            self._n = 0
            return
        self._centre = m.tensor("mean").clone()
        self._sums = torch.stack([torch.zeros_like(self._centre), m.tensor("m2"), m.tensor("m3"), m.tensor("m4")])
        self._n = m.count

    @classmethod
    def edges(cls) -> np.ndarray:
        return np.geomspace(cls.LO, cls.HI, cls.BINS + 1)

    def _add_rows(self, x: torch.Tensor, norms: torch.Tensor, weights: torch.Tensor | None) -> None:
        scaled = (torch.log(norms.clamp(self.LO, self.HI)) - np.log(self.LO)) * (self.BINS / np.log(self.HI / self.LO))
        idx = scaled.long().clamp_(0, self.BINS - 1)
        if weights is not None:  # rows left out go to one more bin, dropped
            idx.masked_fill_(~weights, self.BINS)
        # Not `bincount`: on a GPU it reads the input's min and max back to the host, two synchronisations per call.
        counts = torch.zeros(self.BINS + 1, dtype=torch.int64, device=idx.device)
        self._add_counts(counts.index_add_(0, idx, torch.ones_like(idx))[: self.BINS])
        r = norms.to(F64)[:, None]
        if self._sums is None:
            self._centre = provisional_centre(r, weights)
            self._sums = torch.zeros(4, 1, dtype=F64, device=r.device)
        dev = r.T - self._centre.to(r.device)  # (1, n)
        if weights is not None:
            dev.masked_fill_(~weights[None, :], 0.0)
        self._sums += dev.expand(4, -1).cumprod(0).sum(1, keepdim=True)  # sum of dev, dev^2, dev^3, dev^4
        self._n = self._n + row_count(weights, len(r))

    def _add_counts(self, counts: torch.Tensor) -> None:
        self._counts = counts.clone() if self._counts is None else self._counts + counts.to(self._counts.device)

    def merge(self, other: NormHistogram) -> NormHistogram:
        if other._counts is not None:
            self._add_counts(other._counts)
        if not other.is_empty:
            self._set_moments(self.moments.merge(other.moments))
        return self

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        counts = self.counts if self._counts is None else to_array(self._counts, copy)
        return {"counts": counts, **{f"m_{k}": v for k, v in self.moments.state(copy=copy).items()}}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> NormHistogram:
        h = cls()
        h._counts = to_tensor(state["counts"], copy, dtype=np.int64)
        h._set_moments(Moments.load({k[2:]: v for k, v in state.items() if k.startswith("m_")}, copy=copy))
        return h
