"""Massive activations: the largest |x| entries of a site over every token, and the distribution of |x| itself.

Sun et al. 2024 ("Massive activations in large language models", arXiv:2402.17762) find a few coordinates whose
values are about 10^3 to 10^4 times the median |activation|, on a few tokens; their criterion for one is
|x| > 100 and about 1,000 times the median (`tasks.analysis.massive` applies it). Two mergeable statistics give
what it needs over every token, not only the sample:

* `TopAbs`: the m entries of largest |x| (the order: |x| descending, then document, window, position,
  coordinate, a total order on entries, so the result depends neither on batching nor on merge grouping), each
  with its coordinate, token identity and signed value. Top-m selection is decomposable: the top m of a union
  is the top m of the parts' top m, the same argument as bottom-k sampling (`tasks.stats.bottom_k`).
* `AbsHistogram`: exact counts of |x| over every coordinate of every token on fixed bins, giving the median to
  bin precision.

On a GPU neither waits for the device while fed. A batch's top m is found there in two small steps: the m rows of
largest max |x| (an entry of the batch's top m lies in one of them: any row outside them is beaten by m row
maxima), then the m largest entries of those rows; ties at the cut are broken by the rows' places in the total
order (`RowIdentity.rank`, computed on the host before the forward pass). The selected row indices and values
stay on the device until `state`, where they cross in one copy and become token identities through the host's
keys of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from tasks.stats.bottom_k import CONTEXT
from tasks.stats.base import F64, as_batch, row_count, to_array, to_tensor

IDENTITY = ("doc", "window", "pos", "token_id")  # a token's identity, as the sample keeps it
ENTRY = ("value", "coord", *IDENTITY, "excluded")  # a `TopAbs` entry: signed value, coordinate, token
MASSIVE_TOP = 20  # entries kept per site (`stats.massive_top`)


@dataclass(frozen=True)
class RowIdentity:
    """The tokens of a batch's rows: `keys` (host arrays, one entry per row: `IDENTITY` and `excluded`, whether
    `capture.exclude` keeps the token out of the other statistics), `rank` (each row's place in (doc, window,
    pos) order, an int64 tensor on the batch's device) and `context` (rows -> their context ids, as
    `tasks.capture.sampling.context_ids` gives them, evaluated only for the few rows selected; None: unknown)."""

    keys: Mapping[str, np.ndarray]
    rank: torch.Tensor
    context: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def of(cls, keys: Mapping[str, np.ndarray], device: torch.device | str = "cpu",
           context: Callable[[np.ndarray], np.ndarray] | None = None, excluded: np.ndarray | None = None) -> RowIdentity:
        """The identity of the tokens `keys` names (`excluded`: a bool per row, None: none), ranked on the host
        and the rank sent to `device` (without waiting)."""
        keys = {k: np.asarray(keys[k], np.int64) for k in IDENTITY}
        order = np.lexsort((keys["pos"], keys["window"], keys["doc"]))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        keys["excluded"] = np.zeros(len(order), np.int64) if excluded is None else np.asarray(excluded, np.int64)
        return cls(keys, torch.as_tensor(rank, device=device), context)

    @classmethod
    def at(cls, flat: np.ndarray, size: int, keys: Mapping[str, np.ndarray], excluded: np.ndarray | None,
           device: torch.device | str = "cpu", context: Callable[[np.ndarray], np.ndarray] | None = None) -> RowIdentity:
        """The identity of `size` rows of which those at `flat` are the tokens of `keys` (in that order; `context`
        takes indices into them) and the others padding (identity -1, ranked after every token)."""
        last = np.iinfo(np.int64).max  # padding's doc while ranking: after every token
        padded = {k: np.full(size, last if k == "doc" else -1, np.int64) for k in IDENTITY}
        for k in IDENTITY:
            padded[k][flat] = keys[k]
        out = np.zeros(size, bool)
        if excluded is not None:
            out[flat] = excluded
        where = np.full(size, -1, np.int64)
        where[flat] = np.arange(len(flat))
        ident = cls.of(padded, device, None if context is None else (lambda rows, f=context: f(where[rows])), out)
        ident.keys["doc"][ident.keys["doc"] == last] = -1
        return ident

    def contexts(self, rows: np.ndarray) -> np.ndarray:
        """The context ids of rows `rows` ((len, CONTEXT + 1), -1 where unknown)."""
        if self.context is None or not len(rows):
            return np.full((len(rows), CONTEXT + 1), -1, np.int32)
        return np.asarray(self.context(rows), np.int32).reshape(len(rows), CONTEXT + 1)


def masked_absolute(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """|x| in float32 (float64 stays float64), -1 on the rows that `weights` leaves out: what `TopAbs` and
    `AbsHistogram` read when given it (`absolute=`)."""
    a = x.abs() if x.dtype in (torch.float32, F64) else x.float().abs_()
    return a if weights is None else torch.where(weights[:, None], a, -1.0)


def row_max_abs(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The largest |x| of every row, -1 on the rows that `weights` leaves out: `masked_absolute(x, weights)
    .amax(1)`, read from the rows' max and min (max |x| = max(max x, -min x), exact), without writing |x| out."""
    big = torch.maximum(x.amax(1), x.amin(1).neg_())
    big = big if x.dtype in (torch.float32, F64) else big.float()
    return big if weights is None else big.masked_fill_(~weights, -1.0)


