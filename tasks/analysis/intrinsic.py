"""Intrinsic dimension of a site's sampled states by nearest-neighbour estimators, with document-bootstrap intervals.

The nonlinear counterpart of the linear and distributional dimensions (`d_fit`, the participation ratio): how many
coordinates the states' manifold needs locally, from the ratios of distances to a state's nearest neighbours.

  TwoNN   (Facco et al. 2017, Sci. Rep. 7, 12140): mu = r2 / r1 follows a Pareto(1, d) law on a d-manifold of
          locally uniform density; d is the slope of -log(1 - F(mu)) against log mu, fitted through the origin
          after the largest 10 % of the ratios are set aside (the paper's heuristic, scikit-dimension's default).
  GRIDE   (Denti et al. 2022, Sci. Rep. 12, 20005): the maximum-likelihood d of mu = r_{n2} / r_{n1}, whose law is
          known for any n1 < n2; at (n1, n2) = GRIDE_SCALE it looks past the nearest neighbour, which is less
          sensitive to near-duplicates and short-scale noise than TwoNN (the estimator of Valeriani et al. 2023 and
          Cheng et al. 2025 for the depth profiles of transformer states).

Both come from scikit-dimension (`skdim`); here only their inputs are prepared. Exact duplicate states are removed
first (a token repeated in the sample, or a context that gives one state twice: r1 = 0 makes mu infinite), keeping
the first copy. Each remaining state's neighbour distances are taken once in the whole deduplicated sample (float64,
as `skdim` does, by scikit-learn's exact search), and the bootstrap resamples documents, each drawn document bringing
its states' neighbour distances: both estimators are functions of the per-state ratios, so a replicate is one call of
each on the drawn rows, with no new neighbour search and no duplicates invented by the resampling.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from tasks.analysis.distances import document_bootstrap

log = logging.getLogger(__name__)

ESTIMATORS = ("twonn", "gride")  # the summary columns id_twonn, id_gride and their _ci_low / _ci_high
GRIDE_SCALE = (2, 4)  # (n1, n2): r_4 / r_2, past the nearest neighbour (near-duplicates), still local (curvature)
MIN_STATES = 3 * GRIDE_SCALE[1]  # fewer distinct states than this give no estimate (reported missing)
# Most bootstrap replicates: each calls both estimators (5 to 7 ms together at n = 2000, mostly the libraries'
# per-call overhead), so the bootstrap, not the neighbour search, would dominate the intrinsic dimension's cost at
# the default 200; these are the first MAX_BOOT of the other intervals' draws (same seed, same documents).
MAX_BOOT = 100


def unique_states(vectors: np.ndarray, docs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample without its exact duplicate rows (the first copy of each kept, in sample order), and the
    documents of the rows kept."""
    x = np.ascontiguousarray(vectors)
    _, first = np.unique(x, axis=0, return_index=True)
    keep = np.sort(first)
    return x[keep], (None if docs is None else np.asarray(docs)[keep])


def neighbour_distances(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) Euclidean distances of each row to its 1st .. k-th nearest other row, ascending, in float64, by
    scikit-learn's exact search (what `skdim` runs inside its estimators)."""
    from sklearn.neighbors import NearestNeighbors

    dists, _ = NearestNeighbors(n_neighbors=k).fit(np.asarray(x, dtype=np.float64)).kneighbors()
    return dists


def estimates(dists: np.ndarray) -> np.ndarray:
    """(TwoNN, GRIDE) from rows of `neighbour_distances` (any subset or resample of them), by `skdim`; NaN for an
    estimator that cannot fit them (too few ratios left once ties are dropped), which leaves the estimate, or
    an interval built on it, missing rather than failing the site's task."""
    import skdim
    import sklearn
    from skdim.id._GRIDE import _gride  # GRIDE's likelihood on given distances: `GRIDE.fit` would search again

    fits = (lambda: skdim.id.TwoNN(dist=True).fit(dists[:, :2]).dimension_,
            lambda: _gride(dists, *GRIDE_SCALE)[0])
    out = np.full(len(fits), np.nan)
    # Distances of finite states are finite: scikit-learn's per-call checks (most of a replicate's time) are skipped.
    with warnings.catch_warnings(), sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        warnings.simplefilter("ignore")  # skdim warns on the ties it drops; the caller counts them
        for i, fit in enumerate(fits):
            try:
                out[i] = fit()
            except (ValueError, IndexError, ArithmeticError) as exc:  # skdim's failures on degenerate ratios
                log.debug("intrinsic dimension: %s", exc)
    return out


def intrinsic_dimension(vectors: np.ndarray, docs: np.ndarray | None = None, n_boot: int = 0, seed: int = 0) -> dict:
    """`id_twonn` and `id_gride` of the sampled states (n x d) and, with their documents and n_boot > 0, their 95 %
    document-bootstrap intervals (`id_*_ci_low`, `id_*_ci_high`) from min(n_boot, MAX_BOOT) replicates, the first
    of the other intervals' draws for the same seed and documents. Missing (None) with fewer than MIN_STATES
    distinct states."""
    x, kept_docs = unique_states(vectors, docs)
    out: dict = {f"id_{name}": None for name in ESTIMATORS}
    if len(x) < MIN_STATES:
        log.warning("intrinsic dimension: %d distinct states, fewer than %d; reported missing", len(x), MIN_STATES)
        return out
    dists = neighbour_distances(x, GRIDE_SCALE[1])
    ties = int(np.sum(dists[:, 0] == 0))
    if ties:
        log.info("intrinsic dimension: %d states at distance 0 from another after deduplication (rounding); "
                 "the estimators drop their ratios", ties)
    if kept_docs is not None and n_boot > 0:
        boot = document_bootstrap(lambda rows: estimates(dists[rows]), kept_docs, n_boot=min(n_boot, MAX_BOOT),
                                  seed=seed)
        values = boot.estimate
        for i, name in enumerate(ESTIMATORS):
            out[f"id_{name}_ci_low"], out[f"id_{name}_ci_high"] = float(boot.low[i]), float(boot.high[i])
    else:
        values = estimates(dists)
    for i, name in enumerate(ESTIMATORS):
        out[f"id_{name}"] = float(values[i]) if np.isfinite(values[i]) else None
    return out
