"""Dimension estimators: how many directions the states use, from streaming sums.

Pure functions of float64 numpy arrays that the streaming statistics produce (count n, mean, covariance with
divisor n - 1, sum of unit vectors s = sum_i u_i, and second moment of unit vectors M = U^T U = sum_i u_i u_i^T);
no Ray, no I/O. Four views of "dimension", which agree for isotropic Gaussian data and disagree informatively
otherwise:

  all-pairs cosine moments  exact mean and mean square of cos(u_i, u_j) over all ordered pairs i != j of the raw
                            states, from s and M alone (no pair loop),
  participation ratio       PR = (sum lambda)^2 / sum lambda^2 of the covariance spectrum, raw and corrected for
                            the finite-sample bias of the sample covariance (Gaussian unbiased trace estimators),
  components for variance   how many principal components hold 90 / 95 / 99 % of the variance,
  1 / E[cos^2]              the dimension an isotropic law would need to give the same cosine spread (exactly d for
                            isotropic data in d dimensions), together with the exact E[cos^2] = Var(cos) of N(0, S)
                            for the measured covariance S, by a 1-D integral over its eigenvalues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import special

log = logging.getLogger(__name__)

_STEP = 0.125  # step in u = log t of the trapezoid rule in `gaussian_direction_weights` (error ~ exp(-pi^2/h))
_T_MIN = 1e-18  # lower end of the t-integral (t * sum(lambda) units): the part below it is < 2 * T_MIN relative
_LOG_TAIL = np.log(1e-18)  # nodes where prod (1 + 2 t lambda_j)^(-1/2) is below this are dropped
_BLOCK = 1 << 22  # most (node, eigenvalue) entries held at once


def mean_cosine(n: int, unit_sum: np.ndarray, unit_sq: np.ndarray | float) -> float:
    """Exact mean cosine over all n (n - 1) ordered pairs of distinct states, from s = sum_i u_i of their unit
    vectors and the per-coordinate sums of squares sq_k = sum_i u_ik^2 (or their total, sum_i |u_i|^2):
        sum_{i != j} u_i . u_j = |s|^2 - sum_i |u_i|^2.
    A zero state adds 0 to both sums (but counts in n). Ordered and unordered pairs give the same mean."""
    if n < 2:
        raise ValueError(f"all-pairs cosine needs n >= 2 states, got {n}")
    s = np.asarray(unit_sum, dtype=np.float64)
    return (float(s @ s) - float(np.sum(unit_sq))) / (float(n) * (n - 1))


def mean_squared_cosine(n: int, unit_second_moment: np.ndarray) -> float:
    """Exact mean squared cosine over all n (n - 1) ordered pairs of distinct unit-norm states, from
    M = U^T U = sum_i u_i u_i^T: sum_{i != j} (u_i . u_j)^2 = tr(M^2) - n = ||M||_F^2 - n. With float64 sums,
    cancelling the n diagonal terms costs an absolute error of about 1e-16 / n: negligible."""
    if n < 2:
        raise ValueError(f"all-pairs cosine needs n >= 2 states, got {n}")
    m = np.asarray(unit_second_moment, dtype=np.float64)
    return (float(np.einsum("ij,ij->", m, m)) - n) / (float(n) * (n - 1))


def all_pairs_cosine(n: int, unit_sum: np.ndarray, unit_second_moment: np.ndarray) -> tuple[float, float]:
    """Exact mean cosine and mean squared cosine over all n (n - 1) ordered pairs of n distinct unit-norm states
    (`mean_cosine` and `mean_squared_cosine` of the same states; |u_i|^2 = 1 is the diagonal of M)."""
    return (mean_cosine(n, unit_sum, np.trace(np.asarray(unit_second_moment, dtype=np.float64))),
            mean_squared_cosine(n, unit_second_moment))


def covariance_spectrum(covariance: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix, descending, with round-off negatives set to 0."""
    cov = np.asarray(covariance, dtype=np.float64)
    eig = np.linalg.eigvalsh((cov + cov.T) / 2.0)[::-1]
    return np.clip(eig, 0.0, None)


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """Raw participation ratio (sum lambda)^2 / sum lambda^2 = (tr S)^2 / tr(S^2): d for an isotropic spectrum in
    d dimensions, 1 for a single direction. Of a sample covariance it is biased low (see the corrected version)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return float(lam.sum() ** 2 / np.sum(lam * lam))


def unbiased_trace_moments(
    trace: np.ndarray | float, trace_of_square: np.ndarray | float, dof: int
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Unbiased estimators of (tr S)^2 and tr(S^2) from a Gaussian sample covariance, given (tr S_hat, tr S_hat^2).

    If S_hat = W / m with W ~ Wishart_d(S, m) (n Gaussian observations, mean removed, divisor n - 1: m = n - 1),
    writing W = sum_k z_k z_k^T with z_k iid N(0, S) and using E|z|^4 = (tr S)^2 + 2 tr S^2 and
    E(z_k . z_l)^2 = tr S^2 (k != l):
        E[(tr S_hat)^2] = (tr S)^2 + 2 tr(S^2) / m,
        E[tr(S_hat^2)]  = (tr S)^2 / m + (m + 1) tr(S^2) / m.
    Inverting this 2 x 2 linear system gives, with A = (tr S_hat)^2 and B = tr(S_hat^2),
        tr(S^2)   ~  m (m B - A) / ((m - 1)(m + 2))        (Srivastava 2005, J. Japan Statist. Soc. 35),
        (tr S)^2  ~  m ((m + 1) A - 2 B) / ((m - 1)(m + 2)),
    both unbiased for Gaussian data, both >= 0 (B <= A always, and B >= A / m since S_hat has rank <= m).
    Vectorised over arrays of traces. For heavy-tailed (non-Gaussian) data they are only approximately unbiased.
    """
    m = float(dof)
    if m <= 1:
        raise ValueError(f"the unbiased trace moments need more than 1 degree of freedom, got {dof}")
    a = np.asarray(trace, dtype=np.float64) ** 2
    b = np.asarray(trace_of_square, dtype=np.float64)
    scale = m / ((m - 1.0) * (m + 2.0))
    return scale * ((m + 1.0) * a - 2.0 * b), scale * (m * b - a)


