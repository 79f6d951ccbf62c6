"""Streaming statistics: any grouping and order of merges equals one float64 pass over all the data."""

import numpy as np
import pytest
import torch
from scipy import stats

from tasks.stats.base import pack_symmetric, unpack_symmetric
from tasks.stats.moments import Moments
from tasks.stats.norms import NormHistogram
from tasks.stats.reductions import row_norms
from tasks.stats.second_order import Covariance, UnitSecondMoment, UnitSums
from tasks.stats.site import SiteStatistics


def data(seed=0, n=3000, d=7):
    """Batches with very different means and scales: where a wrong cross term in a merge shows."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_t(df=5, size=(int(rng.integers(1, 400)), d)) * rng.uniform(0.1, 5) + rng.normal(0, 50, d)
             for _ in range(20)]
    return np.concatenate(parts), parts


def grouped(cls, parts, rng):
    """Add parts to random groups, then merge the groups in random order (through state/load)."""
    order = rng.permutation(len(parts))
    cuts = np.sort(rng.choice(np.arange(1, len(parts)), size=4, replace=False))
    states = []
    for group in np.split(order, cuts):
        s = cls()
        for i in group:
            s.add(torch.from_numpy(parts[i]))
        states.append(s.state())
    rng.shuffle(states)
    merged = cls.load(states[0])
    for st in states[1:]:
        merged.merge(cls.load(st))
    return merged


def test_moments_match_single_pass_and_scipy():
    x, parts = data()
    rng = np.random.default_rng(1)
    for _ in range(3):
        m = grouped(Moments, parts, rng)
        assert m.n == len(x)
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.variance, x.var(0), rtol=1e-10)
        np.testing.assert_allclose(m.skewness, stats.skew(x, axis=0), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(m.excess_kurtosis, stats.kurtosis(x, axis=0), rtol=1e-8, atol=1e-10)
    single = Moments()
    single.add(torch.from_numpy(x))
    for key in ("m2", "m3", "m4"):
        np.testing.assert_allclose(getattr(m, key), getattr(single, key), rtol=1e-9, atol=1e-6)


def test_covariance_matches_numpy():
    x, parts = data(seed=2)
    c = grouped(Covariance, parts, np.random.default_rng(3))
    np.testing.assert_allclose(c.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(c.mean, x.mean(0), rtol=1e-12)


def test_unit_sums_and_norms():
    x, parts = data(seed=4)
    u = grouped(UnitSums, parts, np.random.default_rng(5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(u.sum, unit.sum(0), rtol=1e-10)
    np.testing.assert_allclose(u.sq, (unit * unit).sum(0), rtol=1e-10)
    q = grouped(UnitSecondMoment, parts, np.random.default_rng(7))
    assert u.n == q.n == len(x)
    np.testing.assert_allclose(q.second, unit.T @ unit, rtol=1e-10)
    h = grouped(NormHistogram, parts, np.random.default_rng(6))
    norms = np.linalg.norm(x, axis=1)
    expected, _ = np.histogram(np.clip(norms, NormHistogram.LO, NormHistogram.HI), bins=NormHistogram.edges())
    assert np.abs(h.counts - expected).sum() <= 2  # float ties at log-spaced edges only
    assert h.counts.sum() == len(x)
    np.testing.assert_allclose(h.moments.mean, [norms.mean()], rtol=1e-12)


def test_float32_gpu_style_batches_merge_to_float32_precision():
    """Inputs may arrive as float32 (or bf16) tensors: summed in float32 within a block, in float64 across blocks,
    batches and merges, so the result matches a float64 pass over the same values to float32 precision (the
    float64 tests above hold these statistics to 1e-10)."""
    x, parts = data(seed=8)
    m = Moments()
    for p in parts:
        m.add(torch.from_numpy(p.astype(np.float32)))
    x32 = np.concatenate(parts).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(m.variance, x32.var(0), rtol=1e-6)
    np.testing.assert_allclose(m.excess_kurtosis, stats.kurtosis(x32, axis=0), rtol=1e-5, atol=1e-6)


def test_empty_state_round_trips():
    x, _ = data(seed=9)
    for cls in (Moments, Covariance, UnitSums, UnitSecondMoment, NormHistogram):
        empty = cls.load(cls().state())
        full = cls()
        full.add(torch.from_numpy(x))
        merged = cls.load(empty.state()).merge(full)  # empty + data == data
        for key, value in full.state().items():
            np.testing.assert_array_equal(merged.state()[key], value)


def test_site_statistics_second_order_rows_and_cpu_blocks():
    """A batch longer than the CPU block size, float32 like model activations: first-order parts see every row,
    the d x d parts only the chosen rows; each equals a direct float64 computation on those rows to float32
    precision (float32 arithmetic within a block)."""
    rng = np.random.default_rng(10)
    x = (rng.standard_t(df=4, size=(1500, 6)) * [1, 2, 3, 4, 5, 6] + 20).astype(np.float32)
    rows = np.flatnonzero(rng.random(len(x)) < 0.3)
    s = SiteStatistics.load(SiteStatistics().state())
    s.add(torch.from_numpy(x[:700]), second_order_rows=torch.as_tensor(rows[rows < 700]))
    s.add(torch.from_numpy(x[700:]), second_order_rows=torch.as_tensor(rows[rows >= 700] - 700))
    s = SiteStatistics.load(s.state())
    xd = x.astype(np.float64)
    unit = xd / np.linalg.norm(xd, axis=1, keepdims=True)
    assert s.moments.n == s.units.n == len(x) and s.covariance.n == s.unit_second.n == len(rows)
    np.testing.assert_allclose(s.moments.mean, xd.mean(0), rtol=1e-7)
    np.testing.assert_allclose(s.moments.excess_kurtosis, stats.kurtosis(xd, axis=0), rtol=2e-6)
    np.testing.assert_allclose(s.units.sum, unit.sum(0), rtol=1e-6)
    np.testing.assert_allclose(s.units.sq, (unit * unit).sum(0), rtol=1e-6)
    np.testing.assert_allclose(s.covariance.covariance, np.cov(xd[rows], rowvar=False), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s.unit_second.second, unit[rows].T @ unit[rows], rtol=1e-5)


def test_site_statistics_keep_excluded_tokens_apart():
    """Excluded tokens feed only `excluded_norms`; through state/load and merges, like the other parts."""
    _, parts = data(seed=10)
    halves = []
    for group in (parts[:7], parts[7:]):
        s = SiteStatistics()
        for p in group:
            s.add(torch.from_numpy(p[1:]))
            s.add_excluded(torch.from_numpy(p[:1]))  # the first row of every part is "position 0"
        halves.append(SiteStatistics.load(s.state()))
    merged = halves[1].merge(halves[0])
    kept = np.concatenate([p[1:] for p in parts])
    dropped = np.concatenate([p[:1] for p in parts])
    assert merged.moments.n == merged.covariance.n == merged.units.n == len(kept)
    np.testing.assert_allclose(merged.moments.mean, kept.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.norms.moments.mean, [np.linalg.norm(kept, axis=1).mean()], rtol=1e-12)
    ex = merged.excluded_norms
    assert ex.moments.n == ex.counts.sum() == len(dropped) == len(parts)
    np.testing.assert_allclose(ex.moments.mean, [np.linalg.norm(dropped, axis=1).mean()], rtol=1e-12)
    np.testing.assert_allclose(ex.moments.variance, [np.linalg.norm(dropped, axis=1).var()], rtol=1e-10)
    assert SiteStatistics.load(SiteStatistics().state()).excluded_norms.moments.n == 0


def test_packed_states_hold_the_same_statistics():
    """A packed state (upper triangles of the d x d fields) is half the bytes and loads to the same statistics:
    the triangle round-trips exactly and the covariance still equals numpy's."""
    x, parts = data(seed=11)
    s = SiteStatistics()
    for p in parts:
        s.add(torch.from_numpy(p))
    full, packed = s.state(), s.state(packed=True)
    d = x.shape[1]
    assert packed["covariance.comoment"].shape == packed["unit_second.second"].shape == (d * (d + 1) // 2,)
    loaded = SiteStatistics.load(packed)
    frozen = {k: v.copy() for k, v in packed.items()}
    for v in frozen.values():
        v.setflags(write=False)  # as views of a file's bytes are
    owner = SiteStatistics.load(frozen).merge(SiteStatistics.load(frozen, copy=False))  # sums into its own arrays
    np.testing.assert_allclose(owner.covariance.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(owner.unit_second.second, 2 * loaded.unit_second.second, rtol=1e-12)
    np.testing.assert_allclose(loaded.covariance.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-9)
    for key in ("covariance.comoment", "unit_second.second"):
        np.testing.assert_array_equal(np.triu(loaded.state()[key]), np.triu(full[key]))
        assert np.array_equal(loaded.state()[key], loaded.state()[key].T)
    a = np.arange(16.0).reshape(4, 4)
    a = a + a.T
    np.testing.assert_array_equal(pack_symmetric(a), a[np.triu_indices(4)])  # numpy's own row-major triangle
    np.testing.assert_array_equal(pack_symmetric(torch.from_numpy(a)).numpy(), a[np.triu_indices(4)])
    np.testing.assert_array_equal(unpack_symmetric(pack_symmetric(a)), a)
    with pytest.raises(ValueError, match="upper triangle"):
        unpack_symmetric(np.zeros(7))


def test_row_norms_as_exact_as_float64_at_any_scale():
    """float32 rows on a CPU are reduced in float32 except where that over- or underflows or meets a NaN or Inf:
    every norm equals numpy's float64 norm of the same values (to float32 precision for ordinary rows, exactly
    enough for the extreme ones, whose float32 sums of squares would be Inf or 0), and non-finite rows stay so."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((9, 4, 50)).astype(np.float32) * 3
    x[1, 2] *= np.float32(1e20)  # squares overflow float32
    x[3, 0] *= np.float32(1e-25)  # squares underflow float32
    x[4, 1] = 0.0
    x[5, 3, 7] = np.nan
    x[6, 0, 0] = np.inf
    x[7, 1, :25] *= np.float32(1e18)  # half huge, half ordinary: float32 copes
    got = row_norms(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float64 and got.shape == (9, 4)
    want = np.linalg.norm(x.astype(np.float64), axis=-1)
    assert np.array_equal(np.isfinite(got), np.isfinite(want)) and np.isnan(got[5, 3]) and got[6, 0] == np.inf
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=3e-7)
    for row in ((1, 2), (3, 0)):
        np.testing.assert_allclose(got[row], want[row], rtol=1e-14)
    assert got[4, 1] == 0.0 and got[3, 0] > 0
    for dtype in (torch.float64, torch.bfloat16):  # other dtypes take the float64 reduction
        t = torch.from_numpy(x[0]).to(dtype)
        np.testing.assert_allclose(row_norms(t).numpy(), np.linalg.norm(t.double().numpy(), axis=-1), rtol=1e-14)


def test_merge_into_an_empty_statistic_copies():
    """Merging into an empty statistic takes a copy: adding to the source afterwards leaves it as it was."""
    x, parts = data(seed=13)
    for cls in (Moments, Covariance, UnitSums, UnitSecondMoment):
        source = cls()
        source.add(torch.from_numpy(parts[0]))
        copy = cls().merge(source)
        before = copy.state()
        source.add(torch.from_numpy(parts[1]))
        source.merge(cls.load(source.state()))
        for key, value in copy.state().items():
            np.testing.assert_array_equal(value, before[key])
        np.testing.assert_array_equal(copy.state()["n"], len(parts[0]))


def test_weighted_batches_equal_the_rows_they_keep():
    """`add(x, weights=mask)` (counts kept as tensors, as on a GPU) equals adding only the rows the mask keeps, NaN
    rows among the others included, a batch that keeps nothing included; merged with statistics loaded from states
    (int counts) either way round, through state/load, it equals one float64 pass over the kept rows."""
    x, parts = data(seed=14)
    rng = np.random.default_rng(15)
    masks = [rng.random(len(p)) < 0.7 for p in parts]
    masks[3][:] = False
    poisoned = []
    for p, m in zip(parts, masks):
        q = p.copy()
        q[~m] = np.nan  # what the mask drops may be anything
        poisoned.append(q)
    kept = np.concatenate([p[m] for p, m in zip(parts, masks)])
    for cls in (Moments, Covariance, UnitSums, UnitSecondMoment, NormHistogram):
        weighted, plain = cls(), cls()
        for i, (q, m) in enumerate(zip(poisoned[:10], masks[:10])):
            weighted.add(torch.from_numpy(q), weights=torch.from_numpy(m))
            plain.add(torch.from_numpy(parts[i][m]))
        counted = weighted.moments if cls is NormHistogram else weighted
        assert isinstance(counted._n, torch.Tensor)  # counted where the rows are, never read back on the way
        for key, value in plain.state().items():
            np.testing.assert_allclose(weighted.state()[key], value, rtol=1e-12, atol=1e-12, err_msg=f"{cls.__name__} {key}")
        rest = cls()
        for q, m in zip(poisoned[10:], masks[10:]):
            rest.add(torch.from_numpy(q), weights=torch.from_numpy(m))
        merged = cls.load(weighted.state()).merge(rest)  # int counts, then tensor counts
        merged2 = weighted.merge(cls.load(rest.state()))  # tensor counts, then int counts
        single = cls()
        single.add(torch.from_numpy(kept))
        for got in (merged, merged2):
            for key, value in single.state().items():
                np.testing.assert_allclose(got.state()[key], value, rtol=1e-9, atol=1e-9, err_msg=f"{cls.__name__} {key}")
    s = SiteStatistics()
    for q, m in zip(poisoned, masks):
        s.add(torch.from_numpy(q), second_order_rows=torch.arange(0, len(q), 2), weights=torch.from_numpy(m))
    every_other = np.concatenate([p[::2][m[::2]] for p, m in zip(parts, masks)])
    assert s.moments.n == s.norms.counts.sum() == len(kept) and s.covariance.n == len(every_other)
    np.testing.assert_allclose(s.moments.mean, kept.mean(0), rtol=1e-10)
    np.testing.assert_allclose(s.covariance.covariance, np.cov(every_other, rowvar=False), rtol=1e-9, atol=1e-9)


def test_norm_moments_about_a_fixed_centre_hold_under_drift():
    """The norm histogram's moments are power sums about the first batch's centre: batches whose norms drift by
    50 standard deviations from it still give scipy's moments of all the norms to 1e-7 (the rounding grows as the
    drift's fourth power times 1e-16), through merges and state/load as well."""
    rng = np.random.default_rng(16)
    batches = [rng.normal(100.0 + 2.5 * i, 1.0, size=int(rng.integers(50, 300))) for i in range(21)]  # up to +50 sd
    h, merged = NormHistogram(), NormHistogram()
    for r in batches:
        h.add(torch.from_numpy(r[:, None]))
        part = NormHistogram()
        part.add(torch.from_numpy(r[:, None]))
        merged.merge(NormHistogram.load(part.state()))
    r = np.concatenate(batches)
    for got in (h.moments, NormHistogram.load(h.state()).moments, merged.moments):
        assert got.n == len(r)
        np.testing.assert_allclose(got.mean, [r.mean()], rtol=1e-12)
        np.testing.assert_allclose(got.variance, [r.var()], rtol=1e-9)
        np.testing.assert_allclose(got.skewness, [stats.skew(r)], rtol=1e-7)
        np.testing.assert_allclose(got.excess_kurtosis, [stats.kurtosis(r)], rtol=1e-7)


def test_constant_coordinate_has_zero_variance_through_merges():
    """A coordinate that never changes has variance 0, never the small negative number rounding can leave in M2
    (here: batches whose first rows are all left out, so that their sums run about a centre of 0), and the
    corpus numbers take its square root without a warning."""
    import warnings

    from tasks.analysis.site import corpus_numbers

    rng = np.random.default_rng(0)
    total = SiteStatistics()
    for n in (700, 1300, 999):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        x[:, 0] = np.float32(2.7)
        kept = torch.ones(n, dtype=torch.bool)
        kept[:256] = False
        part = SiteStatistics()
        part.add(torch.from_numpy(x), weights=kept)
        total.merge(SiteStatistics.load(part.state()))
    assert total.moments.variance[0] == 0.0
    assert (total.moments.variance[1:] > 0.5).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numbers = corpus_numbers(total)
    assert numbers["moments_std"][0] == 0.0
