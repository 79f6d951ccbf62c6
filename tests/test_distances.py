"""Histogram distances against scipy on samples at the bin centres, the document bootstrap against analytic
standard errors, and the bootstrap of the distances against brute-force weighted pair histograms and against the
spread of independent re-draws."""

import numpy as np
import pytest
from scipy import stats

import tasks.analysis.baselines
from tasks.analysis.baselines import law_probabilities
from tasks.analysis.distances import (
    baseline_counts,
    document_bootstrap,
    document_groups,
    energy_distance,
    histogram_distance_bootstrap,
    histogram_distances,
    ks_statistic,
    replicate_histograms,
    wasserstein1,
    weighted_document_bootstrap,
)
from tasks.analysis.similarity import (
    bin_edges,
    cosine_histogram,
    grouped_cosine_counts,
    unit_rows,
)


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
    assert wasserstein1 is tasks.analysis.baselines.wasserstein1


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


@pytest.mark.parametrize("cache", [True, False])
def test_pair_moments_bootstrap_equals_brute_force_weighted_pairs(cache, monkeypatch):
    """Mean cosine and mean squared cosine of every replicate (two row blocks of the Gram matrix, G o G kept or
    recomputed) against the full weighted pair sums: pairs across documents weigh m_a m_b, inside one m_a."""
    from tasks.analysis import site as analysis

    monkeypatch.setattr(analysis, "GRAM_CACHE_BYTES", 1 << 30 if cache else 0)
    x, doc = grouped_tokens(2100, 40, 5, seed=4)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = u @ u.T
    same = doc[:, None] == doc[None, :]
    off = ~np.eye(len(u), dtype=bool)

    def brute(w: np.ndarray) -> np.ndarray:
        out = []
        for row in w:
            pair = np.where(same, row[:, None], np.outer(row, row)) * off
            out.append([(pair * g).sum() / pair.sum(), (pair * g * g).sum() / pair.sum()])
        return np.array(out)

    got = analysis.pair_moments_bootstrap(u, doc, n_boot=12, seed=3)
    ref = weighted_document_bootstrap(brute, doc, n_boot=12, seed=3)
    for name in ("estimate", "low", "high", "standard_error"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# Bootstrap of the distances: replicate histograms from pair counts split by document groups


def grouped_tokens(n: int, n_docs: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of n_docs documents (ids arbitrary and unsorted), each document with its own direction."""
    rng = np.random.default_rng(seed)
    code = rng.integers(0, n_docs, n)
    x = 0.3 + 0.9 * rng.standard_normal((n_docs, d))[code] + rng.standard_normal((n, d))
    return x, 5000 - 13 * code


def brute_force_weighted_histogram(x: np.ndarray, unit: np.ndarray, m: np.ndarray, bins: int) -> np.ndarray:
    """Histogram of every pair i < j weighted m_a m_b across units a != b and m_a inside unit a, from the full
    float64 pair list and numpy's bincount. Asserts that no cosine lies within 3e-6 of a bin edge, where the
    float32 tiles (error ~1e-7 here) could round it into the neighbouring bin."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(u), k=1)
    scaled = (np.clip((u @ u.T)[i, j], -1, 1) + 1) * bins / 2
    assert np.all(np.abs(scaled - np.round(scaled)) > 3e-6 * bins / 2)
    weight = np.where(unit[i] == unit[j], m[unit[i]], m[unit[i]] * m[unit[j]])
    return np.bincount(np.minimum(np.floor(scaled).astype(int), bins - 1), weights=weight, minlength=bins)


@pytest.mark.parametrize("max_groups, bins, key_buffer, seed",
                         [(256, 20, 1 << 24, 11), (4, 20, 1 << 24, 11), (256, 100, 1000, 27)])
def test_replicate_histogram_equals_brute_force_weighted_pairs(max_groups, bins, key_buffer, seed, monkeypatch):
    """Exact integer equality, several tiles (diagonal and off-diagonal), documents grouped or not, with empty low
    and high bins (100 bins), and with the grouped counts' key buffer counted many times over (1000 keys)."""
    from tasks.analysis import similarity

    monkeypatch.setattr(similarity, "KEY_BUFFER", key_buffer)
    x, doc = grouped_tokens(150, 9, 6, seed=seed)
    unit = np.searchsorted(np.unique(doc), doc) % max_groups  # the resampling unit of each token, by hand
    groups = document_groups(doc, max_groups)
    assert np.array_equal(groups, unit)
    n_units = unit.max() + 1
    hist = similarity.CosineHistogram(bins)
    counts = grouped_cosine_counts(unit_rows(x), groups, n_units, bins, tile=64, hist=hist)
    single = cosine_histogram(unit_rows(x), bins, tile=64)  # the same pass's histogram, to the bit
    assert np.array_equal(hist.counts, single.counts) and (hist.total, hist.total_sq) == (single.total, single.total_sq)
    rng = np.random.default_rng(3)
    m = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=5).astype(float)  # bootstrap-like draws
    got = replicate_histograms(counts, m)
    assert bins < 100 or (got[:, [0, -1]] == 0).all()  # the 100-bin case has an empty bin at both ends
    for r in range(len(m)):
        assert np.array_equal(got[r], brute_force_weighted_histogram(x, unit, m[r], bins))
    # With every multiplicity 1, the replicate is the ordinary histogram (the tiled code's own counts).
    ones = replicate_histograms(counts, np.ones((1, n_units)))[0]
    assert np.array_equal(ones, cosine_histogram(unit_rows(x), bins, tile=64).counts)
    assert np.array_equal(ones, brute_force_weighted_histogram(x, unit, np.ones(n_units), bins))


def test_batched_distances_equal_scipy():
    bins = 40
    p, q = histograms(bins, seed=4)
    rows = np.stack([p, q, p + q])
    got = histogram_distances(rows, q)
    c = centres(bins)
    for r, row in enumerate(rows):
        assert got[r, 0] == pytest.approx(stats.wasserstein_distance(c, c, row, q), rel=1e-10, abs=1e-15)
        assert got[r, 1] == pytest.approx(stats.ks_2samp(np.repeat(c, row), np.repeat(c, q)).statistic, abs=1e-12)
        assert got[r, 2] == pytest.approx(stats.energy_distance(c, c, row, q), rel=1e-10, abs=1e-15)


def test_distance_bootstrap_uses_the_mean_cosine_draws_and_holds_its_estimate():
    """With at most DOCUMENT_GROUPS documents the resampling units are the documents themselves, so a bootstrap
    keyed on the groups draws exactly what one keyed on the document ids draws (the mean-cosine interval's)."""
    x, doc = grouped_tokens(300, 40, 5, seed=12)
    values = x[:, 0]
    by_doc = weighted_document_bootstrap(lambda w: w @ values / w.sum(1), doc, n_boot=100, seed=6)
    by_group = weighted_document_bootstrap(lambda w: w @ values / w.sum(1), document_groups(doc), n_boot=100, seed=6)
    assert (by_doc.low, by_doc.high, by_doc.standard_error) == (by_group.low, by_group.high, by_group.standard_error)
    bins = 30
    units = unit_rows(x)
    exact = law_probabilities(5, bins)
    hist = cosine_histogram(units, bins, tile=128).counts
    res = histogram_distance_bootstrap(units, doc, [exact, hist[::-1]], bins, tile=128, n_boot=100, seed=6)
    assert res.estimate.shape == (2, 3) and res.n_docs == 40
    for b, q in enumerate((exact, hist[::-1])):
        expect = [wasserstein1(hist / hist.sum(), q / q.sum()), ks_statistic(hist, q), energy_distance(hist, q)]
        np.testing.assert_allclose(res.estimate[b], expect, rtol=1e-10)
    assert np.all(res.low <= res.high)


def test_bootstrap_standard_error_of_w1_matches_its_spread_over_redraws():
    """Frequentist check: 50 documents of 16 correlated tokens in d = 8. The document bootstrap's standard error
    of W1 (to the isotropic law), averaged over 4 data sets, is within a factor 1.5 of the standard deviation of W1
    over 120 independent re-draws of the whole data set (measured ratio ~1.0; a token bootstrap would be far too
    narrow, since tokens of a document share its direction)."""
    n_docs, per_doc, d, bins = 50, 16, 8, 50
    exact = law_probabilities(d, bins)

    def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        doc = np.repeat(np.arange(n_docs), per_doc)
        return 0.4 + 0.8 * rng.standard_normal((n_docs, d))[doc] + rng.standard_normal((len(doc), d)), doc

    w1 = []
    i, j = np.triu_indices(n_docs * per_doc, k=1)
    for seed in range(120):  # the re-draws' histograms by numpy on the full pair list
        x, _ = draw(seed)
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        counts = np.histogram((u @ u.T)[i, j], bins=bin_edges(bins))[0]
        w1.append(wasserstein1(counts / counts.sum(), exact))
    spread = np.std(w1, ddof=1)
    se = [histogram_distance_bootstrap(unit_rows(x), doc, [exact], bins, 1024, n_boot=300, seed=0).standard_error[0, 0]
          for x, doc in (draw(1000 + k) for k in range(4))]
    assert 1 / 1.5 < np.mean(se) / spread < 1.5, (np.mean(se), spread)


def test_resampled_baseline_sample_widens_the_interval_to_the_seed_to_seed_spread():
    """Frequentist check with a baseline that is itself a sample (the matched Gaussian's draws): W1 between the data
    and an independent Gaussian sample varies over re-draws of both; the bootstrap that also resamples the baseline
    sample has a standard error within a factor 1.5 of that spread, while holding the baseline fixed is narrower.
    The estimate is the distance to the baseline sample's full histogram (computed here by numpy in float64)."""
    n_docs, per_doc, d, bins = 50, 16, 8, 50
    n = n_docs * per_doc
    i, j = np.triu_indices(n, k=1)

    def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        doc = np.repeat(np.arange(n_docs), per_doc)
        return 0.4 + 0.8 * rng.standard_normal((n_docs, d))[doc] + rng.standard_normal((n, d)), doc

    def gaussian(seed: int) -> np.ndarray:  # the "matched" sample: iid draws of a Gaussian with a similar spread
        return 0.4 + np.random.default_rng(seed).standard_normal((n, d)) * 1.28

    def hist(x: np.ndarray) -> np.ndarray:
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.histogram((u @ u.T)[i, j], bins=bin_edges(bins))[0]

    spread = np.std([wasserstein1(hist(data(s)[0]) / len(i), hist(gaussian(10_000 + s)) / len(i))
                     for s in range(120)], ddof=1)
    resampled, fixed = [], []
    for k in range(4):
        x, doc = data(1000 + k)
        g = gaussian(20_000 + k)
        both = histogram_distance_bootstrap(unit_rows(x), doc, [unit_rows(g)], bins, 1024, n_boot=300, seed=0)
        held = histogram_distance_bootstrap(unit_rows(x), doc, [hist(g)], bins, 1024, n_boot=300, seed=0)
        if k == 0:  # the baseline given as its grouped counts and the data's counts passed in: the same interval
            groups = document_groups(doc)
            counts = grouped_cosine_counts(unit_rows(x), groups, groups.max() + 1, bins, 1024)
            given = histogram_distance_bootstrap(unit_rows(x), doc, [baseline_counts(unit_rows(g), bins, 1024)], bins,
                                                 1024, n_boot=300, seed=0, counts=counts)
            assert np.array_equal(given.low, both.low) and np.array_equal(given.high, both.high)
        # float32 unit rows against numpy's float64 cosines: only pairs at bin edges may differ
        assert both.estimate[0, 0] == pytest.approx(wasserstein1(hist(x) / len(i), hist(g) / len(i)), rel=1e-3)
        resampled.append(both.standard_error[0, 0])
        fixed.append(held.standard_error[0, 0])
    assert 1 / 1.5 < np.mean(resampled) / spread < 1.5, (np.mean(resampled), spread)
    assert np.mean(fixed) < np.mean(resampled)


def test_large_bins_keep_only_the_non_empty_cells_with_the_same_intervals(monkeypatch):
    """Past DENSE_CELLS (a large similarity.bins) the grouped pair counts keep only their non-empty cells: at most
    one per pair, not groups^2 x bins; the replicate histograms and the bootstrap intervals (data and resampled
    matched sample, replicates in several chunks) are the dense path's to the bit."""
    import torch

    from tasks.analysis import distances, similarity

    bins = 20000
    x, doc = grouped_tokens(150, 9, 6, seed=5)
    units = unit_rows(x)
    groups = document_groups(doc)
    n_units = int(groups.max()) + 1
    dense = grouped_cosine_counts(units, groups, n_units, bins, tile=64)
    hist = similarity.CosineHistogram(bins)
    sparse = grouped_cosine_counts(units, groups, n_units, bins, tile=64, hist=hist, max_dense=0)
    assert isinstance(sparse, similarity.SparseGroupedCounts)
    assert len(sparse.keys) <= len(x) * (len(x) - 1) // 2 < dense.size
    assert np.array_equal(sparse.total(), dense.sum((0, 1))) and np.array_equal(hist.counts, dense.sum((0, 1)))
    m = np.random.default_rng(3).multinomial(n_units, np.full(n_units, 1 / n_units), size=7).astype(float)
    assert np.array_equal(replicate_histograms(sparse, m), replicate_histograms(dense, m))
    matched = unit_rows(torch.randn(len(x), x.shape[1], generator=torch.Generator().manual_seed(1)))
    baselines = [law_probabilities(6, bins), matched]
    want = histogram_distance_bootstrap(units, doc, baselines, bins, 64, n_boot=50, seed=2, counts=dense)
    monkeypatch.setattr(similarity, "DENSE_CELLS", 0)  # the matched sample's counts sparse too
    monkeypatch.setattr(distances, "REPLICATE_ENTRIES", 7 * bins)  # replicates 7 at a time
    got = histogram_distance_bootstrap(units, doc, baselines, bins, 64, n_boot=50, seed=2, counts=sparse)
    for field in ("estimate", "low", "high", "standard_error"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field


def test_site_task_memory_does_not_grow_with_bins():
    """A demo-sized site (300 states) at similarity.bins=20000 fits in 3 GiB of address space (it needed over
    6 GiB when the grouped pair counts were dense: groups^2 x bins; bench/site_memory.py for 100000)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "bench" / "site_memory.py"), "--worker", str(root), "--n", "300",
                          "--d", "64", "--bins", "20000", "--limit-gb", "3"], capture_output=True, text=True, timeout=600)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], result
