"""The matched Gaussian baseline and the per-site verdict on synthetic states whose nature is known."""

import numpy as np
import pytest
import torch

from tasks.analysis.site import analyze_site
from tasks.analysis.baselines import matched_gaussian
from tasks.stats.site import SiteStatistics
from tasks.analysis.verdict import verdict


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


def isotropic_site(tmp_path, seed: int, d: int, n: int, n_boot: int) -> tuple[np.ndarray, dict]:
    """20,000 isotropic Gaussian states in d dimensions as a site's corpus, its first n as the sample, each token
    its own document; returns the states and `analyze_site`'s result."""
    x = np.random.default_rng(seed).normal(size=(20_000, d))
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    r = analyze_site(0, "mlp_out", x[:n].astype(np.float32), {"doc": np.arange(n)}, bins=100, tile=512,
                     quantiles=(0.5,), store_root=str(tmp_path), save_samples=False, stats=stats.state(),
                     matched_seed=3, n_boot=n_boot)
    return x, r


def test_bootstrap_intervals_cover_the_truth(tmp_path):
    """Isotropic Gaussian tokens, each its own document: the mean cosine is 0 and the centred E[cos^2] equals the
    Gaussian prediction, so the 95 % intervals should contain 0 and 1; the point estimate is the histogram's."""
    from tasks.analysis.site import pair_moments_bootstrap
    from tasks.analysis.similarity import unit_rows

    n = 1000
    x, r = isotropic_site(tmp_path, seed=5, d=32, n=n, n_boot=200)
    raw, cen = r["variants"]["raw"], r["variants"]["centered"]
    assert raw["cos_mean_ci_low"] < 0 < raw["cos_mean_ci_high"]
    assert raw["cos_mean_ci_high"] - raw["cos_mean_ci_low"] < 0.02
    assert cen["cos2_over_gaussian_ci_low"] < 1 < cen["cos2_over_gaussian_ci_high"]
    boot = pair_moments_bootstrap(unit_rows(x[:n].astype(np.float32)).double().numpy(), np.arange(n), 10, 0)
    assert boot.estimate[0] == pytest.approx(raw["cos_mean"], abs=1e-6)
    assert boot.estimate[1] == pytest.approx(raw["cos_std"] ** 2 + raw["cos_mean"] ** 2, rel=1e-5)


def test_standardize_is_the_z_score_with_zero_for_constant_coordinates():
    from tasks.analysis.site import standardize

    rng = np.random.default_rng(7)
    x = rng.normal(size=(500, 5)) * [0.01, 1, 100, 3, 0] + [5, -2, 0, 1e3, 7]
    mean, std = x.mean(0), x.std(0)
    z = standardize(x, mean, std)
    expect = np.zeros_like(x)
    expect[:, :4] = (x[:, :4] - x[:, :4].mean(0)) / x[:, :4].std(0)
    np.testing.assert_allclose(z, expect, rtol=1e-5, atol=1e-5)
    assert z.dtype == np.float32


