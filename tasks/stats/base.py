"""The statistic interface, and the plumbing that the streaming statistics share.

Every mergeable statistic of the project (the streaming statistics of `tasks.stats`, the bottom-k sample of
`tasks.stats.bottom_k`, the cosine histogram of `tasks.analysis.similarity`) follows one protocol, `Statistic`,
modelled on baukit's `runningstats`:

* `add(x, **kw)` folds in a batch. The batch is the one positional argument; whatever only some statistics need
  is a keyword: `weights=` (a bool mask of the rows to feed), `norms=` (the rows' norms, if already known),
  `second_order_rows=`, `keys=` (a sample's token identities).
* `merge(other)` folds in another statistic of the same kind and returns self. Merges are exact or equal a single
  pass over all the data up to rounding, in any grouping and any order: that is what lets shards be captured
  anywhere and their partials be reduced in a tree.
* `state(*, copy=True, packed=False)` gives plain NumPy arrays (saved as `.npz`, never pickled) and the classmethod
  `load(state, *, copy=True)` rebuilds the statistic from them. `copy=False` allows sharing memory instead of
  copying, for a statistic about to be dropped (`state`) or only merged into another (`load`): it is a
  permission, never a promise, and statistics that must copy anyway (to change dtype, to select rows) do.
  `packed=True` stores symmetric d x d fields as their upper triangles (half the bytes); statistics without such
  fields accept it and store what they always store. `load` takes packed and unpacked states alike.
* Emptiness has one spelling, the `is_empty` property: True while nothing has been folded in (known on the host,
  without waiting for a device). An empty statistic merges as a no-op and merging into one copies. `n` is the
  number of observations held; a statistic fed only rows that `weights` left out is not empty, but has n == 0.

`FieldStatistic` is the common base of the moment-like statistics: a count `n` and named float64 tensors that stay
on the device of the batches that fed them until `state()`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Mapping, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

F64 = torch.float64

S = TypeVar("S", bound="Statistic")
F = TypeVar("F", bound="FieldStatistic")


@runtime_checkable
class Statistic(Protocol):
    """A statistic that streams, merges in any grouping, and saves to plain arrays (see the module docstring)."""

    @property
    def n(self) -> int:
        """The number of observations held (rows, tokens, pairs)."""
        ...

    @property
    def is_empty(self) -> bool:
        """True while nothing has been folded in."""
        ...

    def add(self, x: Any, /, **kw: Any) -> None:
        """Fold in one batch `x`; anything else the statistic needs comes as keywords."""
        ...

    def merge(self: S, other: S) -> S:
        """Fold in another statistic of the same kind; returns self."""
        ...

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        """Plain arrays; `copy=False` may share memory, `packed` halves symmetric d x d fields."""
        ...

    @classmethod
    def load(cls: type[S], state: Mapping[str, Any], *, copy: bool = True) -> S:
        """The statistic of `state()`'s arrays; `copy=False` may share their memory."""
        ...


# Counts. A batch fed with `weights` is counted on its device (a float64 tensor), so a GPU actor never waits for
# the host to learn how many rows a mask kept; unweighted batches keep plain int counts.

