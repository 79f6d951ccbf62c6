"""Every mergeable statistic follows `tasks.stats.base.Statistic`, and keeps its promises the same way.

One parametrised test per promise, over every statistic: batches grouped at random, each group saved and loaded
(packed or not, copied or not) and the groups merged in shuffled order equal one `add` of all the data (to float
rounding; counts, sample keys and sample vectors exactly); `state`/`load` round-trips exactly; empty statistics
merge as no-ops and merging into one copies; and each is an instance of the runtime-checkable protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

from tasks.analysis.similarity import CosineHistogram
from tasks.capture.sampling import token_hash
from tasks.stats.base import Statistic
from tasks.stats.bottom_k import BottomKSample
from tasks.stats.massive import AbsHistogram, RowIdentity, TopAbs
from tasks.stats.moments import Moments
from tasks.stats.norms import NormHistogram
from tasks.stats.second_order import Covariance, UnitSecondMoment, UnitSums
from tasks.stats.site import SiteStatistics

N, D = 700, 5
Rows = dict[str, np.ndarray]  # per-row arrays, rows on axis 0


def states(rng: np.random.Generator) -> Rows:
    """Rows from blocks with very different means and scales (where a wrong cross term in a merge shows)."""
    blocks = [rng.standard_t(df=5, size=(100, D)) * rng.uniform(0.5, 3) + rng.normal(0, 5, D) for _ in range(N // 100)]
    return {"x": np.concatenate(blocks)}


def identities(rng: np.random.Generator) -> Rows:
    """Distinct token identities, in an order unrelated to the rows'."""
    order = rng.permutation(N)
    return {"doc": order // 50, "window": order % 2, "pos": order % 50, "token_id": rng.integers(0, 1000, N)}


def identity(b: Rows) -> RowIdentity:
    return RowIdentity.of({k: b[k] for k in ("doc", "window", "pos", "token_id")}, excluded=b.get("excluded"))


def site_rows(rng: np.random.Generator) -> Rows:
    """States plus which rows are kept (weights), chosen for second order, or excluded; rows that weights drop hold
    NaN, as non-finite states do in the capture hooks."""
    x = states(rng)["x"]
    excluded = rng.random(N) < 0.05
    kept = rng.random(N) < 0.8
    x[~kept & ~excluded] = np.nan
    return {"x": x, "kept": kept, "second": rng.random(N) < 0.3, "excluded": excluded, **identities(rng)}


def feed_site(stat: SiteStatistics, b: Rows) -> None:
    main = ~b["excluded"]
    stat.add(torch.from_numpy(b["x"][main]), second_order_rows=torch.from_numpy(np.flatnonzero(b["second"][main])),
             weights=torch.from_numpy(b["kept"][main]))
    stat.add_excluded(torch.from_numpy(b["x"][b["excluded"]]))
    stat.add_massive(torch.from_numpy(b["x"]), weights=torch.from_numpy(b["kept"] | b["excluded"]), identity=identity(b))


def tied_rows(rng: np.random.Generator) -> Rows:
    """Small integers (every |x| ties with hundreds of others) and rows that weights drop: the top m must be the
    same in any grouping, its ties broken by token identity and coordinate."""
    x = rng.integers(-6, 7, size=(N, D)).astype(np.float64)
    kept = rng.random(N) < 0.9
    x[~kept] = np.nan
    return {"x": x, "kept": kept, **identities(rng)}


def feed_massive(stat, b: Rows) -> None:
    stat.add(torch.from_numpy(b["x"]), weights=torch.from_numpy(b["kept"]), **(
        {"identity": identity(b)} if isinstance(stat, TopAbs) else {}))


def cosines(rng: np.random.Generator) -> Rows:
    return {"v": rng.uniform(-1.0, 1.0, size=N).astype(np.float32)}


def sample_rows(rng: np.random.Generator) -> Rows:
    doc, pos = rng.integers(0, 30, N), np.arange(N)  # distinct identities
    window = np.zeros(N, np.int64)
    return {"hash": token_hash(5, doc, window, pos), "doc": doc, "window": window, "pos": pos,
            "token_id": rng.integers(0, 1000, N).astype(np.int32),
            "context": rng.integers(-1, 1000, (N, 11)).astype(np.int32),
            "vectors": rng.standard_normal((N, 2, 3)).astype(np.float32)}  # (rows, sites, d)


def feed_sample(stat: BottomKSample, b: Rows) -> None:
    stat.add(np.ascontiguousarray(np.moveaxis(b["vectors"], 0, 1)), keys={k: v for k, v in b.items() if k != "vectors"})


def feed_x(stat: Statistic, b: Rows) -> None:
    stat.add(torch.from_numpy(b["x"]))


def counts_exact(key: str) -> bool:
    """Counts are exact in any grouping: bin counts and the number of observations."""
    return key.endswith("counts") or key.split(".")[-1] in ("n", "m_n")


@dataclass
class Case:
    new: Callable[[], Statistic]
    rows: Callable[[np.random.Generator], Rows] = states
    feed: Callable[[Statistic, Rows], None] = feed_x
    exact: Callable[[str], bool] = field(default=counts_exact)
    empty_state: bool = True  # whether an empty statistic has a state


CASES = {
    "Moments": Case(Moments),
    "Covariance": Case(Covariance),
    "UnitSums": Case(UnitSums),
    "UnitSecondMoment": Case(UnitSecondMoment),
    "NormHistogram": Case(NormHistogram),
    "SiteStatistics": Case(SiteStatistics, site_rows, feed_site),
    "TopAbs": Case(lambda: TopAbs(25), site_rows, feed_massive, exact=lambda key: True),
    "TopAbs-ties": Case(lambda: TopAbs(40), tied_rows, feed_massive, exact=lambda key: True),
    "AbsHistogram": Case(AbsHistogram, site_rows, feed_massive, exact=lambda key: True),
    "CosineHistogram": Case(lambda: CosineHistogram(40), cosines, lambda s, b: s.add(torch.from_numpy(b["v"]))),
    "BottomKSample": Case(lambda: BottomKSample(60), sample_rows, feed_sample, exact=lambda key: True,
                          empty_state=False),  # an empty sample has no vectors' shape to save
}
cases = pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())


