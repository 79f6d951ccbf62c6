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


def test_bootstrap_intervals_cover_the_truth(tmp_path):
    """Isotropic Gaussian tokens, each its own document: the mean cosine is 0 and the centred E[cos^2] equals the
    Gaussian prediction, so the 95 % intervals should contain 0 and 1; the point estimate is the histogram's."""
    from tasks.analysis import pair_moments_bootstrap
    from tasks.similarity import unit_rows

    x = np.random.default_rng(5).normal(size=(20_000, 32))
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    n = 1000
    r = analyze_site(0, "mlp_out", x[:n].astype(np.float32), {"doc": np.arange(n)}, bins=100, tile=512,
                     quantiles=(0.5,), store_root=str(tmp_path), save_samples=False, stats=stats.state(),
                     matched_seed=3, n_boot=200)
    raw, cen = r["variants"]["raw"], r["variants"]["centered"]
    assert raw["cos_mean_ci_low"] < 0 < raw["cos_mean_ci_high"]
    assert raw["cos_mean_ci_high"] - raw["cos_mean_ci_low"] < 0.02
    assert cen["cos2_over_gaussian_ci_low"] < 1 < cen["cos2_over_gaussian_ci_high"]
    boot = pair_moments_bootstrap(unit_rows(x[:n].astype(np.float32)).double().numpy(), np.arange(n), 10, 0)
    assert boot.estimate[0] == pytest.approx(raw["cos_mean"], abs=1e-6)
    assert boot.estimate[1] == pytest.approx(raw["cos_std"] ** 2 + raw["cos_mean"] ** 2, rel=1e-5)
