"""Per-coordinate shares of the mean cosine and of the variance (tasks/analysis/coordinates.py) against a
brute-force all-pairs computation, fed through the streaming statistics the runs use, and the dominance rule on
planted and isotropic data."""

import numpy as np
import pytest

from tasks.analysis.coordinates import (
    coordinate_dominates,
    cosine_contributions,
    top_coordinate,
    variance_shares,
)
from tasks.analysis.dimension import mean_cosine
from tasks.stats.moments import Moments
from tasks.stats.second_order import UnitSums


def streamed(x: np.ndarray, parts: int = 3) -> tuple[UnitSums, Moments]:
    """UnitSums and Moments of x, each folded from `parts` batches merged pairwise, as the actors do."""
    units, moments = [], []
    for chunk in np.array_split(x, parts):
        u, m = UnitSums(), Moments()
        u.add(chunk.astype(np.float64))
        m.add(chunk.astype(np.float64))
        units.append(u)
        moments.append(m)
    for u, m in zip(units[1:], moments[1:]):
        units[0].merge(u)
        moments[0].merge(m)
    return units[0], moments[0]


def brute_force(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cosine over all ordered pairs i != k, each coordinate's term of it by an explicit pair sum, and each
    coordinate's share of the variance (two-pass variance)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(u)
    off = ~np.eye(n, dtype=bool)
    gram = u @ u.T
    mean = float(gram[off].sum() / (n * (n - 1)))
    terms = np.array([(np.outer(u[:, j], u[:, j])[off]).sum() / (n * (n - 1)) for j in range(u.shape[1])])
    var = ((x - x.mean(0)) ** 2).mean(0)
    return mean, terms, var / var.sum()


def planted(kind: str, n: int = 240, d: int = 48, coord: int = 7, seed: int = 0) -> np.ndarray:
    """Gaussian states with one planted large coordinate: a shared offset (`offset`: the mean cosine) or a few
    tokens with a huge value (`massive`: the variance, as a massive activation on the first tokens); or none."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    if kind == "offset":
        x[:, coord] += 6.0
    elif kind == "massive":
        x[: n // 40, coord] = 300.0
    return x


@pytest.mark.parametrize("kind", ["offset", "massive", "isotropic"])
def test_shares_equal_brute_force(kind):
    x = planted(kind)
    units, moments = streamed(x)
    mean, terms, var_share = brute_force(x)
    c = cosine_contributions(units.n, units.sum, units.sq)
    assert c.sum() == pytest.approx(mean, abs=1e-12)
    assert mean_cosine(units.n, units.sum, units.sq) == pytest.approx(mean, abs=1e-12)
    np.testing.assert_allclose(c, terms, rtol=0, atol=1e-12)
    np.testing.assert_allclose(variance_shares(moments.variance), var_share, rtol=0, atol=1e-12)
    top = top_coordinate(c, moments.variance)
    j = int(np.argmax(np.maximum(terms / mean, var_share)))
    assert top.coord == j
    assert top.cos_share == pytest.approx(terms[j] / mean, abs=1e-12)
    assert top.var_share == pytest.approx(var_share[j], abs=1e-12)


@pytest.mark.parametrize("kind, by", [("offset", "cos"), ("massive", "var")])
def test_rule_flags_the_planted_coordinate(kind, by):
    x = planted(kind)
    units, moments = streamed(x)
    top = top_coordinate(cosine_contributions(units.n, units.sum, units.sq), moments.variance)
    assert top.coord == 7 and top.dominates
    if by == "cos":
        assert top.cos_share > 0.5 and top.var_share < 0.1
    else:
        assert top.var_share > 0.5


def test_rule_spares_isotropic_states():
    for seed in range(5):
        x = planted("isotropic", seed=seed)
        units, moments = streamed(x)
        c = cosine_contributions(units.n, units.sum, units.sq)
        top = top_coordinate(c, moments.variance)
        assert not top.dominates
        # the mean cosine of isotropic states is ~0 (far below 1 / sqrt(d)), so however large a coordinate's
        # share of it, it does not count
        assert abs(c.sum()) < 1.0 / np.sqrt(x.shape[1])


def test_rule_thresholds():
    d = 100  # 1 / sqrt(d) = 0.1
    assert coordinate_dominates(0.9, 0.1, mean_cos=0.2, d=d)
    assert not coordinate_dominates(0.9, 0.1, mean_cos=0.05, d=d)  # a negligible mean cosine
    assert not coordinate_dominates(0.5, 0.5, mean_cos=0.2, d=d)  # more than half, not half
    assert coordinate_dominates(float("nan"), 0.51, mean_cos=float("nan"), d=d)
    assert not coordinate_dominates(float("nan"), float("nan"), mean_cos=0.3, d=d)
