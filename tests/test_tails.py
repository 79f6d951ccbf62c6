"""Per-coordinate excess kurtosis in the neuron and principal-component bases: the estimator against scipy, the
bases on rotated Laplace data (closed form: excess kurtosis 3), the summary columns of a site against an
independent scipy/numpy route, and Gaussian data (every direction 0)."""

import numpy as np
import pytest
import torch
from scipy import stats

from tasks.analysis.site import analyze_site
from tasks.stats.moments import Moments
from tasks.stats.site import SiteStatistics
from tasks.analysis.tails import (
    KURTOSIS_SHARE_THRESHOLD,
    excess_kurtosis,
    kurtosis_summary,
    principal_components_kurtosis,
)


def rotated_laplace(n: int, d: int, seed: int) -> np.ndarray:
    """x = R z: z has three unit-Laplace coordinates scaled 3, 2.5, 2 (excess kurtosis 3 each, variances 9, 6.25,
    4 above the Gaussian bulk's 1) and d - 3 standard normal ones; R a random rotation."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    z[:, :3] = rng.laplace(size=(n, 3)) / np.sqrt(2) * np.array([3.0, 2.5, 2.0])
    return z @ np.linalg.qr(rng.standard_normal((d, d)))[0].T


def test_excess_kurtosis_equals_scipy_and_summary_by_hand():
    x = np.random.default_rng(0).standard_t(5, size=(3000, 6))
    x[:, 5] = 2.0  # constant: no kurtosis
    k = excess_kurtosis(x)
    np.testing.assert_allclose(k[:5], stats.kurtosis(x[:, :5], fisher=True, bias=True), rtol=1e-10)
    assert np.isnan(k[5])
    s = kurtosis_summary(np.array([0.2, 5.0, np.nan, 1.5, -0.3]))
    assert s == {"max": 5.0, "median": pytest.approx(0.85), "share": 0.5}  # 2 of the 4 finite values above 1.0
    assert KURTOSIS_SHARE_THRESHOLD == 1.0


def test_rotated_laplace_shows_in_the_pc_basis_not_the_neuron_basis():
    """Each neuron mixes the three Laplace axes with 61 Gaussian ones, so its kurtosis is far below 3 (central
    limit); the principal axes recover the Laplace directions, whose kurtosis is 3 (sampling sd ~0.35 here)."""
    x = rotated_laplace(20_000, 64, seed=4)
    neuron = Moments()
    neuron.add(torch.from_numpy(x))
    pc = principal_components_kurtosis(x, x.mean(0), np.cov(x, rowvar=False))
    assert pc[:3] == pytest.approx([3.0, 3.0, 3.0], abs=1.2)  # the three largest components are the Laplace axes
    assert kurtosis_summary(pc)["max"] == pytest.approx(3.0, abs=1.2)
    assert np.abs(pc[3:]).max() < 0.5 and kurtosis_summary(pc)["share"] == pytest.approx(3 / 64)
    assert neuron.excess_kurtosis.max() < kurtosis_summary(pc)["max"] / 3
    assert kurtosis_summary(neuron.excess_kurtosis)["share"] == 0.0


def site(x: np.ndarray, tmp_path, n_sample: int = 1500) -> dict:
    stats_ = SiteStatistics()
    stats_.add(torch.from_numpy(x))
    return analyze_site(0, "mlp_out", x[:n_sample].astype(np.float32), {}, bins=100, tile=512, quantiles=(0.5,),
                        store_root=str(tmp_path), save_samples=False, stats=stats_.state(), matched_seed=1)


def test_site_columns_against_an_independent_route(tmp_path):
    """The site's kurtosis columns: neuron basis over every token (scipy on the whole array), PC basis on the
    sample with the axes of numpy's covariance of every token (scipy on the projections)."""
    x = rotated_laplace(20_000, 64, seed=5)
    r = site(x, tmp_path)
    every = stats.kurtosis(x, axis=0)
    assert r["kurtosis_share"] == pytest.approx(np.mean(every > 1.0))
    assert r["kurtosis_max"] == pytest.approx(every.max(), rel=1e-6)
    sample = x[:1500].astype(np.float32).astype(np.float64)
    axes = np.linalg.eigh(np.cov(x, rowvar=False))[1]
    pc = stats.kurtosis(sample @ axes, axis=0)
    assert r["pc_kurtosis_max"] == pytest.approx(pc.max(), rel=1e-6)
    assert r["pc_kurtosis_median"] == pytest.approx(np.median(pc), rel=1e-4, abs=1e-6)
    assert r["pc_kurtosis_share"] == pytest.approx(np.mean(pc > 1.0)) and r["pc_kurtosis_share"] > 0
    assert r["kurtosis_share_sample"] == pytest.approx(np.mean(stats.kurtosis(sample, axis=0) > 1.0))
    assert r["pc_kurtosis_max"] > 2 * r["kurtosis_max"]


def test_gaussian_data_has_no_heavy_tailed_direction(tmp_path):
    """Gaussian states with very unequal, correlated scales: every direction has excess kurtosis 0, with sampling
    sd sqrt(24 / n) = 0.13 on the 1500-token sample, so no coordinate in either basis passes 1.0."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((64, 64)) * np.geomspace(0.05, 20, 64)
    x = rng.standard_normal((20_000, 64)) @ a.T + 3.0
    r = site(x, tmp_path)
    assert r["kurtosis_share"] == 0.0 and r["pc_kurtosis_share"] == 0.0 and r["kurtosis_share_sample"] == 0.0
    assert abs(r["pc_kurtosis_median"]) < 0.1 and abs(r["kurtosis_median"]) < 0.05