def fed(case: Case, rows: Rows, batches: list[np.ndarray]) -> Statistic:
    stat = case.new()
    for index in batches:
        case.feed(stat, {k: v[index] for k, v in rows.items()})
    return stat


def assert_same(got: dict, want: dict, exact: Callable[[str], bool], rtol: float = 1e-9, atol: float = 1e-7) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if exact(key):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)


def snapshot(state: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in state.items()}


@cases
def test_is_a_statistic(case):
    rng = np.random.default_rng(0)
    empty, full = case.new(), fed(case, case.rows(rng), [np.arange(N)])
    for stat in (empty, full):
        assert isinstance(stat, Statistic)
    assert empty.is_empty and empty.n == 0 and not full.is_empty and full.n > 0


@cases
def test_merges_in_any_grouping_and_order_equal_one_pass(case):
    rng = np.random.default_rng(1)
    rows = case.rows(rng)
    truth = fed(case, rows, [np.arange(N)]).state()
    for trial in range(4):
        cuts = np.sort(rng.choice(np.arange(1, N), size=int(rng.integers(1, 15)), replace=False))
        batches = np.split(np.arange(N), cuts)
        label = rng.integers(0, min(len(batches), 4), len(batches))  # random groups, not contiguous runs
        groups = [[batches[i] for i in rng.permutation(np.flatnonzero(label == g))] for g in np.unique(label)]
        parts = []
        for group in groups:
            packed, copy = bool(rng.integers(2)), bool(rng.integers(2))
            parts.append(type(case.new()).load(fed(case, rows, group).state(packed=packed), copy=copy))
        parts.insert(int(rng.integers(len(parts) + 1)), case.new())  # an empty part anywhere
        merged = case.new()
        for i in rng.permutation(len(parts)):
            assert merged.merge(parts[i]) is merged
        assert_same(merged.state(), truth, case.exact)


@cases
def test_state_round_trips(case):
    rng = np.random.default_rng(2)
    rows = case.rows(rng)
    full = fed(case, rows, np.array_split(np.arange(N // 2), 3))
    want = snapshot(full.state())
    for packed in (False, True):
        for copy in (True, False):
            again = type(full).load(full.state(packed=packed, copy=copy), copy=copy)
            assert_same(again.state(), want, lambda key: True)
    # a copied state is a snapshot, and a statistic loaded with a copy owns its arrays
    taken = full.state()
    owner = type(full).load(taken)
    more = fed(case, rows, [np.arange(N // 2, N)])
    case.feed(full, {k: v[N // 2:] for k, v in rows.items()})
    owner.merge(more)
    assert_same(taken, want, lambda key: True)
    assert_same(owner.state(), full.state(), case.exact)


@cases
def test_empty_merges(case):
    rng = np.random.default_rng(3)
    rows = case.rows(rng)
    want = fed(case, rows, [np.arange(N)]).state()
    empty = case.new()
    assert empty.merge(case.new()) is empty and empty.is_empty and empty.n == 0
    into_empty = case.new().merge(fed(case, rows, [np.arange(N)]))
    assert_same(into_empty.state(), want, lambda key: True)
    assert_same(fed(case, rows, [np.arange(N)]).merge(case.new()).state(), want, lambda key: True)
    source = fed(case, rows, [np.arange(N // 2)])
    copied = case.new().merge(source)
    before = snapshot(copied.state())
    case.feed(source, {k: v[N // 2:] for k, v in rows.items()})  # merging into an empty statistic took a copy
    assert_same(copied.state(), before, lambda key: True)
    if not case.empty_state:
        with pytest.raises(ValueError):
            case.new().state()
        return
    loaded = type(empty).load(case.new().state())
    assert loaded.is_empty and loaded.n == 0
    assert_same(type(empty).load(case.new().state()).merge(fed(case, rows, [np.arange(N)])).state(), want,
                lambda key: True)
    assert_same(fed(case, rows, [np.arange(N)]).merge(loaded).state(), want, lambda key: True)
