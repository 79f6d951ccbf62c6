"""Single coordinates that dominate a site: exact per-coordinate shares of the all-pairs mean cosine and of the
variance, from the streaming sums over every token; no Ray, no I/O.

Why: a massive activation (Sun et al. 2024, "Massive Activations in Large Language Models") or an outlier
dimension (Kovaleva et al. 2021, "BERT Busters"; Timkey & van Schijndel 2021, "All Bark and No Bite: Rogue
Dimensions in Transformer Language Models") can make a whole site's cosine histogram the footprint of one
coordinate: the pairs share a direction because they share one huge neuron, not because their states are
anisotropic in general. Two exact decompositions say how much of a site one coordinate carries:

  mean cosine   for unit vectors u_i (i = 1..n), the mean over all ordered pairs of distinct states is
                    mean_{i != k} u_i . u_k = sum_j c_j,   c_j = ((sum_i u_ij)^2 - sum_i u_ij^2) / (n (n - 1)),
                a sum over coordinates, each c_j from the unit sums s_j = sum_i u_ij and sq_j = sum_i u_ij^2
                (`tasks.stats.second_order.UnitSums`), so c_j / mean cosine is coordinate j's exact share;
  variance      tr C = sum_j Var(x_j): coordinate j's share is Var(x_j) / sum_k Var(x_k) (the diagonal of the
                covariance over its trace, from the per-coordinate moments over every token).

The rule (`coordinate_dominates`): a coordinate dominates a site when it carries more than half of the variance,
or more than half of a mean cosine that is not negligible, that is at least 1 / sqrt(d) in absolute value (the
standard deviation of a single cosine under the isotropic law at width d: a smaller mean does not move the
histogram by a width of the law).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DOMINANT_SHARE = 0.5  # a coordinate dominates above half of the mean cosine or of the variance


def cosine_contributions(n: int, unit_sum: np.ndarray, unit_sq: np.ndarray) -> np.ndarray:
    """c_j = ((sum_i u_ij)^2 - sum_i u_ij^2) / (n (n - 1)) per coordinate j: coordinate j's term of the exact mean
    cosine over all n (n - 1) ordered pairs of distinct unit vectors; the terms sum to that mean
    (`tasks.analysis.dimension.mean_cosine`). NaN everywhere for n < 2."""
    s = np.asarray(unit_sum, dtype=np.float64)
    if n < 2:
        return np.full(s.shape, np.nan)
    return (s * s - np.asarray(unit_sq, dtype=np.float64)) / (float(n) * (n - 1))


def variance_shares(variance: np.ndarray) -> np.ndarray:
    """Var(x_j) / sum_k Var(x_k): each coordinate's share of the covariance trace (NaN if the trace is 0)."""
    v = np.asarray(variance, dtype=np.float64)
    total = float(v.sum())
    return v / total if total > 0 else np.full(v.shape, np.nan)


def coordinate_dominates(cos_share: float, var_share: float, mean_cos: float, d: int,
                         share: float = DOMINANT_SHARE) -> bool:
    """The rule: more than `share` of the variance, or more than `share` of a mean cosine with
    |mean_cos| >= 1 / sqrt(d). NaN shares never dominate."""
    by_var = bool(np.isfinite(var_share) and var_share > share)
    by_cos = bool(np.isfinite(cos_share) and np.isfinite(mean_cos) and abs(mean_cos) >= 1.0 / math.sqrt(d)
                  and cos_share > share)
    return by_var or by_cos


@dataclass(frozen=True)
class TopCoordinate:
    """The coordinate that carries the largest share of either the mean cosine or the variance of one site.

    coord        its index (0-based, the model's neuron order).
    cos_share    c_coord / mean cosine: its exact share of the all-pairs mean cosine (can exceed 1 or be negative
                 when other coordinates' terms are negative).
    var_share    Var(x_coord) / tr C: its share of the variance.
    dominates    `coordinate_dominates` of those shares.
    """

    coord: int
    cos_share: float
    var_share: float
    dominates: bool


def top_coordinate(contributions: np.ndarray, variance: np.ndarray, d: int | None = None) -> TopCoordinate:
    """The coordinate with the largest share of the mean cosine (sum of `contributions`) or of the variance,
    whichever share is larger, with both of its shares and the rule's answer (`d` defaults to the width)."""
    c = np.asarray(contributions, dtype=np.float64)
    mean_cos = float(c.sum())
    cos = c / mean_cos if mean_cos != 0 and np.isfinite(mean_cos) else np.full(c.shape, np.nan)
    var = variance_shares(variance)
    best = np.fmax(np.nan_to_num(cos, nan=-np.inf), np.nan_to_num(var, nan=-np.inf))
    j = int(np.argmax(best))
    width = len(c) if d is None else int(d)
    return TopCoordinate(coord=j, cos_share=float(cos[j]), var_share=float(var[j]),
                         dominates=coordinate_dominates(float(cos[j]), float(var[j]), mean_cos, width))
