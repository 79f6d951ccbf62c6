"""All streaming statistics of one (layer, site), and the flat states that carry many sites in one `.npz`."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from tasks.stats.base import as_batch, row_count
from tasks.stats.massive import MASSIVE_TOP, AbsHistogram, RowIdentity, TopAbs
from tasks.stats.moments import Moments
from tasks.stats.norms import NormHistogram
from tasks.stats.reductions import block_sums, provisional_centre, row_norms
from tasks.stats.second_order import Covariance, UnitSecondMoment, UnitSums


class SiteStatistics:
    """All streaming statistics of one (layer, site): moments, norms and unit sums over every token; the two d x d
    statistics (covariance, unit second moment) over the tokens chosen for second-order statistics (all, or a
    fraction where cost demands it). Tokens excluded from the analysis (`capture.exclude`: position 0, special
    tokens) feed only their own norms, `excluded_norms` (their count is its n), and the massive-activation
    statistics: `massive` (the top `massive_top` |x| entries, `tasks.stats.massive.TopAbs`) and `abs_hist` (|x| of
    every coordinate) see every token, excluded ones included, since massive activations sit on exactly the
    tokens `capture.exclude` keeps out (the first token, delimiters).

    A `Statistic`: merges part by part, and its state is the parts' states under `{part}.` prefixes. `n` counts the
    tokens fed to the statistics proper (excluded ones are `excluded_norms.n`)."""

    PARTS = {"moments": Moments, "norms": NormHistogram, "units": UnitSums, "covariance": Covariance,
             "unit_second": UnitSecondMoment, "excluded_norms": NormHistogram, "massive": TopAbs,
             "abs_hist": AbsHistogram}

    def __init__(self, massive_top: int = MASSIVE_TOP) -> None:
        self.moments = Moments()
        self.norms = NormHistogram()
        self.units = UnitSums()
        self.covariance = Covariance()
        self.unit_second = UnitSecondMoment()
        self.excluded_norms = NormHistogram()
        self.massive = TopAbs(massive_top)
        self.abs_hist = AbsHistogram()

    def _parts(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.PARTS]

    @property
    def n(self) -> int:
        """The number of tokens fed to the statistics proper (reading a device count waits for it)."""
        return self.moments.n

    @property
    def is_empty(self) -> bool:
        """True while no part has been fed."""
        return all(part.is_empty for _, part in self._parts())

    def add(self, x: torch.Tensor | np.ndarray, /, *, second_order_rows: torch.Tensor | None = None,
            norms: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d) to every part but the massive ones (`add_massive`); `second_order_rows` (indices, or
        None for all) feed the d x d statistics; `norms`: the rows' norms if already known (`row_norms`);
        `weights`: a bool mask of the rows to feed at all (None: all), counted on their device."""
        x = as_batch(x)
        if len(x) == 0:
            return
        norms = row_norms(x) if norms is None else norms
        self.add_first_order(x, norms=norms, weights=weights)
        self.norms.add(x, norms=norms, weights=weights)
        if second_order_rows is not None:
            x, norms = x[second_order_rows], norms[second_order_rows]
            weights = None if weights is None else weights[second_order_rows]
        self.covariance.add(x, weights=weights)
        self.unit_second.add(x, norms=norms, weights=weights)

    def add_first_order(self, x: torch.Tensor | np.ndarray, /, *, norms: torch.Tensor | None = None,
                        weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d) to `moments` and `units` in one fused pass over it (`reductions.block_sums`): the
        same result as `moments.add` and `units.add`, for one read of the batch instead of two."""
        x = as_batch(x)
        if len(x) == 0:
            return
        norms, centre = row_norms(x) if norms is None else norms, provisional_centre(x, weights)
        powers, units = block_sums(x, centre, norms, weights)
        n = row_count(weights, len(x))
        self.moments.add_power_sums(centre, powers, n=n)
        self.units.add_sums(units, n=n)

    def add_excluded(self, x: torch.Tensor | np.ndarray, /, *, norms: torch.Tensor | None = None,
                     weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d) of excluded tokens: their norms only."""
        self.excluded_norms.add(as_batch(x), norms=norms, weights=weights)

    def add_massive(self, x: torch.Tensor | np.ndarray, /, *, weights: torch.Tensor | None = None,
                    identity: RowIdentity | None = None) -> None:
        """Add a batch (n, d) of tokens, excluded ones included, to `massive` and `abs_hist`; `identity`: the rows'
        tokens (None: unknown). The capture hooks feed them the whole batch in one call (padding left out by
        `weights`), not the gathered rows of `add` and `add_excluded`: no gather. Neither writes |x| out: `massive`
        reads the rows' max and min, `abs_hist` x's bits."""
        x = as_batch(x)
        if len(x) == 0:
            return
        self.massive.add(x, identity=identity, weights=weights)
        self.abs_hist.add(x, weights=weights)

    def merge(self, other: SiteStatistics) -> SiteStatistics:
        for name, part in self._parts():
            part.merge(getattr(other, name))
        return self

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        """The parts' states, keys prefixed `{part}.`; `copy` and `packed` as the parts take them."""
        return {f"{name}.{k}": v for name, part in self._parts()
                for k, v in part.state(copy=copy, packed=packed).items()}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> SiteStatistics:
        s = cls()
        for name, part in cls.PARTS.items():
            prefix = f"{name}."
            setattr(s, name, part.load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                       copy=copy))
        return s


def stack_states(per_site: list[SiteStatistics], copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
    """The states of several sites in one flat dict (`s{index}.{key}`), ready for one `.npz`."""
    return {f"s{i}.{k}": v for i, s in enumerate(per_site) for k, v in s.state(copy=copy, packed=packed).items()}


def unstack_states(arrays: Mapping[str, np.ndarray], n_sites: int, copy: bool = True) -> list[SiteStatistics]:
    """The sites of a `stack_states` dict, loaded (`copy=False`: sharing the arrays' memory)."""
    return [SiteStatistics.load({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"s{i}.")},
                                copy=copy)
            for i in range(n_sites)]
