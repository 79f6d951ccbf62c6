"""Distances between a data cosine histogram and a baseline on the same equal bins of [-1, 1], and confidence
intervals by a bootstrap over documents (issue 3).

All three distances treat each bin's mass as sitting at bin resolution (a point mass at the bin centre), so that
they equal the distances between the two weighted samples of bin centres that scipy computes (the tests check
this): with F, G the cumulative probabilities at the right edges of the bins and w = 2 / bins the bin width,
    Wasserstein-1   sum_k |F_k - G_k| * w                   (cosine units; `tasks.baselines.wasserstein1`),
    Kolmogorov      max_k |F_k - G_k|                       (probability units),
    energy          sqrt(2 * sum_k (F_k - G_k)^2 * w)       (sqrt of cosine units; Szekely & Rizzo 2013:
                                                             D^2 = 2 E|X-Y| - E|X-X'| - E|Y-Y'| = 2 int (F-G)^2).
W1 weighs a shift by how far it moves mass, KS only sees the largest CDF gap, and energy sits between them.

The bootstrap resamples documents, not tokens or pairs: tokens of one document are correlated, and every pair
statistic shares each token with n - 1 pairs, so only whole documents are close to independent units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.baselines import wasserstein1

__all__ = [
    "BootstrapInterval",
    "document_bootstrap",
    "energy_distance",
    "ks_statistic",
    "wasserstein1",
    "weighted_document_bootstrap",
]


def _cdf_gap(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """F - G at the right edge of every bin, after normalising p and q (counts or probabilities) to sum 1."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"histograms must be 1-D on the same bins, got shapes {p.shape} and {q.shape}")
    return np.cumsum(p / p.sum()) - np.cumsum(q / q.sum())


def ks_statistic(p: np.ndarray, q: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic max |F - G| over the bin edges (the CDFs only move at bins, so the maximum
    over all x is reached at an edge). p, q: counts or probabilities of the same bins."""
    return float(np.max(np.abs(_cdf_gap(p, q))))


def energy_distance(p: np.ndarray, q: np.ndarray) -> float:
    """1-D energy distance sqrt(2 int (F - G)^2 dx) between two binned laws on [-1, 1], mass at the bin centres:
    F - G is constant between consecutive centres (one bin width apart), so the integral is a sum. Equals
    `scipy.stats.energy_distance(centres, centres, p, q)`. p, q: counts or probabilities of the same bins."""
    gap = _cdf_gap(p, q)
    width = 2.0 / len(gap)
    return float(np.sqrt(2.0 * width * np.sum(gap * gap)))


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval of a statistic (scalar or array, element-wise) over resampled documents.

    estimate        the statistic on the whole sample,
    low, high       the (1 - level) / 2 and (1 + level) / 2 percentiles of the replicates,
    standard_error  the standard deviation of the replicates,
    level, n_boot, n_docs   the settings and the number of documents resampled in each replicate.
    """

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    standard_error: float | np.ndarray
    level: float
    n_boot: int
    n_docs: int


def _document_draws(doc_ids: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Document code of every token (0 .. D - 1) and the documents drawn, (n_boot, D) with replacement. Both
    bootstrap functions use these same draws, so for the same seed they see the same resamples."""
    doc_ids = np.asarray(doc_ids)
    if doc_ids.ndim != 1 or len(doc_ids) == 0:
        raise ValueError("doc_ids must be a non-empty 1-D array (one document id per token)")
    _, codes = np.unique(doc_ids, return_inverse=True)
    n_docs = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_docs, size=(n_boot, n_docs))
    return codes.reshape(-1), draws


def _interval(estimate, replicates: np.ndarray, level: float, n_docs: int) -> BootstrapInterval:
    lo, hi = np.percentile(replicates, [50.0 * (1.0 - level), 50.0 * (1.0 + level)], axis=0)
    se = replicates.std(axis=0, ddof=1)

    def out(x):
        return float(x) if np.ndim(x) == 0 else np.asarray(x)

    return BootstrapInterval(out(estimate), out(lo), out(hi), out(se), float(level), len(replicates), n_docs)


def document_bootstrap(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    doc_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Percentile interval of `statistic` by resampling documents with replacement (deterministic for a seed).

    `doc_ids` gives the document of each token of the sample (any hashable values). Each replicate draws as many
    documents as there are, with replacement, and calls `statistic(indices)` with the token indices of all drawn
    documents, a document drawn k times contributing its tokens k times; the estimate is
    `statistic(arange(n_tokens))`. The indices of a replicate are built without a loop over documents or tokens
    (tokens grouped by document once, then one repeat/arange gather); the statistic is called once per replicate,
    since it is an arbitrary function. When it is a weighted sum (a mean, sums of unit vectors, histogram counts),
    `weighted_document_bootstrap` computes all replicates in one call instead.

    A pair statistic on repeated indices sees pairs of a token with its own copy (cosine 1): exclude them in the
    statistic if they should not count (the weighted form makes that easy: drop the sum of w_i^2 terms).
    """
    codes, draws = _document_draws(doc_ids, n_boot, seed)
    order = np.argsort(codes, kind="stable")  # tokens grouped by document, in sample order within one
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    replicates = []
    for chosen in draws:
        lengths = sizes[chosen]
        shift = np.repeat(starts[chosen] - (np.cumsum(lengths) - lengths), lengths)
        replicates.append(np.asarray(statistic(order[np.arange(int(lengths.sum())) + shift]), dtype=np.float64))
    estimate = statistic(np.arange(len(codes)))
    return _interval(estimate, np.stack(replicates), level, len(sizes))


def weighted_document_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    doc_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_entries: int = 1 << 25,
) -> BootstrapInterval:
    """The document bootstrap with all replicates at once: `statistic(weights)` takes a (k, n_tokens) float64
    matrix whose row r holds each token's multiplicity in replicate r (the number of times its document was
    drawn) and returns k values (shape (k,) or (k, ...)); e.g. a weighted mean is `weights @ x / weights.sum(1)`,
    one matrix product for every replicate. The estimate uses weights of 1. Same draws as `document_bootstrap`
    for the same seed, so the two agree on statistics that are weighted sums. Replicates are passed in chunks of
    at most `max_entries` weights.
    """
    codes, draws = _document_draws(doc_ids, n_boot, seed)
    n_docs = draws.shape[1]
    # Multiplicity of every document in every replicate: one bincount over (replicate, document) cells.
    flat = (draws + n_docs * np.arange(n_boot)[:, None]).reshape(-1)
    counts = np.bincount(flat, minlength=n_boot * n_docs).reshape(n_boot, n_docs).astype(np.float64)
    rows = max(1, max_entries // len(codes))
    replicates = np.concatenate(
        [np.asarray(statistic(counts[k : k + rows][:, codes]), dtype=np.float64) for k in range(0, n_boot, rows)]
    )
    estimate = np.asarray(statistic(np.ones((1, len(codes)))), dtype=np.float64)[0]
    return _interval(estimate, replicates, level, n_docs)