def test_standardized_variant_of_unequal_scales_is_isotropic(tmp_path):
    """Independent Gaussian coordinates with scales from 0.05 to 20 around an offset: raw (and centred) states
    follow a few large coordinates, so their cosines are far from the isotropic law at d = 64; z-scored with the
    corpus mean and standard deviation they are isotropic, so their law is the exact one (small W1, d_fit ~ 64),
    the correlation matrix predicts E[cos^2] = 1 / 64, and 1 / E[cos^2] ~ 64. The standardized row's cosines
    equal a brute-force computation on (x - mean) / std of the sample."""
    rng = np.random.default_rng(8)
    d = 64
    x = rng.normal(size=(20_000, d)) * np.geomspace(0.05, 20, d) + 2.0
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    r = analyze_site(0, "attn_out", x[:1500].astype(np.float32), {}, bins=100, tile=512, quantiles=(0.5,),
                     store_root=str(tmp_path), save_samples=False, stats=stats.state(), matched_seed=3)
    raw, cen, std_row = (r["variants"][name] for name in ("raw", "centered", "standardized"))
    assert raw["w1_gaussian"] > 0.05 and cen["d_fit"] < d / 3
    assert std_row["w1_gaussian"] < 0.01 and std_row["d_fit"] == pytest.approx(d, rel=0.1)
    assert std_row["ks_matched"] < 0.05 and std_row["cos2_over_gaussian"] == pytest.approx(1.0, abs=0.1)
    assert std_row["predicted_cos_var"] == pytest.approx(1 / d, rel=0.02)
    assert std_row["dim_inv_cos2"] == pytest.approx(d, rel=0.1)
    z = (x[:1500].astype(np.float32).astype(np.float64) - x.mean(0)) / x.std(0)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    i, j = np.triu_indices(len(u), k=1)
    cos = (u @ u.T)[i, j]
    assert std_row["cos_mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert std_row["cos_std"] == pytest.approx(cos.std(), rel=1e-5)


def test_inverse_mean_cos2_of_isotropic_gaussian_is_d(tmp_path):
    """E[cos^2] = 1 / d exactly for isotropic Gaussian pairs, so 1 / E[cos^2] of the sample's centred and
    standardized states is about d (1500 states: ~1 % error); null on the raw row, where the common direction
    would dominate it; its bootstrap interval (each token its own document) contains d."""
    d = 48
    x, r = isotropic_site(tmp_path, seed=9, d=d, n=1500, n_boot=100)
    for name in ("centered", "standardized"):
        v = r["variants"][name]
        assert v["dim_inv_cos2"] == pytest.approx(d, rel=0.05)
        assert v["dim_inv_cos2_ci_low"] < d < v["dim_inv_cos2_ci_high"]
        for measure in ("w1", "ks", "energy"):  # every distance has an interval, to both baselines
            for base in ("gaussian", "matched"):
                assert v[f"{measure}_{base}_ci_low"] <= v[f"{measure}_{base}_ci_high"]
    assert "dim_inv_cos2" not in r["variants"]["raw"]
    assert set(r["timings"]) == {"write", "corpus", "histogram", "bootstrap", "baselines", "intrinsic"}


def test_verdict_confident_reads_the_intervals():
    """Confident when every interval lies on one side of each threshold; not when one straddles it."""
    from tasks.analysis.verdict import RATIO_HIGH, verdict_confident

    raw = {"kurtosis_max": 1.0, "w1_gaussian": 0.1, "w1_gaussian_ci_low": 0.09, "w1_gaussian_ci_high": 0.11}
    inside = {"cos2_over_gaussian": 1.0, "cos2_over_gaussian_ci_low": 0.95, "cos2_over_gaussian_ci_high": 1.05,
              "ks_matched": 0.05, "ks_matched_ci_low": 0.04, "ks_matched_ci_high": 0.06}
    assert verdict(raw, inside) == "gaussian-shaped-low-dim" and verdict_confident(raw, inside) is True
    straddle = {**inside, "cos2_over_gaussian": RATIO_HIGH - 0.01, "cos2_over_gaussian_ci_high": RATIO_HIGH + 0.05}
    assert verdict(raw, straddle) == "gaussian-shaped-low-dim" and verdict_confident(raw, straddle) is False
    far = {**inside, "cos2_over_gaussian": 2.0, "cos2_over_gaussian_ci_low": 1.8, "cos2_over_gaussian_ci_high": 2.2}
    assert verdict(raw, far) == "non-gaussian" and verdict_confident(raw, far) is True
    near_w1 = {**raw, "w1_gaussian_ci_low": 0.01}  # the near-gaussian threshold (0.02) inside the W1 interval
    assert verdict_confident(near_w1, inside) is False
    assert verdict_confident({"kurtosis_max": 1.0, "w1_gaussian": 0.1}, inside) is None  # no intervals


def test_matched_gaussian_ignores_the_last_bits_of_the_statistics(tmp_path):
    """Statistics merged from partials grouped another way (another number of actors) differ in their last bits;
    the matched Gaussian's draws, hence its histograms and distances, must not follow them, in any variant. States
    with spreads over five decades and a large mean, where taking the root of the raw covariance loses the small
    coordinates in the large ones' rounding (the standardized variant's draws once did)."""
    rng = np.random.default_rng(5)
    x = rng.standard_t(6, size=(6000, 48)) * np.geomspace(1e-4, 10.0, 48) + rng.normal(0.0, 30.0, 48)
    one = SiteStatistics()
    one.add(torch.from_numpy(x))
    parts = []
    for chunk in np.array_split(x, 7):
        part = SiteStatistics()
        part.add(torch.from_numpy(chunk))
        parts.append(part)
    grouped = parts[6]
    for part in parts[:6]:
        grouped.merge(part)
    a, b = one.state(), grouped.state()
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # the premise: the same data, other last bits
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-9)
    results = [analyze_site(0, "resid_post", x[:1500].astype(np.float32), {}, bins=100, tile=512, quantiles=(0.5,),
                            store_root=str(tmp_path), save_samples=False, stats=s, matched_seed=3) for s in (a, b)]
    for variant in ("raw", "centered", "standardized"):
        r1, r2 = (r["variants"][variant] for r in results)
        assert np.array_equal(r1["matched_counts"], r2["matched_counts"]), variant
        assert r1["w1_matched"] == r2["w1_matched"] and r1["ks_matched"] == r2["ks_matched"], variant