def abs_bins(x: torch.Tensor, shift: int, weights: torch.Tensor | None = None, dropped: int = 0) -> torch.Tensor:
    """Every entry's `AbsHistogram` bin (its |x| as float32, bit pattern shifted right by `shift`), flat, int32;
    `dropped` on the rows that `weights` leaves out. Read from x's own bits with the sign bit masked off (|x|'s
    pattern), without writing |x| out; on a CPU by NumPy, whose integer shift and mask run at memory speed."""
    f = x if x.dtype == torch.float32 else x.float()  # float32 rounding is symmetric: |x| as float32 = |float32(x)|
    keep = (1 << (31 - shift)) - 1  # the pattern's bits below the sign bit, shifted
    if f.device.type == "cpu":
        bits = np.ascontiguousarray(f.detach().numpy()).view(np.int32) >> shift
        idx = torch.from_numpy(np.bitwise_and(bits, keep, out=bits))
    else:
        idx = (f.view(torch.int32) >> shift).bitwise_and_(keep)
    if weights is not None:
        idx.masked_fill_(~weights[:, None], dropped)
    return idx.view(-1)


def first_k(values: torch.Tensor, rank: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k first entries in the order (value descending, rank ascending), ranks distinct: the k-th
    largest value is the cut; every entry above it is taken (fewer than k) and the ties at the cut by rank. A few
    device ops over `values`, no wait for the device."""
    cut = values.topk(k).values[-1]
    key = rank.masked_fill(values != cut, torch.iinfo(torch.int64).max).masked_fill_(values > cut, -1)
    return key.topk(k, largest=False, sorted=False).indices


class TopAbs:
    """The `m` entries of largest |x| of every row fed, with their coordinate, token and signed value (see the
    module docstring; ties broken by token identity, then coordinate). A `Statistic`: exact in any grouping.

    `add(x, identity=, weights=, absolute=)`: `identity` names the rows' tokens (None: unknown, -1); `absolute`
    is |x| if already computed. State: `n` (rows fed), `m`, and the entries (`ENTRY` plus `context`, the token's
    context ids) sorted in the total order."""

    def __init__(self, m: int = MASSIVE_TOP) -> None:
        self.m = int(m)
        self._n: int | torch.Tensor = 0
        self._entries: dict[str, np.ndarray] | None = None  # resolved and sorted: at most m
        # per batch, on its device until `state`: the rows picked, the entries picked (flat in those rows), their
        # signed values and |x| (-1: a row left out), the rows' identity, the width
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, RowIdentity | None, int]] = []
        self._arange: torch.Tensor | None = None

    @property
    def n(self) -> int:
        """The number of rows fed (reading a device count waits for it)."""
        return int(self._n)

    @property
    def is_empty(self) -> bool:
        """True while nothing has been added or merged in."""
        return self._entries is None and not self._pending

    def add(self, x: torch.Tensor | np.ndarray, /, *, identity: RowIdentity | None = None,
            weights: torch.Tensor | None = None, absolute: torch.Tensor | None = None) -> None:
        """Offer a batch (n, d): its top m entries are picked on its device and named when the state is taken.
        `absolute`: `masked_absolute(x, weights)` if already computed."""
        x = as_batch(x)
        n, d = x.shape
        if n == 0 or d == 0:
            return
        rank = identity.rank if identity is not None else torch.arange(n, device=x.device)
        big = row_max_abs(x, weights) if absolute is None else absolute.amax(1)
        rows = first_k(big, rank, min(self.m, n))  # left-out rows: max -1, last
        sub = masked_absolute(x.index_select(0, rows), None if weights is None else weights.index_select(0, rows)) \
            if absolute is None else absolute.index_select(0, rows)
        k = min(self.m, sub.numel())
        flat = first_k(sub.view(-1), (rank.index_select(0, rows)[:, None] * d + self._coords(d, x.device)).view(-1), k)
        value = x.index_select(0, rows).view(-1).index_select(0, flat)
        self._pending.append((rows, flat, value, sub.view(-1).index_select(0, flat), identity, d))
        self._n = _add_counts(self._n, row_count(weights, n))

    def settle(self) -> None:
        """Name the pending picks now (moving them to the host waits for a GPU). The capture actor calls it at the
        end of each shard, where it waits for the device anyway (the sample's copy), so that no batch's keys
        outlive their shard."""
        self._resolve()

    def _coords(self, d: int, device: torch.device) -> torch.Tensor:
        if getattr(self, "_arange", None) is None or self._arange.shape[0] != d or self._arange.device != device:
            self._arange = torch.arange(d, device=device)
        return self._arange

    def _resolve(self) -> dict[str, np.ndarray]:
        """The entries held: the pending batches' picks moved to the host in one copy, named, and merged in."""
        if self._pending:
            picks = torch.cat([torch.cat([t.to(F64) for t in p[:4]]) for p in self._pending]).cpu().numpy()
            parts, start = [] if self._entries is None else [self._entries], 0
            for rows, flat, _, _, identity, d in self._pending:
                k, j = len(rows), len(flat)
                r, f, value, size = np.split(picks[start:start + k + 3 * j].copy(), [k, k + j, k + 2 * j])
                start += k + 3 * j
                ok = size >= 0  # entries of rows left out hold -1
                f, value = f[ok].astype(np.int64), value[ok]
                row, coord = r.astype(np.int64)[f // d], f % d
                if identity is None:
                    keys = {name: np.full(len(row), 0 if name == "excluded" else -1, np.int64)
                            for name in (*IDENTITY, "excluded")}
                    context = np.full((len(row), CONTEXT + 1), -1, np.int32)
                else:
                    keys = {name: identity.keys[name][row] for name in (*IDENTITY, "excluded")}
                    context = identity.contexts(row)
                parts.append({"value": value, "coord": coord, **keys, "context": context})
            self._pending = []
            self._entries = self._best(parts)
        return self._entries if self._entries is not None else self._best([])

    def _best(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The first m entries of `parts` together, in the total order."""
        if not parts:
            return {**{k: np.zeros(0, np.float64 if k == "value" else np.int64) for k in ENTRY},
                    "context": np.zeros((0, CONTEXT + 1), np.int32)}
        e = {k: np.concatenate([p[k] for p in parts]) for k in (*ENTRY, "context")}
        order = np.lexsort((e["coord"], e["pos"], e["window"], e["doc"], -np.abs(e["value"])))[: self.m]
        return {k: v[order] for k, v in e.items()}

    @property
    def entries(self) -> dict[str, np.ndarray]:
        """The entries held (`ENTRY` and `context`), sorted: |x| descending, then token identity, coordinate."""
        return {k: v.copy() for k, v in self._resolve().items()}

    def merge(self, other: TopAbs) -> TopAbs:
        if other.is_empty:
            return self
        if self.is_empty:
            self.m = other.m
        parts = [other._resolve()] if self.is_empty else [self._resolve(), other._resolve()]
        self._entries = self._best(parts)
        self._n = _add_counts(self._n, other._n)
        return self

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        """`n`, `m` and the entries (always fresh arrays; `copy` and `packed` change nothing)."""
        return {"n": np.int64(self.n), "m": np.int64(self.m), **{k: v.copy() for k, v in self._resolve().items()}}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> TopAbs:
        s = cls(int(state.get("m", MASSIVE_TOP)))
        s._n = int(state["n"])
        if "value" in state and (s._n or len(state["value"])):
            s._entries = {k: np.array(state[k], dtype=np.float64 if k == "value" else np.int64) for k in ENTRY}
            s._entries["context"] = np.array(state["context"], np.int32).reshape(-1, CONTEXT + 1)
        return s


def _add_counts(a: int | torch.Tensor, b: int | torch.Tensor) -> int | torch.Tensor:
    """Two counts added, each an int or a device tensor (moved to the first one's device)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a + b.to(a.device)
    return a + b


class AbsHistogram:
    """Exact counts of |x| over every coordinate of every row fed, on fixed bins: a float32 value's bin is its
    exponent and first 4 mantissa bits (its bit pattern shifted right by 19), so 16 bins per octave, each at most
    1/16 of its lower edge wide (6.25 %), from 0 (the subnormals' 16 bins) to the largest float32; every finite
    float32 has one bin and no value is clipped. One shift per entry instead of a logarithm; counts merge exactly.
    (float64 input is binned as float32, which can move a value sitting within 1e-7 of an edge to the next bin.)

    State: `n` (rows fed), `width` (their width; 0 while empty) and `counts` (int64, `BINS`)."""

    SHIFT = 19
    BINS = 255 << 4  # exponents 0..254: every finite float32; 255 (Inf, NaN) never fed
    MASK = (1 << 13) - 1  # bins counted: the shifted pattern's 13 low bits (BINS and above are dropped)

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None  # MASK + 1 counters on the batches' device (BINS once loaded)
        self._width = 0  # the rows' width: their count is the entries' / width, with no op per batch

    @property
    def n(self) -> int:
        """The number of rows counted (reading device counts waits for them)."""
        return int(self._counts[: self.BINS].sum()) // self._width if self._width else 0

    @property
    def is_empty(self) -> bool:
        return self._counts is None

    @classmethod
    def edges(cls) -> np.ndarray:
        """The BINS + 1 bin edges (float64; the last is the float32 overflow, inf)."""
        return (np.arange(cls.BINS + 1, dtype=np.uint32) << cls.SHIFT).view(np.float32).astype(np.float64)

    @property
    def counts(self) -> np.ndarray:
        return np.zeros(self.BINS, np.int64) if self._counts is None else self._counts[: self.BINS].cpu().numpy()

    def add(self, x: torch.Tensor | np.ndarray, /, *, weights: torch.Tensor | None = None,
            absolute: torch.Tensor | None = None) -> None:
        """Count a batch (n, d); `absolute`: `masked_absolute(x, weights)` if already computed."""
        x = as_batch(x)
        if x.shape[0] == 0:
            return
        if absolute is None:  # a left-out row's entries land at 6128, dropped, as they do from `masked_absolute`
            idx = abs_bins(x, self.SHIFT, weights, dropped=6128)
        else:  # the bin: the float32 bit pattern shifted; a left-out entry (-1.0, sign bit set) lands at 6128, dropped
            idx = ((absolute if absolute.dtype == torch.float32 else absolute.float()).view(torch.int32)
                   >> self.SHIFT) & self.MASK
        if self._counts is None:
            self._counts = torch.zeros(self.MASK + 1, dtype=torch.int64, device=x.device)
        self._same_width(x.shape[1])
        _count_into(self._counts, idx.view(-1))

    def _same_width(self, width: int) -> None:
        if self._width and width != self._width:
            raise ValueError(f"rows of width {width} added to a histogram of rows of width {self._width}")
        self._width = width

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        if other._counts is None:
            return self
        if self._counts is None:  # an accumulator of our own, whole (a state's counts stop at BINS)
            self._counts = other._counts.new_zeros(self.MASK + 1)
        self._same_width(other._width)
        self._counts[: self.BINS] += other._counts[: self.BINS].to(self._counts.device)
        return self

    def quantile(self, q: float) -> float:
        """The q-quantile of |x| to bin precision: the value of rank q (N - 1) (NumPy's default rule), with a
        bin's entries taken as evenly spread over it; NaN when empty."""
        counts = self.counts
        total = int(counts.sum())
        if total == 0:
            return float("nan")
        target = q * (total - 1)
        cum = np.cumsum(counts)
        b = int(np.searchsorted(cum, target, side="right"))
        edges = self.edges()
        before = cum[b] - counts[b]
        return float(edges[b] + (edges[b + 1] - edges[b]) * min((target - before + 0.5) / counts[b], 1.0))

    def state(self, *, copy: bool = True, packed: bool = False) -> dict[str, np.ndarray]:
        counts = self.counts if self._counts is None else to_array(self._counts[: self.BINS], copy)
        return {"n": np.int64(self.n), "width": np.int64(self._width), "counts": counts}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> AbsHistogram:
        h = cls()
        h._width = int(state.get("width", 0))
        if h._width:
            counts = to_tensor(state["counts"], copy, dtype=np.int64)
            h._counts = counts if not copy else torch.cat([counts, counts.new_zeros(cls.MASK + 1 - cls.BINS)])
        return h


def _count_into(counts: torch.Tensor, idx: torch.Tensor) -> None:
    """Add the counts of the integer bins `idx` (int32, 0 <= idx < len(counts)) to `counts` (int64) on their
    device. On a GPU without waiting for it, by `histc` (per-block counts in shared memory; `bincount` would read
    the input's maximum back to the host, and `index_add_` makes every entry an atomic add on one of a few hundred
    global addresses); on a CPU by `bincount` (twice as fast as `index_add_` there)."""
    if idx.is_cuda:
        counts += histc_counts(idx, len(counts))
    else:
        counts += torch.bincount(idx, minlength=len(counts))


def histc_counts(idx: torch.Tensor, size: int) -> torch.Tensor:
    """`histc` over chunks of 2^24 entries, below which its float32 counts are exact integers."""
    out = torch.zeros(size, dtype=torch.int64, device=idx.device)
    for chunk in idx.split(1 << 24):
        out += torch.histc(chunk.float(), bins=size, min=0, max=size).long()
    return out
