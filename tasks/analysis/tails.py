"""Tails: per-coordinate excess kurtosis of the states, in the neuron basis and in the principal-component basis.

A Gaussian vector has excess kurtosis 0 along every direction; a Laplace coordinate has 3, and a coordinate that is
usually small but now and then huge ("rogue" dimensions) has hundreds. The neuron basis (the model's coordinates)
can hide heavy tails that lie along rotated directions: mixing many coordinates drives each one's kurtosis toward 0
(central limit theorem), so the same states are also read in the basis of their principal components (eigenvectors
of the corpus covariance), where a heavy-tailed direction with its own variance shows up as one component.

Estimator (both bases, the same one as `tasks.stats.moments.Moments` and `scipy.stats.kurtosis(bias=True)`):
    excess kurtosis = n sum (x - mean)^4 / (sum (x - mean)^2)^2 - 3.
For Gaussian data its sampling standard deviation is about sqrt(24 / n) (0.11 for n = 2000, 0.014 over 128k
tokens), so `KURTOSIS_SHARE_THRESHOLD` = 1.0 is 9 standard errors above 0 for a 2000-token sample: a Gaussian
coordinate essentially never passes it, while a Laplace-like one (3) always does. The threshold is a module
constant so that a changed rule is a visible change.
"""

from __future__ import annotations

import numpy as np

KURTOSIS_SHARE_THRESHOLD = 1.0  # excess kurtosis above which a coordinate counts as heavy-tailed (see above)
_RANK_TOL = 1e-10  # principal components with eigenvalue below this share of the largest have no direction to read


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
    """Excess kurtosis of every column of x (n, d) around the column's own mean (population moments, float64);
    NaN for a column with zero variance."""
    x = np.asarray(x, dtype=np.float64)
    dev = x - x.mean(0)
    dev2 = dev * dev
    m2 = dev2.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m2 > 0, len(x) * (dev2 * dev2).sum(0) / (m2 * m2) - 3.0, np.nan)


def kurtosis_summary(kurtosis: np.ndarray, threshold: float = KURTOSIS_SHARE_THRESHOLD) -> dict[str, float]:
    """Max, median and share above `threshold` of per-coordinate excess kurtosis, over its finite entries
    (coordinates without variance have none); NaN when no entry is finite."""
    k = np.asarray(kurtosis, dtype=np.float64)
    k = k[np.isfinite(k)]
    if k.size == 0:
        return {"max": float("nan"), "median": float("nan"), "share": float("nan")}
    return {"max": float(k.max()), "median": float(np.median(k)), "share": float(np.mean(k > threshold))}


def principal_components_kurtosis(sample: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Excess kurtosis of the sample's projections on each principal axis of the corpus covariance (descending
    eigenvalues): y = (x - corpus mean) V with V the eigenvectors (`numpy.linalg.eigh`), then `excess_kurtosis`
    of each column of y on the sample's n tokens (the axes come from every token, the fourth moments from the
    sample: a d x d x d x d statistic is out of reach for streaming). Axes with eigenvalue below 1e-10 of the
    largest carry only rounding and get NaN."""
    cov = np.asarray(covariance, dtype=np.float64)
    eig, vec = np.linalg.eigh((cov + cov.T) / 2.0)
    eig, vec = eig[::-1], vec[:, ::-1]
    y = (np.asarray(sample, dtype=np.float64) - np.asarray(mean, dtype=np.float64)) @ vec
    k = excess_kurtosis(y)
    k[eig <= _RANK_TOL * max(float(eig[0]), 0.0)] = np.nan
    return k