def _summary_with_verdicts(r: dict) -> list[dict]:
    from tasks.report.results import add_verdicts, summary_row

    rows = [summary_row(r, variant, 1, 20_000, 0) for variant in r["variants"]]
    add_verdicts(rows)
    return rows


@pytest.mark.parametrize("n, n_docs", [(400, 1), (400, 19), (3, 3)], ids=["one document", "19 documents", "sample of 3"])
def test_intervals_from_too_few_documents_are_missing_and_not_confident(tmp_path, n, n_docs):
    """A bootstrap over fewer than MIN_BOOTSTRAP_DOCS documents (one document: every replicate is the sample itself,
    zero-width intervals; a sample of 3: NaN ends) supports no interval: every one is missing (None), and so is
    `verdict_confident`, however far the numbers sit from a threshold."""
    from tasks.analysis.site import MIN_BOOTSTRAP_DOCS

    assert n_docs < MIN_BOOTSTRAP_DOCS == 20
    x = np.random.default_rng(5).normal(size=(20_000, 64))
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    r = analyze_site(0, "mlp_out", x[:n].astype(np.float32), {"doc": np.arange(n) % n_docs}, bins=100, tile=512,
                     quantiles=(0.5,), store_root=str(tmp_path), save_samples=False, stats=stats.state(),
                     matched_seed=3, n_boot=20)
    for variant, v in r["variants"].items():
        ends = {k: val for k, val in v.items() if k.endswith(("_ci_low", "_ci_high"))}
        assert ends and all(val is None for val in ends.values()), (variant, ends)
    rows = _summary_with_verdicts(r)
    assert all(row["verdict"] is not None and row["verdict_confident"] is None for row in rows)
    assert all(row[f"{m}_{b}_ci_low"] is None for row in rows for m in ("w1", "ks", "energy") for b in ("gaussian", "matched"))


def test_enough_documents_keep_their_intervals(tmp_path):
    x = np.random.default_rng(5).normal(size=(20_000, 64))
    stats = SiteStatistics()
    stats.add(torch.from_numpy(x))
    r = analyze_site(0, "mlp_out", x[:400].astype(np.float32), {"doc": np.arange(400) % 20}, bins=100, tile=512,
                     quantiles=(0.5,), store_root=str(tmp_path), save_samples=False, stats=stats.state(),
                     matched_seed=3, n_boot=20)
    rows = _summary_with_verdicts(r)
    assert all(row["w1_gaussian_ci_low"] <= row["w1_gaussian_ci_high"] for row in rows)
    assert rows[0]["verdict_confident"] in (True, False)


def test_nan_interval_end_is_missing_and_not_confident():
    from tasks.analysis.site import drop_unsupported_intervals
    from tasks.analysis.verdict import verdict_confident

    numbers = {"w1_gaussian": 0.1, "w1_gaussian_ci_low": float("nan"), "w1_gaussian_ci_high": 0.2,
               "ks_matched": 0.01, "ks_matched_ci_low": 0.0, "ks_matched_ci_high": 0.02}
    drop_unsupported_intervals(numbers, n_docs=100)
    assert numbers["w1_gaussian_ci_low"] is None and numbers["w1_gaussian_ci_high"] is None
    assert numbers["ks_matched_ci_low"] == 0.0 and numbers["ks_matched_ci_high"] == 0.02
    raw = {"kurtosis_max": 1.0, "w1_gaussian": 0.005, "w1_gaussian_ci_low": float("nan"), "w1_gaussian_ci_high": 0.01}
    cen = {"cos2_over_gaussian": 1.0, "cos2_over_gaussian_ci_low": 0.99, "cos2_over_gaussian_ci_high": 1.01,
           "ks_matched": 0.01, "ks_matched_ci_low": 0.0, "ks_matched_ci_high": 0.02}
    assert verdict(raw, cen) == "near-gaussian" and verdict_confident(raw, cen) is None
