"""Streaming statistics of token states, mergeable in any order and grouping.

Every statistic follows the project's interface: `add(x)` a batch (an (n, d) tensor, on any device; shapes are
found from the first batch), `merge(other)`, `state()` to a dict of plain float64 arrays (saved as `.npz`, never
pickled) and `load(state)`. Accumulators are float64 tensors that stay on the device of the batches that fed them
(a GPU actor moves nothing to the host until `state()`), and batches are folded in with the pairwise update
formulas, so a merge of partial statistics equals one pass over all the data up to rounding. Array attributes
(`mean`, `m2`, ...) read back as NumPy arrays. For gigabyte-sized partials, `state(copy=False)` and
`load(state, copy=False)` share memory instead of copying, and `state(packed=True)` stores the symmetric d x d
sums as upper triangles (half the bytes; `load` takes either form).

* `Moments`: count, mean and the central moment sums M2, M3, M4 of every coordinate (Pébay 2008, "Formulas for
  robust, one-pass parallel computation of covariances and arbitrary-order statistical moments", eqs. 2.1-2.3,
  generalising Chan, Golub & LeVeque 1979). Gives per-dimension variance, skewness and excess kurtosis.
* `Covariance`: mean and the co-moment matrix C = sum (x - mean)(x - mean)^T (Chan et al.'s pairwise update
  C = C_a + C_b + (n_a n_b / n) d d^T with d = mean_b - mean_a).
* `UnitSums`: sum of unit vectors s = sum u_i and per-coordinate sum of squares sum u_ik^2 (O(n d): on every
  token), which give the exact mean cosine over all pairs and each coordinate's share of it.
* `UnitSecondMoment`: Q = sum u_i u_i^T (O(n d^2)), which gives the exact mean squared cosine over all pairs.
* `NormHistogram`: counts of the states' Euclidean norms in fixed log-spaced bins, plus their moments.

Rows can be left out of a batch without knowing how many on the host: `add(x, weights=mask)` feeds only the rows
whose mask entry is True, and counts them on the batch's device (`n` then stays a device tensor until read). The
capture hooks use it on a GPU to keep a batch's NaN or Inf rows out without a host synchronisation.

Cost: the two d x d statistics are one matrix product per batch each (2 n d^2 flops, float32 for model
activations, accumulated in float64); `SiteStatistics` feeds them a deterministic fraction of the tokens where
that cost matters (`stats.second_order_fraction`). The rest is O(n d); on a CPU it runs over row blocks that stay
in cache, in the input's precision (float32 for model activations) within a block and float64 across blocks.
"""

from __future__ import annotations

import functools
import math
import warnings
from contextlib import contextmanager

import numpy as np
import torch

F64 = torch.float64
NORM_TINY = 2.0**-40  # float32 row norms below this may have lost precision to underflowing squares
CPU_BLOCK = 1 << 18  # elements per block for the O(n d) reductions on a CPU (1 MiB of float32); a GPU takes the batch


def _batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x) if isinstance(x, np.ndarray) else x


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """d x d products: float64 for float64 input (exact tests), float32 for model activations (speed)."""
    return F64 if x.dtype == F64 else torch.float32


