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

from tasks.capture.sampling import CONTEXT
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
           context: Callable[[np.ndarray], np.ndarray] | None = None, index: np.ndarray | None = None,
           excluded: bool = False) -> RowIdentity:
        """The identity of the tokens `keys` names (only those at `index`, if given: `context` is then of the
        whole `keys`), ranked among themselves on the host and the rank sent to `device` (no wait)."""
        if index is not None:
            keys = {k: np.asarray(keys[k])[index] for k in IDENTITY}
            context = None if context is None else (lambda rows, f=context: f(index[rows]))
        keys = {k: np.asarray(keys[k], np.int64) for k in IDENTITY}
        order = np.lexsort((keys["pos"], keys["window"], keys["doc"]))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        keys["excluded"] = np.full(len(order), int(excluded), np.int64)
        return cls(keys, torch.as_tensor(rank, device=device), context)

    def contexts(self, rows: np.ndarray) -> np.ndarray:
        """The context ids of rows `rows` ((len, CONTEXT + 1), -1 where unknown)."""
        if self.context is None or not len(rows):
            return np.full((len(rows), CONTEXT + 1), -1, np.int32)
        return np.asarray(self.context(rows), np.int32).reshape(len(rows), CONTEXT + 1)


def absolute_values(x: torch.Tensor) -> torch.Tensor:
    """|x| in float32 (float64 stays float64): shared by `TopAbs` and `AbsHistogram` in one pass."""
    return x.abs() if x.dtype in (torch.float32, F64) else x.float().abs_()


def first_k(values: torch.Tensor, rank: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k first entries in the order (value descending, rank ascending), ranks distinct: the k-th
    largest value v is the cut; every entry above it is taken (fewer than k) and the ties at v by rank. Three
    device ops over `values`, no wait for the device."""
    cut = values.topk(k, sorted=False).values.min()
    key = torch.where(values > cut, -1, torch.where(values == cut, rank, torch.iinfo(torch.int64).max))
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
        self._pending: list[tuple[torch.Tensor, RowIdentity | None]] = []  # per batch: (row, coord, value), ids

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
        """Offer a batch (n, d): its top m entries are picked on its device and named when the state is taken."""
        x = as_batch(x)
        n, d = x.shape
        if n == 0 or d == 0:
            return
        a = absolute_values(x) if absolute is None else absolute
        best = a.amax(1)
        if weights is not None:  # rows left out sort last, and are dropped when resolved
            best = best.masked_fill(~weights, -1.0)
        rank = identity.rank if identity is not None else torch.arange(n, device=x.device)
        rows = first_k(best, rank, min(self.m, n))
        sub = a.index_select(0, rows).masked_fill(best.index_select(0, rows)[:, None] < 0, -1.0)
        coords = torch.arange(d, device=x.device)
        flat = first_k(sub.reshape(-1), (rank.index_select(0, rows)[:, None] * d + coords).reshape(-1),
                       min(self.m, sub.numel()))
        row, coord = rows.index_select(0, flat // d), flat % d
        left_out = sub.reshape(-1).index_select(0, flat) < 0
        value = x[row, coord].to(F64).masked_fill(left_out, float("nan"))  # NaN marks a left-out row's entry
        self._pending.append((torch.stack([row.to(F64), coord.to(F64), value]), identity))
        self._n = _add_counts(self._n, row_count(weights, n))

    def _resolve(self) -> dict[str, np.ndarray]:
        """The entries held: the pending batches' picks moved to the host in one copy, named, and merged in."""
        if self._pending:
            picks = torch.cat([p for p, _ in self._pending], dim=1).cpu().numpy()
            bounds = np.cumsum([0] + [p.shape[1] for p, _ in self._pending])
            parts = [] if self._entries is None else [self._entries]
            for (_, identity), lo, hi in zip(self._pending, bounds[:-1], bounds[1:]):
                row, coord, value = picks[:, lo:hi]
                ok = ~np.isnan(value)
                row, coord, value = row[ok].astype(np.int64), coord[ok].astype(np.int64), value[ok]
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

    State: `n` (rows fed) and `counts` (int64, `BINS`)."""

    SHIFT = 19
    BINS = 255 << 4  # exponents 0..254: every finite float32; 255 (Inf, NaN) never fed

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None
        self._n: int | torch.Tensor = 0

    @property
    def n(self) -> int:
        return int(self._n)

    @property
    def is_empty(self) -> bool:
        return self._counts is None

    @classmethod
    def edges(cls) -> np.ndarray:
        """The BINS + 1 bin edges (float64; the last is the float32 overflow, inf)."""
        return (np.arange(cls.BINS + 1, dtype=np.uint32) << cls.SHIFT).view(np.float32).astype(np.float64)

    @property
    def counts(self) -> np.ndarray:
        return np.zeros(self.BINS, np.int64) if self._counts is None else self._counts.cpu().numpy()

    def add(self, x: torch.Tensor | np.ndarray, /, *, weights: torch.Tensor | None = None,
            absolute: torch.Tensor | None = None) -> None:
        x = as_batch(x)
        if x.shape[0] == 0:
            return
        a = absolute_values(x) if absolute is None else absolute
        if a.dtype != torch.float32:
            a = a.float()
        idx = a.view(torch.int32) >> self.SHIFT
        if weights is not None:  # rows left out go to the Inf/NaN bins, never kept
            idx = idx.masked_fill(~weights[:, None], self.BINS)
        counts = _bin_counts(idx.reshape(-1), self.BINS + 16)[: self.BINS]
        self._counts = counts if self._counts is None else self._counts.add_(counts.to(self._counts.device))
        self._n = _add_counts(self._n, row_count(weights, x.shape[0]))

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        if other._counts is None:
            return self
        if self._counts is None:
            self._counts = other._counts.clone()
        else:
            self._counts = self._counts + other._counts.to(self._counts.device)
        self._n = _add_counts(self._n, other._n)
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
        counts = self.counts if self._counts is None else to_array(self._counts, copy)
        return {"n": np.int64(self.n), "counts": counts}

    @classmethod
    def load(cls, state: Mapping[str, Any], *, copy: bool = True) -> AbsHistogram:
        h = cls()
        h._n = int(state["n"])
        if h._n:
            h._counts = to_tensor(state["counts"], copy, dtype=np.int64)
        return h


def _bin_counts(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Counts of the integer bins `idx` (0 <= idx < size) as int64, on their device, without waiting for it
    (`bincount` would: its CUDA kernel reads the input's maximum back to the host). On a GPU `histc` (per-block
    counts in shared memory, where `index_add_` would make every entry an atomic add on one of a few hundred
    global addresses); on a CPU `index_add_`."""
    return histc_counts(idx, size) if idx.is_cuda else index_add_counts(idx, size)


def index_add_counts(idx: torch.Tensor, size: int) -> torch.Tensor:
    counts = torch.zeros(size, dtype=torch.int64, device=idx.device)
    return counts.index_add_(0, idx, torch.ones(1, dtype=torch.int64, device=idx.device).expand(len(idx)))


def histc_counts(idx: torch.Tensor, size: int) -> torch.Tensor:
    """`histc` over chunks of 2^24 entries, below which its float32 counts are exact integers."""
    out = torch.zeros(size, dtype=torch.int64, device=idx.device)
    for chunk in idx.split(1 << 24):
        out += torch.histc(chunk.float(), bins=size, min=0, max=size).long()
    return out
