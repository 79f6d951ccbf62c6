"""The isotropic Gaussian cosine law against closed forms and Monte Carlo, and the dimension fit."""

import numpy as np
import pytest
from scipy import stats

from tasks.analysis.baselines import empirical_gaussian, fit_dimension, law_probabilities, wasserstein1
from tasks.analysis.similarity import bin_edges


def test_closed_forms_in_low_dimension():
    bins = 40
    edges = bin_edges(bins)
    # d = 3: the cosine is uniform on [-1, 1] (Archimedes' hat-box theorem).
    assert np.allclose(law_probabilities(3, bins), 1 / bins, atol=1e-12)
    # d = 2: the angle is uniform on [0, pi], so P(cos <= t) = 1 - arccos(t) / pi.
    cdf = 1 - np.arccos(edges) / np.pi
    assert np.allclose(law_probabilities(2, bins), np.diff(cdf), atol=1e-12)


@pytest.mark.parametrize("d", [5, 64, 1600])
def test_law_matches_monte_carlo(d):
    rng = np.random.default_rng(d)
    n = 100_000
    a, b = rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal((n, d), dtype=np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    bins = 100
    observed = np.histogram(cos, bins=bin_edges(bins))[0]
    expected = law_probabilities(d, bins) * n
    keep = expected > 20  # chi-square on well-populated bins
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4
    assert law_probabilities(d, bins).sum() == pytest.approx(1.0, abs=1e-12)


def test_far_tails_keep_precision():
    p = law_probabilities(200, 200)
    assert p[-1] > 0 and np.isfinite(np.log(p[-1]))  # ~1e-260, would round to 0 as a CDF difference
    assert p[-1] == pytest.approx(p[0], rel=1e-9)  # symmetric


def test_empirical_baseline_matches_exact_law():
    n, d, bins = 1500, 100, 100
    hist = empirical_gaussian(n, d, seed=3, bins=bins, tile=256)
    assert hist.n_pairs == n * (n - 1) // 2
    assert hist.std == pytest.approx(1 / np.sqrt(d), rel=0.03)
    w1 = wasserstein1(hist.counts / hist.n_pairs, law_probabilities(d, bins))
    assert w1 < 0.002  # pairs share vectors, so compare with the law's scale (std 0.1), not a chi-square
    again = empirical_gaussian(n, d, seed=3, bins=bins, tile=1000)
    assert np.abs(again.counts - hist.counts).sum() <= 10  # same draw, other tiling: only edge ties may move


@pytest.mark.parametrize("d", [4, 30, 300])
def test_fit_recovers_the_dimension_of_isotropic_data(d):
    bins = 200
    n_pairs = 2_000_000
    counts = np.random.default_rng(d).multinomial(n_pairs, law_probabilities(d, bins))
    assert fit_dimension(counts, d_max=64 * 300) == pytest.approx(d, rel=0.03)


def test_wasserstein_of_a_shift():
    bins = 100
    p = np.zeros(bins)
    q = np.zeros(bins)
    p[10], q[30] = 1, 1
    assert wasserstein1(p, q) == pytest.approx(20 * 2 / bins)


def test_law_log_probabilities_of_many_dimensions_are_the_rows_of_single_calls():
    """`fit_dimension` evaluates its grid in one call: each row must be the single call's result, bit for bit."""
    from tasks.analysis.baselines import law_log_probabilities

    dims = np.exp(np.linspace(np.log(1.1), np.log(64 * 1600), 48))
    rows = law_log_probabilities(dims, 200)
    assert rows.shape == (48, 200)
    for d, row in zip(dims, rows):
        assert np.array_equal(row, law_log_probabilities(float(d), 200))
