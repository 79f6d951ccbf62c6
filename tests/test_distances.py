"""Histogram distances against scipy on samples at the bin centres, and the document bootstrap against analytic
standard errors."""

import numpy as np
import pytest
from scipy import stats

import tasks.baselines
from tasks.baselines import law_probabilities
from tasks.distances import (
    document_bootstrap,
    energy_distance,
    ks_statistic,
    wasserstein1,
    weighted_document_bootstrap,
)
from tasks.similarity import bin_edges


def centres(bins: int) -> np.ndarray:
    e = bin_edges(bins)
    return (e[:-1] + e[1:]) / 2


def histograms(bins: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer counts of two different laws on the bins (a shifted, wider bump against the isotropic law)."""
    rng = np.random.default_rng(seed)
    p = rng.multinomial(5000, law_probabilities(12, bins))
    shifted = np.clip(rng.normal(0.15, 0.3, size=4000), -1, 1)
    q = np.histogram(shifted, bins=bin_edges(bins))[0]
    return p, q


def test_wasserstein1_is_the_baselines_one():
    assert wasserstein1 is tasks.baselines.wasserstein1


@pytest.mark.parametrize("bins,seed", [(20, 0), (200, 1)])
def test_distances_equal_scipy_on_bin_centres(bins, seed):
    p, q = histograms(bins, seed)
    c = centres(bins)
    # KS: the two-sample statistic of samples sitting at the centres, repeated by their counts.
    ks = stats.ks_2samp(np.repeat(c, p), np.repeat(c, q)).statistic
    assert ks_statistic(p, q) == pytest.approx(ks, rel=1e-12)
    assert energy_distance(p, q) == pytest.approx(stats.energy_distance(c, c, u_weights=p, v_weights=q), rel=1e-10)
    w1 = stats.wasserstein_distance(c, c, u_weights=p, v_weights=q)
    assert wasserstein1(p / p.sum(), q / q.sum()) == pytest.approx(w1, rel=1e-10)
    # Counts or probabilities give the same KS and energy distances.
    assert ks_statistic(p / p.sum(), q) == pytest.approx(ks_statistic(p, q), rel=1e-12)
    assert energy_distance(p / p.sum(), q) == pytest.approx(energy_distance(p, q), rel=1e-12)


def test_distances_of_identical_and_shifted_laws():
    p = law_probabilities(50, 200)
    assert ks_statistic(p, p) == 0.0
    assert energy_distance(p, p) == 0.0
    assert wasserstein1(p, p) == 0.0
    # A point mass moved by k bins: W1 = k * width, KS = 1, energy = sqrt(2 * k * width).
    a, b = np.zeros(200), np.zeros(200)
    a[50], b[57] = 1.0, 1.0
    assert wasserstein1(a, b) == pytest.approx(7 * 0.01)
    assert ks_statistic(a, b) == pytest.approx(1.0)
    assert energy_distance(a, b) == pytest.approx(np.sqrt(2 * 7 * 0.01))


def clustered_sample(n_docs: int, per_doc: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token values = document effect (sd 1) + token noise (sd 1); documents shuffled in the sample order."""
    rng = np.random.default_rng(seed)
    doc = np.repeat(np.arange(n_docs), per_doc)
    values = rng.standard_normal(n_docs)[doc] + rng.standard_normal(len(doc))
    perm = rng.permutation(len(doc))
    return 1000 + 7 * doc[perm], values[perm]  # arbitrary, non-contiguous ids


def test_document_bootstrap_matches_the_analytic_standard_error():
    """Mean of iid per-document values: the 95 % interval is +-1.96 SE with SE = sd(document means) / sqrt(D);
    a bootstrap over tokens (ignoring documents) would be ~2.1 times too narrow here."""
    n_docs, per_doc = 300, 8
    doc, values = clustered_sample(n_docs, per_doc, seed=0)
    res = document_bootstrap(lambda idx: values[idx].mean(), doc, n_boot=2000, seed=1)
    doc_means = np.bincount(np.unique(doc, return_inverse=True)[1], weights=values) / per_doc
    se = doc_means.std(ddof=1) / np.sqrt(n_docs)
    assert res.estimate == pytest.approx(values.mean())
    assert (res.high - res.low) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.2)
    assert res.standard_error / se == pytest.approx(1.0, abs=0.1)
    token_se = values.std(ddof=1) / np.sqrt(len(values))
    assert se > 2 * token_se
    assert (res.n_boot, res.n_docs, res.level) == (2000, n_docs, 0.95)


def test_document_bootstrap_is_deterministic_and_resamples_whole_documents():
    doc, values = clustered_sample(40, 5, seed=2)
    seen = []

    def stat(idx):
        seen.append(idx)
        return values[idx].mean()

    a = document_bootstrap(stat, doc, n_boot=50, seed=3)
    first = seen[:50]
    b = document_bootstrap(lambda idx: values[idx].mean(), doc, n_boot=50, seed=3)
    c = document_bootstrap(lambda idx: values[idx].mean(), doc, n_boot=50, seed=4)
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    for idx in first:  # every drawn document contributes all its tokens, k times if drawn k times
        assert len(idx) == 40 * 5
        times = np.unique(doc[idx], return_counts=True)[1]
        assert np.all(times % 5 == 0) and times.sum() == 200


def test_weighted_bootstrap_agrees_with_the_index_bootstrap():
    doc, values = clustered_sample(120, 6, seed=5)
    by_index = document_bootstrap(lambda idx: values[idx].mean(), doc, n_boot=300, seed=7)
    by_weight = weighted_document_bootstrap(lambda w: w @ values / w.sum(1), doc, n_boot=300, seed=7, max_entries=5000)
    for field in ("estimate", "low", "high", "standard_error"):
        assert getattr(by_weight, field) == pytest.approx(getattr(by_index, field), rel=1e-12)


def test_weighted_bootstrap_of_a_pair_statistic_with_vector_output():
    """Mean cosine over pairs of distinct tokens, weighted: (|sum w u|^2 - sum w^2) / ((sum w)^2 - sum w^2),
    for every replicate in one matrix product; documents share a direction, so tokens are not independent."""
    rng = np.random.default_rng(9)
    n_docs, per_doc, d = 60, 10, 16
    doc = np.repeat(np.arange(n_docs), per_doc)
    x = 0.8 * rng.standard_normal((n_docs, d))[doc] + rng.standard_normal((len(doc), d)) + 0.3
    u = x / np.linalg.norm(x, axis=1, keepdims=True)

    def mean_cos_and_norm(w):
        s = w @ u
        w2 = (w * w).sum(1)
        cos = ((s * s).sum(1) - w2) / (w.sum(1) ** 2 - w2)
        return np.stack([cos, w @ np.linalg.norm(x, axis=1) / w.sum(1)], axis=1)

    res = weighted_document_bootstrap(mean_cos_and_norm, doc, n_boot=500, seed=0)
    cos = (u @ u.T)[~np.eye(len(u), dtype=bool)].mean()
    assert res.estimate[0] == pytest.approx(cos, rel=1e-10)
    assert res.low.shape == (2,) and np.all(res.low < res.estimate) and np.all(res.estimate < res.high)