def as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch as a tensor (NumPy arrays are wrapped, not copied)."""
    return torch.as_tensor(x) if isinstance(x, np.ndarray) else x


def product_dtype(x: torch.Tensor) -> torch.dtype:
    """The working precision of a batch's reductions and d x d products: float64 for float64 input (exact tests),
    float32 for model activations (float32, bf16, fp16), accumulated in float64 across blocks and batches."""
    return F64 if x.dtype == F64 else torch.float32


def row_count(weights: torch.Tensor | None, n: int) -> int | torch.Tensor:
    """Rows a batch feeds: `n` (int) without weights, else their kept count as a float64 tensor on their device."""
    return n if weights is None else weights.sum(dtype=F64)


def positive(n: int | torch.Tensor) -> int | torch.Tensor:
    """n, or 1 where it is 0, for divisions by a count that may be a device tensor (0/0 stays out of the sums)."""
    return n.clamp(min=1) if isinstance(n, torch.Tensor) else max(n, 1)


def float_count(n: int | torch.Tensor, device: torch.device) -> float | torch.Tensor:
    """A count for the merge formulas: a float, or a float64 tensor on `device` (the merged fields' device)."""
    return n.to(device) if isinstance(n, torch.Tensor) else float(n)


def as_number(n: float | torch.Tensor) -> int | torch.Tensor:
    """A merged count as a statistic keeps it: an int, or the device tensor it is."""
    return n if isinstance(n, torch.Tensor) else int(n)


# Arrays in and out of `state` / `load`.

def to_array(t: torch.Tensor, copy: bool) -> np.ndarray:
    """A tensor's values as a NumPy array: a copy, or (`copy=False`) a view where the tensor is on the CPU."""
    a = t.cpu().numpy()
    return a.copy() if copy and t.device.type == "cpu" else a


def to_tensor(array: Any, copy: bool, dtype: type = np.float64) -> torch.Tensor:
    """A CPU tensor of `array` in `dtype`: a copy, or (`copy=False`) a view of it where its dtype allows."""
    a = np.array(array, dtype=dtype, copy=copy or None)
    if not a.flags.writeable:  # torch cannot flag a tensor read-only; the caller promised not to write to it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


# Symmetric d x d matrices as their upper triangles.

@functools.lru_cache(maxsize=4)
def _upper(d: int) -> np.ndarray:
    return np.triu(np.ones((d, d), dtype=bool))


@functools.lru_cache(maxsize=4)
def upper_flat(d: int, device: torch.device) -> torch.Tensor:
    """Flat (row-major) indices of a d x d matrix's upper triangle, in `pack_symmetric`'s order."""
    i, j = torch.triu_indices(d, d, device=device)
    return i * d + j


def pack_symmetric(a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The upper triangle of a symmetric d x d matrix, row by row, as a vector of d (d + 1) / 2 entries (only
    the upper triangle is read). A tensor is packed where it lives (a GPU's accumulator crosses to the host at
    half the bytes)."""
    if isinstance(a, torch.Tensor):
        return a.reshape(-1)[upper_flat(len(a), a.device)]
    return a[_upper(len(a))]


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """The symmetric d x d matrix whose upper triangle `pack_symmetric` gave (exactly symmetric)."""
    d = (math.isqrt(8 * len(packed) + 1) - 1) // 2
    if d * (d + 1) // 2 != len(packed):
        raise ValueError(f"{len(packed)} entries are not the upper triangle of a square matrix")
    mask, full = _upper(d), np.empty((d, d), dtype=packed.dtype)
    full[mask] = packed
    full.T[mask] = packed  # the transpose's upper triangle is the lower one
    return full


def _owned(value: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """`value` (a field read through `tensor`) as a tensor of its own: cloned only if it is the field itself."""
    return value.clone() if value is field else value


class FieldStatistic:
    """The common base of the moment-like statistics: a count `n` plus named float64 tensors (`FIELDS`), saved as
    `{"n": n, field: array}`, loaded onto the CPU, and moved to `self`'s device when merged. Subclasses give each
    field a property that reads it back as a NumPy array (None while empty).

    The symmetric d x d fields (`SYMMETRIC`) are d x d tensors whose upper triangle is authoritative (sums of
    float32 products need not be exactly symmetric; reads mirror the upper triangle), or, in a statistic loaded
    from a packed state without a copy, the packed upper triangle itself, which merges add in place."""

    FIELDS: tuple[str, ...] = ()
    SYMMETRIC: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._n: int | torch.Tensor = 0  # an int, or a float64 device tensor once weighted batches were added
        self.t: dict[str, torch.Tensor] = {}

    @property
    def n(self) -> int:
        """The number of rows added (reading a device count waits for it)."""
        return int(self._n)

    @property
    def count(self) -> int | torch.Tensor:
        """The number of rows added as kept: an int, or a float64 device tensor (read without waiting)."""
        return self._n

    @property
    def is_empty(self) -> bool:
        """True while no batch has been added or merged in (no fields yet)."""
        return not self.t

    def _array(self, name: str) -> np.ndarray | None:
        """A field as a NumPy array (None while empty), for the subclasses' field properties."""
        return self.tensor(name).cpu().numpy() if name in self.t else None

    def tensor(self, name: str) -> torch.Tensor:
        """A field whole, as a float64 tensor where it lives: symmetric ones mirrored from their upper triangle (or
        unpacked). Non-symmetric fields are the accumulator itself: not to be written to."""
        t = self.t[name]
        if name not in self.SYMMETRIC:
            return t
        if t.ndim == 1:
            return torch.from_numpy(unpack_symmetric(t.cpu().numpy()))
        return t.triu() + t.triu(1).T

    def _fields_of(self, other: FieldStatistic) -> dict[str, torch.Tensor]:
        device = next(iter(self.t.values())).device
        return {k: v.to(device) for k, v in other.t.items()}

    def _add(self, name: str, other: torch.Tensor) -> torch.Tensor:
        """Add another statistic's field into ours, in place; a packed symmetric one into our upper triangle."""
        mine = self.t[name]
        if other.ndim == mine.ndim:
            return mine.add_(other)
        return mine.view(-1).index_add_(0, upper_flat(len(mine), mine.device), other).view(mine.shape)

    def _take(self, other: FieldStatistic) -> bool:
        """Merge preamble: True when nothing is left to do (other empty, or self empty and now a copy of it). A
        weighted batch that kept no row is not empty: it is merged as the zero count it is, without reading that
        count back."""
        if other.is_empty:
            return True
        if self.is_empty:  # a copy; d x d fields keep their (authoritative) upper triangle unmirrored
            self._n, self.t = other._n, {k: v.clone() if v.ndim == 2 else _owned(other.tensor(k), v)
                                         for k, v in other.t.items()}
            return True
        return False

    def _absorb(self: F, other: F) -> F:
        """Merge a batch's own statistic, built by `add` and used nowhere else: taken as it is (no copy) while we
        are empty, as after every seal of an actor's statistics."""
        if self.is_empty:
            self._n, self.t = other._n, other.t
            return self
        return self.merge(other)

    def merge(self: F, other: F) -> F:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        """`n` and the fields as NumPy arrays; with `copy=False`, views of the accumulators where they are on the
        CPU, for a statistic about to be dropped (a flush, the end of a merge): no second copy of gigabytes. With
        `packed`, the symmetric fields as their upper triangles (`pack_symmetric`): half the bytes, for the
        partials that are written, read and moved between merge tasks."""
        if not self.n:
            return {"n": np.int64(0)}
        fields = {}
        for k in self.FIELDS:
            t = self.t[k]
            if k in self.SYMMETRIC and packed:
                fields[k] = to_array(t, copy) if t.ndim == 1 else to_array(pack_symmetric(t), copy=False)
            else:
                fields[k] = to_array(self.tensor(k), copy and k not in self.SYMMETRIC)  # mirrored: already new
        return {"n": np.int64(self.n), **fields}

    @classmethod
    def load(cls: type[F], state: Mapping[str, Any], *, copy: bool = True) -> F:
        """From `state()`'s arrays, packed or not; with `copy=False` the tensors share their memory (read-only
        arrays, such as a file's bytes, included) and packed fields stay packed: for a statistic that is only
        merged into another, never added to."""
        s = cls()
        s._n = int(state["n"])
        if s._n:
            # an owner (copy) holds symmetric fields as d x d tensors: packed ones are unpacked into fresh arrays,
            # so they need no copy before that
            packed = {k for k in cls.SYMMETRIC if np.ndim(state[k]) == 1} if copy else set()
            s.t = {k: to_tensor(state[k], copy and k not in packed) for k in cls.FIELDS}
            s.t.update({k: s.tensor(k) for k in packed})
        return s


class SumStatistic(FieldStatistic):
    """A `FieldStatistic` whose fields are plain sums over rows: merges add counts and fields, exact up to the
    rounding of one addition."""

    def merge(self: F, other: F) -> F:
        if not self._take(other):
            device = next(iter(self.t.values())).device
            self._n = as_number(float_count(self._n, device) + float_count(other._n, device))
            for k, v in self._fields_of(other).items():
                self._add(k, v)
        return self
