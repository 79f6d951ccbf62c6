"""Dimension estimators against brute force, closed forms, Wishart moments and Monte Carlo."""

import numpy as np
import pytest
from scipy import integrate, stats

from tasks.analysis.dimension import (
    all_pairs_cosine,
    components_for_variance,
    covariance_spectrum,
    dimension_report,
    gaussian_cosine_variance,
    gaussian_direction_weights,
    inverse_mean_cos2_dimension,
    participation_ratio,
    participation_ratio_corrected,
    standardized_covariance,
    unbiased_trace_moments,
)


def unit_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u.sum(0), u.T @ u


def mc_cos2(lam: np.ndarray, pairs: int, seed: int) -> tuple[float, float]:
    """Monte Carlo E[cos^2] for independent pairs from N(0, diag(lam)), and its standard error."""
    rng = np.random.default_rng(seed)
    root = np.sqrt(lam)
    parts = []
    for _ in range(4):  # chunks keep memory small
        x = rng.standard_normal((pairs // 4, len(lam))) * root
        y = rng.standard_normal((pairs // 4, len(lam))) * root
        parts.append(np.einsum("ij,ij->i", x, y) ** 2 / (np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y)))
    c2 = np.concatenate(parts)
    return float(c2.mean()), float(c2.std(ddof=1) / np.sqrt(len(c2)))


def test_all_pairs_cosine_matches_brute_force():
    rng = np.random.default_rng(0)
    n, d = 300, 20
    x = rng.standard_normal((n, d)) + 0.7 * rng.standard_normal(d)  # a common direction: mean cos > 0
    s, m = unit_sums(x)
    mean_cos, mean_cos2 = all_pairs_cosine(n, s, m)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = (u @ u.T)[~np.eye(n, dtype=bool)]
    assert mean_cos == pytest.approx(cos.mean(), rel=1e-10)
    assert mean_cos2 == pytest.approx((cos**2).mean(), rel=1e-10)
    assert mean_cos > 0.1


def test_participation_ratio_and_components_closed_forms():
    assert participation_ratio(np.ones(37)) == pytest.approx(37)
    assert participation_ratio(np.array([4.0, 0, 0])) == pytest.approx(1)
    assert participation_ratio(np.array([3.0, 1.0])) == pytest.approx(16 / 10)
    lam = np.array([0.5, 5, 1, 3, 0.5])  # unsorted; shares 0.5, 0.8, 0.9, 0.95, 1.0 once sorted
    assert components_for_variance(lam) == (3, 4, 5)
    assert components_for_variance(lam, (0.5, 0.81, 1.0)) == (1, 3, 5)
    assert components_for_variance(np.ones(100), (0.9,)) == (90,)


def test_unbiased_trace_moments_by_wishart_monte_carlo():
    """The inverted Wishart moments are unbiased: average them over many sample covariances (d = 5, n = 8)."""
    rng = np.random.default_rng(1)
    lam = np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    n, reps = 8, 100_000
    x = rng.standard_normal((reps, n, len(lam))) * np.sqrt(lam)
    x -= x.mean(axis=1, keepdims=True)
    cov = np.einsum("rni,rnj->rij", x, x) / (n - 1)
    a, b = unbiased_trace_moments(np.trace(cov, axis1=1, axis2=2), np.einsum("rij,rij->r", cov, cov), dof=n - 1)
    for est, truth in ((a, lam.sum() ** 2), (b, (lam**2).sum())):
        se = est.std() / np.sqrt(reps)
        assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)
    # The plug-in tr(S_hat^2) is biased up by (tr S)^2 / m + tr(S^2) / m: far outside the same error.
    plug = np.einsum("rij,rij->r", cov, cov)
    assert plug.mean() - (lam**2).sum() > 20 * plug.std() / np.sqrt(reps)


@pytest.mark.parametrize("n", [150, 300, 1200])
def test_corrected_pr_of_isotropic_gaussian(n):
    d = 300
    x = np.random.default_rng(n).standard_normal((n, d))
    lam = covariance_spectrum(np.cov(x, rowvar=False))
    raw, corrected = participation_ratio(lam), participation_ratio_corrected(lam, n)
    assert raw == pytest.approx(d / (1 + d / (n - 1)), rel=0.03)  # biased low (d / 2 at n = d)
    assert corrected == pytest.approx(d, rel=0.03)


def test_corrected_pr_of_spiked_spectrum():
    """Five spikes over a 395-dim bulk, n = 300 < d: the raw PR is ~20 % low, the corrected one unbiased. One
    draw's corrected PR scatters by ~8 % (each spike's variance is estimated to sqrt(2 / n)), so 40 are averaged
    (standard error 1.2 %). A ratio of unbiased estimators keeps a second-order bias ~ Var(tr S^2 estimate) /
    (tr S^2)^2, about +0.9 % here (measured over 300 draws: +0.9 +- 0.45 %), hence the 5 % bound."""
    rng = np.random.default_rng(2)
    d, n, reps = 400, 300, 40
    lam = np.ones(d)
    lam[:5] = [40.0, 30.0, 20.0, 10.0, 10.0]
    truth = lam.sum() ** 2 / (lam**2).sum()  # 505^2 / 3495 = 73.0
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]  # a rotated covariance, not diagonal
    raw, corrected = [], []
    for _ in range(reps):
        x = (rng.standard_normal((n, d)) * np.sqrt(lam)) @ q.T
        est = covariance_spectrum(np.cov(x, rowvar=False))
        raw.append(participation_ratio(est))
        corrected.append(participation_ratio_corrected(est, n))
    assert np.mean(raw) < 0.85 * truth
    assert np.mean(corrected) == pytest.approx(truth, rel=0.05)


def test_inverse_mean_cos2_is_the_dimension_of_isotropic_data():
    d, n = 50, 3000
    x = np.random.default_rng(3).standard_normal((n, d))
    _, mean_cos2 = all_pairs_cosine(n, *unit_sums(x))
    assert inverse_mean_cos2_dimension(mean_cos2) == pytest.approx(d, rel=0.02)


@pytest.mark.parametrize("d", [1, 2, 3, 17, 768, 4096])
def test_exact_cosine_variance_isotropic_is_one_over_d(d):
    assert gaussian_cosine_variance(np.full(d, 2.5)) == pytest.approx(1 / d, rel=1e-12)


@pytest.mark.parametrize("a,b", [(9.0, 1.0), (1.0, 1e-12), (3.0, 0.0)])
def test_exact_weights_two_dimensional_closed_form(a, b):
    """In 2-D, E[x_1^2 / |x|^2] = sqrt(a) / (sqrt(a) + sqrt(b)), also across 12 decades."""
    w = gaussian_direction_weights(np.array([a, b]))
    expect = np.array([np.sqrt(a), np.sqrt(b)]) / (np.sqrt(a) + np.sqrt(b))
    assert np.allclose(w, expect, rtol=1e-10, atol=1e-15)


def test_exact_weights_match_scipy_quad():
    lam = np.random.default_rng(4).gamma(0.5, size=12)
    w = gaussian_direction_weights(lam)
    for i in range(len(lam)):
        ref = integrate.quad(
            lambda t, li=lam[i]: li / (1 + 2 * t * li) * np.exp(-0.5 * np.log1p(2 * t * lam).sum()),
            0,
            np.inf,
            epsabs=0,
            epsrel=1e-11,
            limit=400,
        )[0]
        assert w[i] == pytest.approx(ref, rel=1e-9)
    assert w.sum() == pytest.approx(1, abs=1e-13)
    assert gaussian_direction_weights(lam * 1e-30) == pytest.approx(w, rel=1e-11)  # scale-free


def test_exact_cosine_variance_against_monte_carlo_and_one_over_pr():
    """Exact E[cos^2] matches 200k Monte Carlo pairs; 1 / PR (the leading order) overestimates it.

    Spiked: d = 100, one direction with variance 50 among 99 of variance 1 -> exact 0.0659, 1 / PR 0.117.
    Power law: d = 200, lambda_k = 1 / k -> exact 0.0375, 1 / PR 0.0475.
    """
    spiked = np.ones(100)
    spiked[0] = 50.0
    power = 1.0 / np.arange(1, 201)
    for lam, seed, pairs in ((spiked, 5, 200_000), (power, 6, 200_000)):
        exact = gaussian_cosine_variance(lam)
        mc, se = mc_cos2(lam, pairs, seed)
        leading = 1 / participation_ratio(lam)
        assert abs(exact - mc) < 4 * se, (exact, mc, se)
        assert leading - mc > 30 * se, (leading, mc, se)  # 1 / PR is off by far more than the MC error
    # The E[cos] = 0 part of the claim: an odd moment vanishes, checked on the same kind of draws.
    rng = np.random.default_rng(7)
    x, y = (rng.standard_normal((50_000, 100)) * np.sqrt(spiked) for _ in range(2))
    cos = np.einsum("ij,ij->i", x, y) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert abs(stats.ttest_1samp(cos, 0.0).statistic) < 4


def test_dimension_report_on_a_rotated_spiked_gaussian():
    rng = np.random.default_rng(8)
    d, n = 64, 4000
    lam = np.ones(d)
    lam[:3] = [30.0, 10.0, 5.0]
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mu = 0.5 * rng.standard_normal(d)
    x = mu + (rng.standard_normal((n, d)) * np.sqrt(lam)) @ q.T
    s, m = unit_sums(x)
    rep = dimension_report(n, x.mean(0), np.cov(x, rowvar=False), *all_pairs_cosine(n, s, m))

    assert (rep.n, rep.d) == (n, d)
    truth_pr = lam.sum() ** 2 / (lam**2).sum()
    assert rep.pr_corrected == pytest.approx(truth_pr, rel=0.05)
    assert rep.pr_raw < rep.pr_corrected
    assert rep.pc90 <= rep.pc95 <= rep.pc99 <= d
    assert rep.predicted_cos_var == pytest.approx(gaussian_cosine_variance(lam), rel=0.05)
    assert rep.predicted_dimension == pytest.approx(1 / rep.predicted_cos_var)
    assert rep.predicted_dimension > rep.pr_raw  # same spectrum: the exact dimension is above its leading order
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = (u @ u.T)[~np.eye(n, dtype=bool)]
    assert rep.mean_cos == pytest.approx(cos.mean(), rel=1e-9)
    assert rep.mean_cos2 == pytest.approx((cos**2).mean(), rel=1e-9)
    assert rep.cos_var == pytest.approx(cos.var(), rel=1e-8)
    assert rep.inverse_mean_cos2 == pytest.approx(1 / rep.mean_cos2)
    assert rep.mean_share == pytest.approx(mu @ mu / (mu @ mu + lam.sum()), rel=0.1)


def test_standardized_covariance_is_the_correlation_matrix():
    """D^-1/2 S D^-1/2 with D the variances equals numpy's corrcoef; a constant coordinate gets zeros; the exact
    E[cos^2] of its Gaussian is 1 / d when the coordinates are independent, whatever their scales."""
    rng = np.random.default_rng(10)
    a = rng.standard_normal((6, 6)) * [0.01, 1, 30, 2, 5, 1]
    x = np.c_[rng.standard_normal((2000, 6)) @ a.T, np.full(2000, 4.0)]
    cov = np.cov(x, rowvar=False)
    got = standardized_covariance(cov, x.std(0, ddof=1))
    np.testing.assert_allclose(got[:6, :6], np.corrcoef(x[:, :6], rowvar=False), rtol=1e-10, atol=1e-12)
    assert np.all(got[6] == 0) and np.all(got[:, 6] == 0)
    scales = np.geomspace(1e-3, 1e3, 40) ** 2
    spectrum = covariance_spectrum(standardized_covariance(np.diag(scales), np.sqrt(scales)))
    assert gaussian_cosine_variance(spectrum) == pytest.approx(1 / 40, rel=1e-12)


def test_pair_cosine_variance_matches_the_pair_list():
    """The closed form against the variance over the explicit list of pairs i < j, zero rows (cosine 0) included,
    and against the tiled histogram's own sums."""
    from tasks.analysis.site import pair_cosine_variance
    from tasks.analysis.similarity import cosine_histogram, unit_rows

    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 12)) * np.linspace(0.1, 3, 12) + 0.7
    x[[5, 77]] = 0.0
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    i, j = np.triu_indices(len(x), k=1)
    cos = np.einsum("pk,pk->p", u[i], u[j])
    assert pair_cosine_variance(x) == pytest.approx(cos.var(), rel=1e-9)
    assert pair_cosine_variance(x) == pytest.approx(cosine_histogram(unit_rows(x), 10, 64).std ** 2, rel=1e-5)