def participation_ratio_corrected(eigenvalues: np.ndarray, n: int, dof: int | None = None) -> float:
    """Participation ratio of the population covariance estimated from the spectrum of a sample covariance of n
    observations: the ratio of the unbiased estimators of (tr S)^2 and tr(S^2) (`unbiased_trace_moments`),
        PR_corrected = ((m + 1) A - 2 B) / (m B - A),    A = (sum lambda)^2, B = sum lambda^2,  m = dof = n - 1.

    The raw ratio A / B has E ~ d / (1 + d / m) for isotropic data (half of d when n ~ d), because the sample
    spectrum spreads (Marchenko-Pastur); this one is consistent when d and n grow together. A ratio of unbiased
    estimators keeps a second-order bias of about Var(tr S^2 estimate) / (tr S^2)^2 (+0.9 % for five strong spikes
    at n = 300, far less for a flat spectrum), and sampling noise can put it above the number of dimensions; it is
    not clipped. `dof` is n - 1 for a covariance with the mean removed, n if the true mean (0) was used.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    m = float(n - 1 if dof is None else dof)
    a, b = float(lam.sum()) ** 2, float(np.sum(lam * lam))
    denom = m * b - a
    if denom <= 0:
        return float("inf")  # a sample covariance exactly isotropic on its rank: no spread left to correct
    return float(((m + 1.0) * a - 2.0 * b) / denom)


def components_for_variance(
    eigenvalues: np.ndarray, fractions: tuple[float, ...] = (0.9, 0.95, 0.99)
) -> tuple[int, ...]:
    """Smallest number k of principal components whose k largest eigenvalues hold at least each fraction of the
    total variance (one k per fraction). A relative tolerance of 1e-12 keeps exact fractions (e.g. 0.9 of the
    variance in the first eigenvalue) from being missed by rounding in the cumulative sum."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    share = np.cumsum(lam) / lam.sum()
    k = np.searchsorted(share, np.asarray(fractions, dtype=np.float64) - 1e-12, side="left") + 1
    return tuple(int(v) for v in np.minimum(k, len(lam)))


def inverse_mean_cos2_dimension(mean_cos2: float) -> float:
    """1 / E[cos^2]: the dimension of the isotropic law with the same mean squared cosine. For independent
    directions uniform on the sphere S^{d-1}, E[cos^2] = 1 / d exactly (E[cos] = 0, Var = 1 / d), so this is d
    for isotropic data; for data with a common direction (E[cos] != 0) it also absorbs the mean."""
    return float(1.0 / mean_cos2)


