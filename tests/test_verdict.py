"""The matched Gaussian baseline and the per-site verdict on synthetic states whose nature is known."""

import numpy as np
import pytest
import torch

from tasks.analysis import analyze_site
from tasks.baselines import matched_gaussian
from tasks.moments import SiteStatistics
from tasks.verdict import verdict


def test_matched_gaussian_has_the_mean_and_covariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov, mean = a @ a.T + np.eye(6), rng.normal(size=6)
    x = matched_gaussian(mean, cov, 200_000, seed=1).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, rtol=0.03, atol=0.03)
    assert np.array_equal(matched_gaussian(mean, cov, 10, seed=1), matched_gaussian(mean, cov, 10, seed=1))


def site_verdict(x: np.ndarray, tmp_path, n_sample: int = 1500) -> tuple[str, dict, dict]:
    """Run the per-site analysis on corpus states x (all feed the statistics; the first n_sample are the
    sample), as the pipeline does, and apply the verdict rule."""
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    r = analyze_site(0, "resid_post", x[:n_sample].astype(np.float32), {}, bins=100, tile=512, quantiles=(0.5,),
                     store_root=str(tmp_path), save_samples=False, stats=stats.state(), matched_seed=3)
    site_level = {k: v for k, v in r.items() if k != "variants"}  # as the driver puts them on each row
    raw = {**r["variants"]["raw"], **site_level}
    cen = {**r["variants"]["centered"], **site_level}
    return verdict(raw, cen), raw, cen


def test_isotropic_gaussian_is_near_gaussian(tmp_path):
    x = np.random.default_rng(1).normal(size=(20_000, 64))
    label, raw, cen = site_verdict(x, tmp_path)
    assert label == "near-gaussian" and raw["w1_gaussian"] < 0.01
    assert cen["cos2_over_gaussian"] == pytest.approx(1.0, abs=0.1) and cen["ks_matched"] < 0.05


def test_spiked_gaussian_with_a_mean_is_gaussian_shaped_low_dim(tmp_path):
    rng = np.random.default_rng(2)
    scales = np.r_[np.full(5, 10.0), np.full(59, 0.1)]
    x = rng.normal(size=(20_000, 64)) * scales + 4.0  # five strong directions, a common offset
    label, raw, cen = site_verdict(x, tmp_path)
    assert raw["w1_gaussian"] > 0.1  # far from the isotropic law at width 64 ...
    assert label == "gaussian-shaped-low-dim"  # ... but exactly what its own covariance predicts
    assert cen["cos2_over_gaussian"] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("kind", ["student-t", "mixture"])
def test_heavy_tails_and_clusters_are_non_gaussian(kind, tmp_path):
    rng = np.random.default_rng(3)
    if kind == "student-t":  # independent heavy-tailed coordinates (df 2.5: infinite kurtosis)
        x = rng.standard_t(2.5, size=(20_000, 64))
    else:  # three tight clusters
        centres = rng.normal(size=(3, 64)) * 5
        x = centres[rng.integers(0, 3, 20_000)] + rng.normal(size=(20_000, 64)) * 0.5
    label, raw, cen = site_verdict(x, tmp_path)
    assert label == "non-gaussian", (cen["cos2_over_gaussian"], cen["ks_matched"], raw["w1_gaussian"], raw["kurtosis_max"])