def _row_slices(x: torch.Tensor) -> list[slice]:
    """Row ranges for the elementwise reductions: blocks of about `CPU_BLOCK` elements on a CPU (they stay
    in cache across the several passes), the whole batch on a GPU."""
    n = len(x)
    width = x[0].numel() if n and x.ndim > 1 else 1
    step = max(CPU_BLOCK // width, 1) if x.device.type == "cpu" else max(n, 1)
    return [slice(s, s + step) for s in range(0, n, step)]


def _centre(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """A provisional centre for the power sums: the mean of the batch's first rows (float64); of those of them
    that `weights` keeps (zero when it keeps none: any centre is exact, a near one only keeps the sums small)."""
    m = min(len(x), 256)
    if weights is None:
        return x[:m].mean(0, dtype=F64)
    w = weights[:m]
    return torch.where(w[:, None], x[:m], 0).sum(0, dtype=F64) / w.sum().clamp(min=1)


def _count(weights: torch.Tensor | None, n: int):
    """Rows a batch feeds: `n` (int) without weights, else their kept count as a float64 tensor on their device."""
    return n if weights is None else weights.sum(dtype=F64)


def _positive(n):
    """n, or 1 where it is 0, for divisions by a count that may be a device tensor (0/0 stays out of the sums)."""
    return n.clamp(min=1) if isinstance(n, torch.Tensor) else max(n, 1)


def _float_count(n, device: torch.device):
    """A count for the merge formulas: a float, or a float64 tensor on `device` (the merged fields' device)."""
    return n.to(device) if isinstance(n, torch.Tensor) else float(n)


def _as_number(n):
    """A merged count as the statistic keeps it: an int, or the device tensor it is."""
    return n if isinstance(n, torch.Tensor) else int(n)


@contextmanager
def _one_thread(device: torch.device):
    """On a CPU with at most two intra-op threads, run the block reductions on one. Each block is a dozen small
    elementwise ops, and waking the pool for each costs more than a second thread saves once a forward pass has
    let the pool go idle: in the capture hook, 3.4 against 4.5 to 5.6 ms per site for 4096 GPT-2-small tokens
    (interleaved runs on the 2-core development machine). With more threads the parallel gain grows and this is
    unmeasured, so they are left alone. The d x d products keep every thread."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or threads > 2:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# Where the terms of the two moment formulas go (`Moments._partial`, `Moments.merge`): constant tables, built once
# per device so that no call copies them from the host.
_MERGE_PLACES = ((0, 0, 0), (1, 1, 0), (2, 2, 0), (2, 0, 1), (2, 0, 3), (3, 3, 0), (3, 1, 1), (3, 1, 3), (3, 0, 2),
                 (3, 0, 4))  # (moment p, power i of delta - 1, term k of [1, M2a, M3a, M2b, M3b]) per coefficient


@functools.lru_cache(maxsize=8)
def _moment_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shift, places, tail scale, order): `shift[k, i, j]` weighs delta^(i+1) S_(j+1) in M_(k+2); `places` are the
    flat indices of `_MERGE_PLACES` in a (4, 4, 5) weight tensor; the last two assemble the coefficients."""
    shift = torch.zeros(3, 3, 3, dtype=F64)
    shift[0, 0, 0] = -1.0
    shift[1, 0, 1], shift[1, 1, 0] = -3.0, 2.0
    shift[2, 0, 2], shift[2, 1, 1], shift[2, 2, 0] = -4.0, 6.0, -3.0
    places = torch.tensor([p * 20 + i * 5 + k for p, i, k in _MERGE_PLACES])
    tail = torch.tensor([-3.0, 3.0, 6.0, 6.0, -4.0, 4.0], dtype=F64)
    order = torch.tensor([0, 1, 2, 4, 5, 3, 6, 7, 8, 9])
    return shift.to(device), places.to(device), tail.to(device), order.to(device)


def _merge_weights(na, nb, device: torch.device) -> torch.Tensor:
    """The (4, 4, 5) weights of `Moments.merge`, from the counts (floats, or tensors on `device`): in
    `_MERGE_PLACES` order, with fa = na / n and fb = nb / n, fb, n fa fb, n fa fb (fa - fb), -3 fb, 3 fa,
    n fa fb (fa^2 - fa fb + fb^2), 6 fb^2, 6 fa^2, -4 fb, 4 fa."""
    _shift, places, tail, order = _moment_tables(device)
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


def _block_sums(x: torch.Tensor, centre: torch.Tensor | None = None, norms: torch.Tensor | None = None,
                weights: torch.Tensor | None = None):
    """The O(n d) sums of a batch in one pass over cache-sized row blocks (of the rows `weights` keeps, if given;
    the others count as zero, NaN or not): with `centre`, the power sums
    sum (x - c)^p for p = 1..4 (4, d) (`Moments`: one pass, then the binomial shift to the batch mean, with
    delta = S_1 / n small against the spread, so no cancellation to speak of: M2 = S2 - n delta^2,
    M3 = S3 - 3 delta S2 + 2 n delta^3, M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 n delta^4); with the rows' `norms`,
    the sum of unit vectors and of their squares (2, d) (`UnitSums`). None for what was not asked.

    Precision follows the input, as for the d x d products: float64 input is summed in float64 throughout; model
    activations (float32, bf16, fp16) are summed in float32 within a block (a few hundred rows on a CPU, the batch
    on a GPU: relative error about 1e-6, against a sampling error of 1e-4 or more at any corpus size up to 1e8
    tokens) and the blocks' sums in float64 across blocks, batches and merges. Half the memory traffic and twice
    the SIMD width of float64: 1.9 against 4.1 ms per site for 4096 GPT-2-small tokens on the development CPU."""
    d = x.shape[1]
    dtype = _product_dtype(x)
    powers = torch.zeros(4, d, dtype=F64, device=x.device) if centre is not None else None
    units = torch.zeros(2, d, dtype=F64, device=x.device) if norms is not None else None
    c = None if centre is None else centre.to(dtype)
    part = torch.empty(4, d, dtype=dtype, device=x.device)
    with _one_thread(x.device):
        for rows in _row_slices(x):
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
                u = _units(block, dtype, norms[rows])
                if drop is not None:
                    u.masked_fill_(drop, 0.0)
                torch.sum(u, 0, out=part[0])
                torch.sum(u.square_(), 0, out=part[1])
                units += part[:2]
    return powers, units


def _array(t: torch.Tensor, copy: bool) -> np.ndarray:
    """A tensor's values as a NumPy array: a copy, or (`copy=False`) a view where the tensor is on the CPU."""
    a = t.cpu().numpy()
    return a.copy() if copy and t.device.type == "cpu" else a


@functools.lru_cache(maxsize=4)
def _upper(d: int) -> np.ndarray:
    return np.triu(np.ones((d, d), dtype=bool))


@functools.lru_cache(maxsize=4)
def _upper_flat(d: int, device: torch.device) -> torch.Tensor:
    """Flat (row-major) indices of a d x d matrix's upper triangle, in `pack_symmetric`'s order."""
    i, j = torch.triu_indices(d, d, device=device)
    return i * d + j


def pack_symmetric(a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The upper triangle of a symmetric d x d matrix, row by row, as a vector of d (d + 1) / 2 entries (only
    the upper triangle is read). A tensor is packed where it lives (a GPU's accumulator crosses to the host at
    half the bytes)."""
    if isinstance(a, torch.Tensor):
        return a.reshape(-1)[_upper_flat(len(a), a.device)]
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
    """`value` (a field read through `_field`) as a tensor of its own: cloned only if it is the field itself."""
    return value.clone() if value is field else value


def _tensor(array, copy: bool) -> torch.Tensor:
    """A float64 CPU tensor of `array`: a copy, or (`copy=False`) a view of it where its dtype allows."""
    a = np.array(array, dtype=np.float64, copy=copy or None)
    if not a.flags.writeable:  # torch cannot flag a tensor read-only; the caller promised not to write to it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


class _Stat:
    """Plumbing shared by the statistics: `n` plus named float64 tensors (`FIELDS`), read back as NumPy arrays,
    saved as `{"n": n, field: array}`, loaded onto the CPU, and moved to `self`'s device when merged.

    The symmetric d x d fields (`SYMMETRIC`) are d x d tensors whose upper triangle is authoritative (sums of
    float32 products need not be exactly symmetric; reads mirror the upper triangle), or, in a statistic loaded
    from a packed state without a copy, the packed upper triangle itself, which merges add in place."""

    FIELDS: tuple[str, ...] = ()
    SYMMETRIC: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._n = 0  # an int, or a float64 device tensor once weighted batches were added (read `n`)
        self.t: dict[str, torch.Tensor] = {}

    @property
    def n(self) -> int:
        """The number of rows added (reading a device count waits for it)."""
        return int(self._n)

    @n.setter
    def n(self, value) -> None:
        self._n = value

    def __getattr__(self, name: str):
        if name in type(self).FIELDS:
            return self._field(name).cpu().numpy() if name in self.__dict__.get("t", {}) else None
        raise AttributeError(name)

    def _field(self, name: str) -> torch.Tensor:
        """A field whole: symmetric ones mirrored from their upper triangle (or unpacked)."""
        t = self.t[name]
        if name not in self.SYMMETRIC:
            return t
        if t.ndim == 1:
            return torch.from_numpy(unpack_symmetric(t.cpu().numpy()))
        return t.triu() + t.triu(1).T

    def _fields_of(self, other: _Stat) -> dict[str, torch.Tensor]:
        device = next(iter(self.t.values())).device
        return {k: v.to(device) for k, v in other.t.items()}

    def _add(self, name: str, other: torch.Tensor) -> torch.Tensor:
        """Add another statistic's field into ours, in place; a packed symmetric one into our upper triangle."""
        mine = self.t[name]
        if other.ndim == mine.ndim:
            return mine.add_(other)
        return mine.view(-1).index_add_(0, _upper_flat(len(mine), mine.device), other).view(mine.shape)

    def _take(self, other: _Stat) -> bool:
        """Merge preamble: True when nothing is left to do (other empty, or self empty and now a copy of it). Empty
        means never fed (no fields), known on the host: a weighted batch that kept no row is merged as the zero
        count it is, without reading that count back."""
        if not other.t:
            return True
        if not self.t:  # a copy; d x d fields keep their (authoritative) upper triangle unmirrored
            self._n, self.t = other._n, {k: v.clone() if v.ndim == 2 else _owned(other._field(k), v)
                                         for k, v in other.t.items()}
            return True
        return False

    def _absorb(self, other: _Stat) -> _Stat:
        """Merge a batch's own statistic, built by `add` and used nowhere else: taken as it is (no copy) while we
        are empty, as after every seal of an actor's statistics."""
        if not self.t:
            self._n, self.t = other._n, other.t
            return self
        return self.merge(other)

    def state(self, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
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
                fields[k] = _array(t, copy) if t.ndim == 1 else _array(pack_symmetric(t), copy=False)
            else:
                fields[k] = _array(self._field(k), copy and k not in self.SYMMETRIC)  # mirrored: already new
        return {"n": np.int64(self.n), **fields}

    @classmethod
    def load(cls, state: dict, copy: bool = True):
        """From `state()`'s arrays, packed or not; with `copy=False` the tensors share their memory (read-only
        arrays, such as a file's bytes, included) and packed fields stay packed: for a statistic that is only
        merged into another, never added to."""
        s = cls()
        s.n = int(state["n"])
        if s.n:
            # an owner (copy) holds symmetric fields as d x d tensors: packed ones are unpacked into fresh arrays,
            # so they need no copy before that
            packed = {k for k in cls.SYMMETRIC if np.ndim(state[k]) == 1} if copy else set()
            s.t = {k: _tensor(state[k], copy and k not in packed) for k in cls.FIELDS}
            s.t.update({k: s._field(k) for k in packed})
        return s


class Moments(_Stat):
    """Per-coordinate count, mean, M2, M3, M4 (sums of 2nd-4th powers of deviations from the mean)."""

    FIELDS = ("mean", "m2", "m3", "m4")

    def add(self, x, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `weights`: a bool mask of the rows to feed (None: all)."""
        x = _batch(x)
        if x.shape[0] == 0:
            return
        # One pass of power sums S_p of deviations from a provisional centre c (the first rows' mean), then the
        # central sums by the binomial shift to the batch mean (delta = S_1 / n small against the spread, so no
        # cancellation to speak of): M2 = S2 - n delta^2, M3 = S3 - 3 delta S2 + 2 n delta^3,
        # M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 n delta^4.
        centre = _centre(x, weights)
        powers = _block_sums(x, centre=centre, weights=weights)[0]
        self._absorb(Moments._partial(_count(weights, len(x)), centre, powers))

    @classmethod
    def _partial(cls, n, centre: torch.Tensor, s: torch.Tensor) -> Moments:
        """The statistic of one batch of n rows (an int, or a device count) from its power sums
        s[p - 1] = sum (x - centre)^p, p = 1..4: with delta = S_1 / n (so that n delta^k = delta^(k-1) S_1),
        M2 = S2 - delta S1, M3 = S3 - 3 delta S2 + 2 delta^2 S1, M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 delta^3 S1,
        as one contraction of the products delta^i S_j (a handful of kernels, whatever d)."""
        delta = s[0] / _positive(n)
        powers = delta.expand(3, -1).cumprod(0)  # delta, delta^2, delta^3
        shift = torch.einsum("kij,id,jd->kd", _moment_tables(s.device)[0], powers, s[:3])
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
        as one contraction of delta^i with [1, M2a, M3a, M2b, M3b] under count-dependent weights (`_merge_weights`):
        a few dozen kernels with counts on a device, instead of one per term."""
        if self._take(other):
            return self
        a, b = self._stacked(self.t), self._stacked(self._fields_of(other))
        device = a.device
        na, nb = _float_count(self._n, device), _float_count(other._n, device)
        delta = b[0] - a[0]
        powers = delta.expand(4, -1).cumprod(0)  # delta .. delta^4
        terms = torch.cat([torch.ones_like(delta)[None], a[1:3], b[1:3]])
        shift = torch.einsum("pik,kd,id->pd", _merge_weights(na, nb, device), terms, powers)
        self._set(torch.cat([a[:1], a[1:] + b[1:]]) + shift)
        self._n = _as_number(na + nb)
        return self

    @property
    def variance(self) -> np.ndarray:
        """Population variance per coordinate (M2 / n; at least 0, which rounding can take M2 a hair below)."""
        return np.maximum(self.m2 / self.n, 0.0)

    @property
    def skewness(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(self.n) * self.m3 / self.m2**1.5

    @property
    def excess_kurtosis(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.n * self.m4 / self.m2**2 - 3.0


class Covariance(_Stat):
    """Count, mean and co-moment matrix C; the covariance is C / (n - 1)."""

    FIELDS = ("mean", "comoment")
    SYMMETRIC = ("comoment",)

    def add(self, x, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `weights`: a bool mask of the rows to feed (None: all)."""
        x = _batch(x)
        if x.shape[0] == 0:
            return
        # Centre on the batch mean before the product, so there is no E[xx] - E[x]E[x] cancellation; the product
        # runs in float64 for float64 input, else in float32 (then accumulated in float64).
        n = _count(weights, x.shape[0])
        if weights is None:
            mean = x.mean(0, dtype=F64)
        else:
            mean = torch.where(weights[:, None], x, 0).sum(0, dtype=F64) / _positive(n)
        dtype = _product_dtype(x)
        dev = x.to(dtype) - mean.to(dtype)
        if weights is not None:
            dev.masked_fill_(~weights[:, None], 0.0)
        other = Covariance()
        other._n, other.t = n, {"mean": mean, "comoment": (dev.T @ dev).to(F64)}
        self._absorb(other)

    def merge(self, other: Covariance) -> Covariance:
        if self._take(other):
            return self
        b = self._fields_of(other)
        device = self.t["mean"].device
        na, nb = _float_count(self._n, device), _float_count(other._n, device)
        n_sum = na + nb
        n = _positive(n_sum)
        d = b["mean"] - self.t["mean"]
        comoment = self._add("comoment", b["comoment"])
        if isinstance(n, torch.Tensor):  # a device count: the weight scales a vector (addr_ takes a number)
            comoment.addr_(d * (na * nb / n), d)
        else:
            comoment.addr_(d, d, alpha=na * nb / n)  # in place: no d x d temporaries
        self.t["mean"] = self.t["mean"] + d * (nb / n)
        self._n = _as_number(n_sum)
        return self

    @property
    def covariance(self) -> np.ndarray:
        return self.comoment / max(self.n - 1, 1)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (...): the Euclidean norm of every row, in float64, as exact as a float64 computation: finite
    for every row of finite values, however large or small (NaN or Inf for a row holding one). Computed once per
    site and batch (in the capture hook, where it also tells the finite rows) and shared by the statistics' parts.

    A float32 batch on a CPU is reduced in float32 (relative error about 1e-7), and only the rows where that
    overflows, underflows or meets a NaN or Inf are recomputed in float64: casting the whole batch to float64
    first, as everywhere else, costs 1.7 ms against 0.15 ms per site for 4096 GPT-2-small tokens. On a GPU the
    cast is part of the reduction's kernel and costs nothing to speak of, and the row indices would cost a
    host synchronisation."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return torch.linalg.vector_norm(x, dim=-1, dtype=F64)
    norms = torch.linalg.vector_norm(x, dim=-1)
    odd = torch.nonzero(~((norms > NORM_TINY) & (norms < math.inf)).reshape(-1), as_tuple=True)[0]
    norms = norms.to(F64)
    if len(odd):
        norms.view(-1)[odd] = torch.linalg.vector_norm(x.reshape(-1, x.shape[-1])[odd], dim=-1, dtype=F64)
    return norms


def _units(x: torch.Tensor, dtype: torch.dtype, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero), in `dtype`; `norms` (float64) as from `row_norms`."""
    norms = (row_norms(x) if norms is None else norms)[:, None]
    scale = 1.0 / torch.where(norms > 0, norms, 1.0)
    return x.to(dtype) * scale.to(dtype)


class UnitSums(_Stat):
    """n, s = sum of unit vectors u_i = x_i / |x_i| and sq = per-coordinate sum of u_ik^2 (zero vectors count as
    zero): the exact all-pairs mean cosine (|s|^2 - sum(sq)) / (n (n - 1)) and each coordinate's share of it."""

    FIELDS = ("sum", "sq")

    def add(self, x, norms: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `norms`: its rows' norms if already known (`row_norms`); `weights`: a bool mask of
        the rows to feed (None: all)."""
        x = _batch(x)
        if x.shape[0] == 0:
            return
        norms = row_norms(x) if norms is None else norms
        self._absorb(UnitSums._partial(_count(weights, len(x)), _block_sums(x, norms=norms, weights=weights)[1]))

    @classmethod
    def _partial(cls, n, sums: torch.Tensor) -> UnitSums:
        other = cls()
        other._n, other.t = n, {"sum": sums[0], "sq": sums[1]}
        return other

    def merge(self, other: UnitSums) -> UnitSums:
        if not self._take(other):
            b = self._fields_of(other)
            device = self.t["sum"].device
            self._n = _as_number(_float_count(self._n, device) + _float_count(other._n, device))
            for k in self.FIELDS:
                self.t[k].add_(b[k])
        return self


class UnitSecondMoment(_Stat):
    """n and Q = sum u_i u_i^T of unit vectors (zero vectors count as zero): the exact all-pairs mean squared
    cosine (||Q||_F^2 - n) / (n (n - 1))."""

    FIELDS = ("second",)
    SYMMETRIC = ("second",)

    def add(self, x, norms: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `norms`: its rows' norms if already known (`row_norms`); `weights`: a bool mask of
        the rows to feed (None: all)."""
        x = _batch(x)
        if x.shape[0] == 0:
            return
        u = _units(x, _product_dtype(x), norms)
        if weights is not None:
            u.masked_fill_(~weights[:, None], 0.0)
        other = UnitSecondMoment()
        other._n, other.t = _count(weights, x.shape[0]), {"second": (u.T @ u).to(F64)}
        self._absorb(other)

    def merge(self, other: UnitSecondMoment) -> UnitSecondMoment:
        if not self._take(other):
            device = self.t["second"].device
            self._n = _as_number(_float_count(self._n, device) + _float_count(other._n, device))
            self._add("second", self._fields_of(other)["second"])
        return self


class NormHistogram:
    """Counts of state norms in `bins` log-spaced bins on [lo, hi] (outside values clipped into the end bins),
    with the norms' moments (read as a `Moments` of dimension 1).

    The moments are kept as the power sums sum (r - c)^p, p = 1..4, of the norms r about a centre c fixed by the
    first batch (the mean of its first rows), which a batch adds to in a few operations where a `Moments` merge
    takes dozens; that matters in the capture hooks, which run it twice per site and forward pass. The shift to
    the mean happens when read (the binomial formulas of `Moments`), in float64, like the norms themselves: the
    rounding grows as (distance of the mean from c / spread)^4 x 1e-16, nothing to speak of unless the norms
    drift by hundreds of standard deviations from the first batch's. Merges go through `Moments` (Pébay)."""

    LO, HI, BINS = 1e-3, 1e5, 400

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None
        self._centre: torch.Tensor | None = None  # (1,) float64
        self._sums: torch.Tensor | None = None  # (4, 1) float64: sum (r - c)^p, p = 1..4
        self._n = 0  # int, or a device count (weighted batches)

    @property
    def counts(self) -> np.ndarray:
        return np.zeros(self.BINS, np.int64) if self._counts is None else self._counts.cpu().numpy()

    @property
    def moments(self) -> Moments:
        """The norms' count, mean and central moment sums, as a `Moments` of dimension 1."""
        if self._sums is None:
            return Moments()
        return Moments._partial(self._n, self._centre, self._sums)

    def _set_moments(self, m: Moments) -> None:
        """Take the power sums from a `Moments` of dimension 1: about its mean, S_1 = 0 and S_p = M_p."""
        if not m.t:
            self._centre = self._sums = None
            self._n = 0
            return
        self._centre = m.t["mean"].clone()
        self._sums = torch.stack([torch.zeros_like(self._centre), m.t["m2"], m.t["m3"], m.t["m4"]])
        self._n = m._n

    @classmethod
    def edges(cls) -> np.ndarray:
        return np.geomspace(cls.LO, cls.HI, cls.BINS + 1)

    def add(self, x, norms: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `norms`: its rows' norms if already known (`row_norms`); `weights`: a bool mask of
        the rows to feed (None: all)."""
        x = _batch(x)
        if x.shape[0] == 0:
            return
        norms = row_norms(x) if norms is None else norms
        scaled = (torch.log(norms.clamp(self.LO, self.HI)) - np.log(self.LO)) * (self.BINS / np.log(self.HI / self.LO))
        idx = scaled.long().clamp_(0, self.BINS - 1)
        if weights is not None:  # rows left out go to one more bin, dropped
            idx.masked_fill_(~weights, self.BINS)
        # Not `bincount`: on a GPU it reads the input's min and max back to the host, two synchronisations per call.
        counts = torch.zeros(self.BINS + 1, dtype=torch.int64, device=idx.device)
        self._add_counts(counts.index_add_(0, idx, torch.ones_like(idx))[: self.BINS])
        r = norms.to(F64)[:, None]
        if self._sums is None:
            self._centre = _centre(r, weights)
            self._sums = torch.zeros(4, 1, dtype=F64, device=r.device)
        dev = r.T - self._centre.to(r.device)  # (1, n)
        if weights is not None:
            dev.masked_fill_(~weights[None, :], 0.0)
        self._sums += dev.expand(4, -1).cumprod(0).sum(1, keepdim=True)  # sum of dev, dev^2, dev^3, dev^4
        self._n = self._n + _count(weights, len(r))

    def _add_counts(self, counts: torch.Tensor) -> None:
        self._counts = counts.clone() if self._counts is None else self._counts + counts.to(self._counts.device)

    def merge(self, other: NormHistogram) -> NormHistogram:
        if other._counts is not None:
            self._add_counts(other._counts)
        if other._sums is not None:
            self._set_moments(self.moments.merge(other.moments))
        return self

    def state(self, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy(), **{f"m_{k}": v for k, v in self.moments.state(copy).items()}}

    @classmethod
    def load(cls, state: dict, copy: bool = True) -> NormHistogram:
        h = cls()
        h._counts = torch.from_numpy(np.array(state["counts"], dtype=np.int64))
        h._set_moments(Moments.load({k[2:]: v for k, v in state.items() if k.startswith("m_")}))
        return h


class SiteStatistics:
    """All streaming statistics of one (layer, site): moments, norms and unit sums over every token; the two d x d
    statistics (covariance, unit second moment) over the tokens chosen for second-order statistics (all, or a
    fraction where cost demands it). Tokens excluded from the analysis (`capture.exclude`: position 0, special
    tokens) feed only their own norms, `excluded_norms` (their count is its moments' n)."""

    PARTS = {"moments": Moments, "norms": NormHistogram, "units": UnitSums, "covariance": Covariance,
             "unit_second": UnitSecondMoment, "excluded_norms": NormHistogram}

    def __init__(self) -> None:
        for name, part in self.PARTS.items():
            setattr(self, name, part())

    def add(self, x, second_order_rows=None, norms: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d); `second_order_rows` (indices or None for all) feed the d x d statistics; `norms`: the
        rows' norms if already known (`row_norms`); `weights`: a bool mask of the rows to feed at all (None: all),
        counted on their device."""
        x = _batch(x)
        if len(x) == 0:
            return
        norms, centre = row_norms(x) if norms is None else norms, _centre(x, weights)
        powers, units = _block_sums(x, centre, norms, weights)  # Moments and UnitSums in one pass over the batch
        n = _count(weights, len(x))
        self.moments._absorb(Moments._partial(n, centre, powers))
        self.units._absorb(UnitSums._partial(n, units))
        self.norms.add(x, norms, weights)
        if second_order_rows is not None:
            x, norms = x[second_order_rows], norms[second_order_rows]
            weights = None if weights is None else weights[second_order_rows]
        self.covariance.add(x, weights)
        self.unit_second.add(x, norms, weights)

    def add_excluded(self, x, norms: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add a batch (n, d) of excluded tokens: their norms only."""
        self.excluded_norms.add(_batch(x), norms, weights)

    def merge(self, other: SiteStatistics) -> SiteStatistics:
        for name in self.PARTS:
            getattr(self, name).merge(getattr(other, name))
        return self

    def state(self, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        return {f"{name}.{k}": v for name in self.PARTS for k, v in getattr(self, name).state(copy, packed).items()}

    @classmethod
    def load(cls, state: dict, copy: bool = True) -> SiteStatistics:
        s = cls()
        for name, part in cls.PARTS.items():
            prefix = f"{name}."
            setattr(s, name, part.load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, copy))
        return s


def stack_states(per_site: list[SiteStatistics], copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
    """The states of several sites in one flat dict (`s{index}.{key}`), ready for one `.npz`."""
    return {f"s{i}.{k}": v for i, s in enumerate(per_site) for k, v in s.state(copy, packed).items()}


def unstack_states(arrays: dict[str, np.ndarray], n_sites: int, copy: bool = True) -> list[SiteStatistics]:
    return [SiteStatistics.load({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"s{i}.")}, copy)
            for i in range(n_sites)]