def gaussian_direction_weights(eigenvalues: np.ndarray) -> np.ndarray:
    """w_i = E[x_i^2 / |x|^2] for x ~ N(0, diag(lambda)): the expected share of the squared norm on each axis.

    With 1 / |x|^2 = int_0^inf exp(-t |x|^2) dt and the Gaussian integrals E[exp(-t x_j^2)] = (1 + 2 t l_j)^(-1/2),
    E[x_i^2 exp(-t x_i^2)] = l_i (1 + 2 t l_i)^(-3/2):
        w_i = int_0^inf  l_i / (1 + 2 t l_i)  *  prod_j (1 + 2 t l_j)^(-1/2)  dt.
    Computed on u = log t by the trapezoid rule, vectorised over i: the integrand in u is analytic in a strip
    around the real axis and decays exponentially at both ends, where the trapezoid rule converges geometrically
    (Trefethen & Weideman 2014, "The exponentially convergent trapezoidal rule", SIAM Review 56); step 1/8 leaves
    an error far below 1e-15 (checked against scipy.integrate.quad in the tests, and on spectra spread over many
    decades, where quad's adaptive search misses the slow tail that the log-spaced nodes follow). The
    product is taken as a sum of log1p, and the sum over nodes as scipy's logsumexp (stable in log space, so
    that tiny eigenvalues keep their relative precision instead of underflowing). The weights sum to 1 exactly in
    theory; the sum is checked. Zero eigenvalues get weight 0; the scale of the spectrum does not matter.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or np.any(lam < 0) or not np.all(np.isfinite(lam)) or lam.sum() <= 0:
        raise ValueError("eigenvalues must be a finite, non-negative 1-D array with a positive sum")
    out = np.zeros_like(lam)
    pos = lam > 0
    lam = lam[pos] / lam.sum()  # t in units of 1 / tr S
    # Upper end: prod_j (1 + 2 t l_j)^(-1/2) <= (1 + 2 t l_max)^(-1/2) and l_max >= 1 / d, so t = d * 1e36 is past
    # every tail; nodes whose product is already below 1e-18 are dropped below.
    u = np.arange(np.log(_T_MIN), np.log(len(lam) * 1e36), _STEP)
    t = np.exp(u)
    rows = max(1, _BLOCK // len(lam))
    log_prod = np.concatenate(
        [-0.5 * np.log1p(2.0 * t[k : k + rows, None] * lam[None, :]).sum(axis=1) for k in range(0, len(t), rows)]
    )
    keep = log_prod > _LOG_TAIL
    u, t, log_prod = u[keep], t[keep], log_prod[keep]
    cols = max(1, _BLOCK // len(t))
    log_w = np.concatenate(
        [
            special.logsumexp(
                (u + log_prod)[:, None] + np.log(block)[None, :] - np.log1p(2.0 * t[:, None] * block[None, :]),
                axis=0,
            )
            for block in (lam[k : k + cols] for k in range(0, len(lam), cols))
        ]
    )
    w = np.exp(log_w + np.log(_STEP))
    total = float(w.sum())
    if abs(total - 1.0) > 1e-9:
        log.warning("Gaussian direction weights sum to %.12f instead of 1 (spectrum of %d values)", total, len(lam))
    out[pos] = w
    return out


def gaussian_cosine_variance(eigenvalues: np.ndarray) -> float:
    """Exact Var(cos) = E[cos^2] of the angle between two independent x, y ~ N(0, S), from S's eigenvalues.

    In S's eigenbasis, (x . y)^2 = sum_{i, j} x_i y_i x_j y_j; x and y are independent, and E[x_i x_j / |x|^2] = 0
    for i != j (flip the sign of x_i), so
        E[cos^2] = sum_i E[x_i^2 / |x|^2] E[y_i^2 / |y|^2] = sum_i w_i^2       (`gaussian_direction_weights`),
    and E[cos] = 0 by the same symmetry, so this is the variance. Closed forms: 1 / d for S = I_d; in 2-D,
    w_1 = sqrt(l_1) / (sqrt(l_1) + sqrt(l_2)). The familiar 1 / PR = sum l^2 / (sum l)^2 is the leading order
    (w_i ~ l_i / tr S, replacing |x|^2 by its mean); it overestimates E[cos^2] whenever a few directions dominate,
    because a large x_i also makes |x|^2 large, which pulls w_i below l_i / tr S.
    """
    w = gaussian_direction_weights(eigenvalues)
    return float(np.sum(w * w))


def standardized_covariance(covariance: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Covariance of the states after each coordinate is divided by `std`: D^-1/2 S D^-1/2 with D = diag(std^2),
    the correlation matrix when std is the square root of S's diagonal (up to a constant factor when std uses
    another divisor, which no cosine sees). Coordinates with std 0 are mapped to 0 by the standardisation, so
    their rows and columns are 0 here. Its eigenvalues in `gaussian_cosine_variance` give the exact E[cos^2] of
    the standardised states if they were Gaussian."""
    cov = np.asarray(covariance, dtype=np.float64)
    inv = inverse_std(std)
    return cov * inv[:, None] * inv[None, :]


