"""The tiled cosine histogram and quantile pairs against brute force over the full pair matrix."""

import numpy as np
import pytest
import torch

from tasks.analysis.similarity import CosineHistogram, bin_index, cosine_histogram, quantile_pairs, unit_rows


def brute_force(x: np.ndarray, bins: int):
    """float64 cosines of all i < j, their bin counts (same rule: floor((c+1) bins/2), 1.0 in the last bin)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    i, j = np.triu_indices(len(x), k=1)
    cos = np.clip(c[i, j], -1, 1)
    idx = np.minimum(np.floor((cos + 1) * bins / 2).astype(int), bins - 1)
    return cos, i, j, np.bincount(idx, minlength=bins)


def near_edge(cos: np.ndarray, bins: int, eps: float = 1e-5) -> int:
    """How many pairs sit so close to a bin edge that float32 and float64 may bin them differently."""
    scaled = (cos + 1) * bins / 2
    return int((np.abs(scaled - np.round(scaled)) < eps * bins).sum())


@pytest.mark.parametrize("n,d,tile", [(300, 16, 64), (257, 64, 100), (50, 8, 1000), (400, 3, 7)])
def test_counts_match_brute_force(n, d, tile):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) + rng.normal(size=d)  # shifted, so cosines spread over many bins
    bins = 50
    cos, _, _, expected = brute_force(x, bins)
    hist = cosine_histogram(unit_rows(x), bins, tile)
    assert hist.counts.dtype == np.int64
    assert hist.n_pairs == n * (n - 1) // 2
    assert np.abs(hist.counts - expected).sum() <= 2 * near_edge(cos, bins)
    assert hist.mean == pytest.approx(cos.mean(), abs=1e-6)
    assert hist.std == pytest.approx(cos.std(), abs=1e-6)


def test_edges_of_the_range():
    # identical vectors (cos 1), opposite vectors (cos -1), orthogonal ones (cos 0)
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    hist = cosine_histogram(unit_rows(x), 4, 2)
    # pairs: (0,1)=1, (0,2)=-1, (0,3)=0, (1,2)=-1, (1,3)=0, (2,3)=0 -> bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert hist.counts.tolist() == [2, 0, 3, 1]
    assert bin_index(torch.tensor([-1.5, 1.5, 1.0, -1.0]), 4).tolist() == [0, 3, 3, 0]


def test_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.uniform(-1, 1, size=10_000).astype(np.float32))
    whole = CosineHistogram(30)
    whole.add(values)
    parts = [CosineHistogram(30) for _ in range(3)]
    for part, chunk in zip(parts, torch.tensor_split(values, [1234, 7000])):
        part.add(chunk)
    merged = CosineHistogram.load(parts[2].state()).merge(parts[0]).merge(parts[1])
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.total == pytest.approx(whole.total, rel=1e-12)
    assert merged.total_sq == pytest.approx(whole.total_sq, rel=1e-12)


@pytest.mark.parametrize("tile", [16, 1000])
def test_quantile_pairs_match_full_sort(tile, monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(120, 10)) + 0.3
    units = unit_rows(x)
    hist = cosine_histogram(units, 40, tile)
    qs = (0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0)
    # Brute force in the same float32 arithmetic, ordered by (bin, value, i, j).
    u = units.numpy()
    i, j = np.triu_indices(len(x), k=1)
    blocks = torch.from_numpy(u) @ torch.from_numpy(u).T
    cos = blocks.numpy()[i, j]
    b = bin_index(torch.from_numpy(cos), 40).numpy()
    order = np.lexsort((j, i, cos, b))
    for crowd_cap in (10**9, 50):  # second run forces the sub-binning path
        monkeypatch.setattr("tasks.analysis.similarity.COLLECT_CAP", crowd_cap)
        pairs = quantile_pairs(units, hist, qs, tile)
        for q, p in zip(qs, pairs):
            k = order[int(np.floor(q * (len(cos) - 1)))]
            assert (p.i, p.j) == (i[k], j[k]), (q, crowd_cap)
            assert p.cos == pytest.approx(float(cos[k]), abs=1e-6)
