"""Baselines: what the cosine histogram would be if the states were isotropic Gaussian vectors.

Stage 5 of the data flow. For two independent vectors drawn from N(0, I_d), the cosine t of their angle has
(1 + t) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2) (the uniform law on the sphere; e.g. Cai, Fan & Jiang 2013,
"Distributions of angles in random packing on spheres"). `scipy.stats.beta` gives its CDF exactly, so each bin's
probability is a CDF difference rather than a midpoint approximation. Three baselines per site:
  `gaussian_exact`     the law at d = the model width,
  `gaussian_fit`       the law at the real d > 1 that best fits the data (the seed's dimension slider as a
                       number): the maximum-likelihood d for the binned data,
  `gaussian_empirical` N random normal vectors through the same tiled code (the seed's baseline), a check on
                       the exact law and on the histogram code.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import optimize, stats

from tasks.analysis.similarity import CosineHistogram, bin_edges, cosine_histogram, unit_rows
from tasks.errors import UserError

BINS_PER_STD = 2  # bins across one standard deviation (1 / sqrt(d)) of the isotropic law, at least


def min_bins(d: int) -> int:
    """The fewest equal bins on [-1, 1] that resolve the isotropic law's width at d: a bin (2 / bins wide) no
    wider than half its standard deviation 1 / sqrt(d), so bins >= 4 sqrt(d) (32 at d = 64, 111 at 768, 160 at
    1600). On coarser bins the data and every baseline fall into the same few bins around 0 and every distance
    reads about 0 whatever the states are (one bin: exactly 0), so no verdict could rest on them."""
    return int(np.ceil(2.0 * BINS_PER_STD * np.sqrt(d)))


def check_bins(bins: int, d: int) -> None:
    """Refuse `similarity.bins` too coarse for the model width d (`min_bins`), with one line saying the minimum."""
    if bins < min_bins(d):
        raise UserError(f"similarity.bins={bins} is too coarse for d_model={d}: the cosine histogram cannot resolve "
                        f"the Gaussian baseline's width 1/sqrt(d); set similarity.bins to at least {min_bins(d)}")


def law_log_probabilities(d: float | np.ndarray, bins: int, used: np.ndarray | None = None) -> np.ndarray:
    """Log probability of each of `bins` equal bins on [-1, 1] under the isotropic law in dimension d (> 1);
    for an array of dimensions, one row per dimension (shape d.shape + (bins,)), in one evaluation. With `used`
    (a bool mask of the bins), only those bins' columns, and only their edges are evaluated: a fine histogram of
    a small sample leaves most bins empty, and the maximum-likelihood fit needs the others only.

    Computed from the tail nearer to each bin (log CDF below 0, log survival above), so the far tails keep
    their relative precision instead of rounding to 0 as a plain CDF difference does at large d. Each function
    is evaluated at the edges where it is used and nowhere else (the incomplete beta function is most of the
    cost of a fit).
    """
    a = (np.asarray(d, dtype=np.float64)[..., None] - 1.0) / 2.0
    x = (bin_edges(bins) + 1.0) / 2.0
    upper = (x[:-1] + x[1:]) > 1.0
    wanted = np.ones(bins, dtype=bool) if used is None else np.asarray(used, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Lower half: P = CDF(hi) - CDF(lo); upper half: P = SF(lo) - SF(hi). Same formula by symmetry.
        tails = []
        for func, half in ((stats.beta.logcdf, ~upper), (stats.beta.logsf, upper)):
            rows = np.flatnonzero(wanted & half)
            edges = np.union1d(rows, rows + 1)
            values = np.full(a.shape[:-1] + (bins + 1,), np.nan)
            values[..., edges] = func(x[edges], a, a)
            tails.append(values)
        log_cdf, log_sf = tails
        near = np.where(upper, log_sf[..., :-1], log_cdf[..., 1:])[..., wanted]
        far = np.where(upper, log_sf[..., 1:], log_cdf[..., :-1])[..., wanted]
        out = near + np.log1p(-np.exp(far - near))
    return np.where(np.isfinite(out), out, -np.inf)


def law_probabilities(d: float, bins: int) -> np.ndarray:
    """Probability of each of `bins` equal bins on [-1, 1] under the isotropic law in dimension d (> 1)."""
    return np.exp(law_log_probabilities(d, bins))


def wasserstein1(p: np.ndarray, q: np.ndarray) -> float:
    """Wasserstein-1 distance, in cosine units, between two distributions given as probabilities of the same
    equal bins on [-1, 1] (mass placed at bin resolution): the L1 distance of their CDFs times the bin width."""
    width = 2.0 / len(p)
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * width)


def fit_dimension(counts: np.ndarray, d_max: float) -> float:
    """Maximum-likelihood dimension: the real d in [1.1, d_max] whose isotropic law gives the binned data the
    highest multinomial likelihood (equivalently, the least KL divergence from the data histogram to the law).

    Likelihood rather than a CDF distance because the law is centred at 0 while real states are not: every
    centred law stochastically below the data is at the same Wasserstein-1 distance (the mean gap), so W1 cannot
    pick a d, while the likelihood matches the law's spread to the data's typical |cos|. A log-spaced grid finds
    the basin; a bounded scalar search refines it.
    """
    counts = np.asarray(counts, dtype=np.float64)
    bins = len(counts)
    used = counts > 0

    def nll(log_d: float) -> float:
        logp = law_log_probabilities(float(np.exp(log_d)), bins, used)
        return float(-(counts[used] * np.maximum(logp, -1e300)).sum())

    # The law is an exponential family in (d - 3) / 2 (density ~ (1 - c^2)^((d - 3) / 2)), so the likelihood has
    # one basin: a coarse grid (spacing ~0.2 in log d) is enough to bracket it.
    grid = np.linspace(np.log(1.1), np.log(d_max), 48)
    logp = law_log_probabilities(np.exp(grid), bins, used)  # the whole grid in one evaluation
    losses = -(counts[used] * np.maximum(logp, -1e300)).sum(axis=1)
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    log_d = float(res.x) if res.fun <= losses[best] else float(grid[best])
    return float(np.exp(log_d))


def empirical_gaussian(n: int, d: int, seed: int, bins: int, tile: int, device: str = "cpu") -> CosineHistogram:
    """Histogram of n standard normal vectors in d dimensions (seeded), through the same tiled code as the data."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn(n, d, generator=gen, dtype=torch.float32)
    return cosine_histogram(unit_rows(x, device), bins, tile)


def matched_gaussian(mean: np.ndarray, covariance: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n draws from N(mean, covariance) (float32), seeded: the `gaussian_matched` baseline's states. Run through
    the same histogram code as the data, they separate "shaped covariance" (the data looks like these) from "not
    Gaussian at all" (heavy tails, clusters, varying norms make the data differ even from these)."""
    return (matched_deviations(covariance, n, seed) + np.asarray(mean, np.float64)).astype(np.float32)


def matched_deviations(covariance: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The same draws less their mean, in float64: `matched_gaussian`'s states before the mean is added. A variant
    that removes the mean again (centred, standardised) starts from these: subtracting a mean from float32 draws
    that hold it cancels their leading digits, and makes the result follow the mean's last bits, which depend on how
    the statistics' partials were grouped (so on the number of actors)."""
    eig, vec = np.linalg.eigh(np.asarray(covariance, np.float64))
    root = vec * np.sqrt(np.clip(eig, 0.0, None))  # root @ root.T == covariance
    z = np.random.default_rng(seed).standard_normal((n, len(eig)))
    return z @ root.T