def inverse_std(std: np.ndarray) -> np.ndarray:
    """1 / std per coordinate (float64), and 0 where std is 0 (a coordinate constant over the corpus)."""
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)


@dataclass(frozen=True)
class DimensionReport:
    """Dimension estimates of one (layer, site) from its streaming sums. All numbers are dimensionless.

    n, d                  states seen and their width.
    pr_raw                (tr C)^2 / tr(C^2) of the sample covariance C of the states (mean removed).
    pr_corrected          the same for the population covariance, from the Gaussian unbiased estimators of
                          (tr S)^2 and tr(S^2) with m = n - 1 (`participation_ratio_corrected`).
    pc90, pc95, pc99      principal components needed for 90, 95, 99 % of the variance of C.
    predicted_cos_var     exact Var(cos) = E[cos^2] between two independent draws of N(0, C): what the centred
                          states' cosine spread would be if they were Gaussian with their measured covariance (the
                          exact E[cos^2] of centred states cannot be had from these sums: normalising after
                          centring needs every state).
    predicted_dimension   1 / predicted_cos_var: the isotropic dimension with the same cosine spread (<= d). It
                          differs from pr_raw: 1 / PR is only the leading order of E[cos^2].
    mean_cos, mean_cos2   exact mean cosine and mean squared cosine over all pairs of distinct raw (uncentred)
                          states, from the sums of unit vectors.
    cos_var               mean_cos2 - mean_cos^2: the variance of the cosine over those pairs.
    inverse_mean_cos2     1 / mean_cos2 (d for isotropic data; includes the common direction, if any).
    mean_share            |mean|^2 / (|mean|^2 + tr C): share of the states' mean squared norm (up to the factor
                          (n - 1) / n on tr C) that lies in their common mean vector.
    top_eig_share         lambda_1 / tr C: the share of the variance on the first principal direction (next to a
                          single coordinate's share, `tasks.analysis.coordinates`, it says whether that direction
                          is an axis of the neuron basis).
    """

    n: int
    d: int
    pr_raw: float
    pr_corrected: float
    pc90: int
    pc95: int
    pc99: int
    predicted_cos_var: float
    predicted_dimension: float
    mean_cos: float
    mean_cos2: float
    cos_var: float
    inverse_mean_cos2: float
    mean_share: float
    top_eig_share: float


def dimension_report(
    n: int,
    mean: np.ndarray,
    covariance: np.ndarray,
    mean_cos: float,
    mean_cos2: float,
) -> DimensionReport:
    """Bundle the estimators for one site: `covariance` of n states, with the mean removed and divisor n - 1
    (d x d), their `mean` (d,), and the all-pairs mean cosine and mean squared cosine (`mean_cosine`,
    `mean_squared_cosine`; the streaming statistics may take them over more tokens than the covariance)."""
    mean = np.asarray(mean, dtype=np.float64)
    lam = covariance_spectrum(covariance)
    pc90, pc95, pc99 = components_for_variance(lam, (0.9, 0.95, 0.99))
    cos_var_pred = gaussian_cosine_variance(lam)
    mean_sq = float(mean @ mean)
    return DimensionReport(
        n=int(n),
        d=len(lam),
        pr_raw=participation_ratio(lam),
        pr_corrected=participation_ratio_corrected(lam, n),
        pc90=pc90,
        pc95=pc95,
        pc99=pc99,
        predicted_cos_var=cos_var_pred,
        predicted_dimension=1.0 / cos_var_pred,
        mean_cos=mean_cos,
        mean_cos2=mean_cos2,
        cos_var=mean_cos2 - mean_cos**2,
        inverse_mean_cos2=inverse_mean_cos2_dimension(mean_cos2),
        mean_share=mean_sq / (mean_sq + float(lam.sum())),
        top_eig_share=float(lam[0] / lam.sum()) if lam.sum() > 0 else float("nan"),
    )
