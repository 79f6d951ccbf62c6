"""Distances between a data cosine histogram and a baseline on the same equal bins of [-1, 1], and confidence
intervals by a bootstrap over documents.

All three distances treat each bin's mass as sitting at bin resolution (a point mass at the bin centre), so that
they equal the distances between the two weighted samples of bin centres that scipy computes (the tests check
this): with F, G the cumulative probabilities at the right edges of the bins and w = 2 / bins the bin width,
    Wasserstein-1   sum_k |F_k - G_k| * w                   (cosine units; `tasks.analysis.baselines.wasserstein1`),
    Kolmogorov      max_k |F_k - G_k|                       (probability units),
    energy          sqrt(2 * sum_k (F_k - G_k)^2 * w)       (sqrt of cosine units; Szekely & Rizzo 2013:
                                                             D^2 = 2 E|X-Y| - E|X-X'| - E|Y-Y'| = 2 int (F-G)^2).
W1 weighs a shift by how far it moves mass, KS only sees the largest CDF gap, and energy sits between them.

The bootstrap resamples documents, not tokens or pairs: tokens of one document are correlated, and every pair
statistic shares each token with n - 1 pairs, so only whole documents are close to independent units. The
distances themselves get intervals from replicate histograms (`histogram_distance_bootstrap`): pair counts split
by the documents of the two tokens are counted once, and every replicate's histogram is a weighted sum of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tasks.analysis.baselines import wasserstein1
from tasks.analysis.similarity import SparseGroupedCounts, grouped_cosine_counts

__all__ = [
    "DISTANCES",
    "DOCUMENT_GROUPS",
    "BootstrapInterval",
    "document_bootstrap",
    "document_groups",
    "energy_distance",
    "baseline_counts",
    "histogram_distance_bootstrap",
    "histogram_distances",
    "ks_statistic",
    "replicate_histograms",
    "wasserstein1",
    "weighted_document_bootstrap",
]

DOCUMENT_GROUPS = 256  # most resampling units of the distance bootstrap (memory: DOCUMENT_GROUPS^2 * bins counts,
# or, past `tasks.analysis.similarity.DENSE_CELLS`, one count per non-empty cell: at most one per pair)
REPLICATE_ENTRIES = 1 << 22  # most (replicate x bin) entries of replicate histograms held at once (32 MiB float64)
DISTANCES = ("w1", "ks", "energy")  # the order of `histogram_distances`' last axis


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


def histogram_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """W1, KS and energy distance (in that order, `DISTANCES`) from each histogram in p (..., bins) to q (bins,) or
    to the matching row of q (..., bins), vectorised over the leading axes; the same formulas as `wasserstein1`,
    `ks_statistic`, `energy_distance`. p and q are counts or probabilities; each row is normalised to sum 1."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"histograms must be on the same bins, got shapes {p.shape} and {q.shape}")
    gap = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1) - np.cumsum(q / q.sum(-1, keepdims=True), axis=-1)
    width = 2.0 / q.shape[-1]
    return np.stack(
        [np.abs(gap).sum(-1) * width, np.abs(gap).max(-1), np.sqrt(2.0 * width * (gap * gap).sum(-1))], axis=-1
    )


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


def _multiplicities(draws: np.ndarray) -> np.ndarray:
    """(n_boot, D) draws of units 0 .. D - 1 -> how often each unit was drawn in each replicate (float64), by one
    bincount over (replicate, unit) cells."""
    n_boot, n_units = draws.shape
    flat = (draws + n_units * np.arange(n_boot)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)


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
    counts = _multiplicities(draws)
    rows = max(1, max_entries // len(codes))
    replicates = np.concatenate(
        [np.asarray(statistic(counts[k : k + rows][:, codes]), dtype=np.float64) for k in range(0, n_boot, rows)]
    )
    estimate = np.asarray(statistic(np.ones((1, len(codes)))), dtype=np.float64)[0]
    return _interval(estimate, replicates, level, n_docs)


def document_groups(doc_ids: np.ndarray, max_groups: int = DOCUMENT_GROUPS) -> np.ndarray:
    """Resampling unit of every token: its document's code (0 .. D - 1, in sorted order of the ids, as
    `_document_draws` numbers them) when there are at most `max_groups` documents, else that code modulo
    `max_groups`. A group of whole documents is still an independent unit (documents are), so a bootstrap over
    groups is valid, only coarser: with D <= max_groups it is the document bootstrap itself, with the same draws
    for the same seed."""
    _, codes = np.unique(np.asarray(doc_ids), return_inverse=True)
    codes = codes.reshape(-1)
    return codes if int(codes.max()) < max_groups else codes % max_groups


def replicate_histograms(counts: np.ndarray | SparseGroupedCounts, multiplicity: np.ndarray,
                         max_entries: int = 1 << 23) -> np.ndarray:
    """Histograms of resampled data from the grouped pair counts C[a, b, k] (`grouped_cosine_counts`) and the
    multiplicities m (k_rep, G) of the groups in each replicate:
        H_k = sum_{a != b} m_a m_b C[a, b, k] + sum_a m_a C[a, a, k],
    pairs between two drawn groups counted once per combination of their copies, pairs inside a group once per
    copy (the convention of `tasks.analysis.site.pair_moments_bootstrap`: a replicate invents no within-group pairs).
    All replicates at once: X = m @ C (one GEMM over a), H = sum_b X[., b, .] m_b, minus (m^2 - m) C[a, a, .].
    float64 throughout; the result is exact integers while every partial sum stays below 2^53 (pair counts
    times m^2, far beyond any sample). Replicates in chunks of at most `max_entries` entries of X. Given the counts
    as their non-empty cells (`SparseGroupedCounts`), the same sums over those cells only (the same integers)."""
    if isinstance(counts, SparseGroupedCounts):
        return _sparse_replicate_histograms(counts, multiplicity, max_entries)
    c = np.asarray(counts, dtype=np.float64)
    m = np.asarray(multiplicity, dtype=np.float64)
    g, _, bins = c.shape
    # only the bins some pair falls in (cosines crowd a narrow range): the others stay 0 in every replicate
    used = np.flatnonzero(c.reshape(-1, bins).any(axis=0))
    lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
    width = hi - lo
    flat = np.ascontiguousarray(c[:, :, lo:hi]).reshape(g, g * width)
    diag = c[np.arange(g), np.arange(g), lo:hi]  # (G, width): pairs inside each group
    rows = max(1, max_entries // max(g * width, 1))
    out = np.zeros((len(m), bins))
    for r in range(0, len(m), rows):
        mr = m[r : r + rows]
        x = (mr @ flat).reshape(len(mr), g, width)
        out[r : r + rows, lo:hi] = np.einsum("rbk,rb->rk", x, mr) - (mr * mr - mr) @ diag
    return out


def _sparse_replicate_histograms(counts: SparseGroupedCounts, multiplicity: np.ndarray, max_entries: int) -> np.ndarray:
    """`replicate_histograms` over the non-empty cells: each (a, b) pair of groups that has a cell gets its weight
    m_a m_b (m_a when a = b) per replicate, and H = W @ S with S the sparse (group pairs x bins) counts."""
    from scipy import sparse

    m = np.asarray(multiplicity, dtype=np.float64)
    g, bins = counts.n_groups, counts.bins
    pair, k = np.divmod(counts.keys, bins)
    used, row = np.unique(pair, return_inverse=True)  # the group pairs with at least one cell
    a, b = np.divmod(used, g)
    s = sparse.csr_matrix((counts.counts.astype(np.float64), (row.reshape(-1), k)), shape=(len(used), bins))
    diagonal = a == b
    out = np.zeros((len(m), bins))
    rows = max(1, max_entries // max(len(used), 1))
    for r in range(0, len(m), rows):
        mr = m[r : r + rows]
        w = mr[:, a] * mr[:, b]
        w[:, diagonal] = mr[:, a[diagonal]]
        out[r : r + rows] = np.asarray(s.T @ w.T).T
    return out


BASELINE_GROUPS = 128  # resampling units of a baseline sample (iid tokens, so any grouping is valid)


def histogram_distance_bootstrap(
    units: torch.Tensor,
    doc_ids: np.ndarray,
    baselines: list[np.ndarray | torch.Tensor],
    bins: int,
    tile: int,
    n_boot: int,
    seed: int,
    max_groups: int = DOCUMENT_GROUPS,
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> BootstrapInterval:
    """Document-bootstrap intervals of the distances (W1, KS, energy) from the cosine histogram of the unit rows
    `units` to each baseline histogram (probabilities or counts on the same bins): the interval's arrays have
    shape (len(baselines), 3), in `DISTANCES` order.

    The tokens' pair counts are split once by the groups of their documents (`document_groups`, at most
    `max_groups`: memory max_groups^2 * bins), then every replicate histogram is a weighted sum of the cells
    (`replicate_histograms`), so the cost is one extra tile pass plus one GEMM, not one histogram per replicate.
    The replicates come from `weighted_document_bootstrap` with the groups as documents: with at most
    `max_groups` documents they are the same draws (same seed) as the mean-cosine interval's.

    `counts`: the tokens' grouped pair counts if already made (`grouped_cosine_counts` over `document_groups(doc_ids,
    max_groups)`, as `tasks.analysis.site.sample_numbers` does in the pass that makes its histogram).

    A baseline given as a histogram (a 1-D array: the exact law) is held fixed. A baseline given as the unit rows of
    a sample (a tensor: the matched Gaussian's draws, independent tokens), or as their grouped pair counts
    (`baseline_counts`, a 3-D array), is resampled too, by the same scheme with `BASELINE_GROUPS` groups of its
    tokens and an independent stream of draws, so that the interval covers its noise as well: a new seed draws a
    new baseline sample, and an interval that held it fixed would be about sqrt(2) too narrow for the seed-to-seed
    spread. A percentile interval of a distance is biased upward where the distance is
    near 0 (resampling noise adds distance), so there it may lie above the estimate.
    """
    groups = document_groups(doc_ids, max_groups)
    n_groups = int(groups.max()) + 1
    if counts is None:
        counts = grouped_cosine_counts(units, groups, n_groups, bins, tile)
    if not isinstance(counts, SparseGroupedCounts):
        counts = counts.astype(np.float64)  # once, not per replicate call
    first = np.unique(groups, return_index=True)[1]  # one token of each group: its weight is the group's m
    refs = [_baseline_replicates(b, bins, tile, n_boot, seed, i) for i, b in enumerate(baselines)]
    done = 0  # replicates handed out so far: `weighted_document_bootstrap` asks for them in order, then the estimate
    chunk = max(1, REPLICATE_ENTRIES // bins)  # replicate histograms at once: memory bounded whatever `bins`

    def statistic(weights: np.ndarray) -> np.ndarray:
        nonlocal done
        parts = []
        for r in range(0, len(weights), chunk):
            w = weights[r : r + chunk]
            hist = replicate_histograms(counts, w[:, first])
            rows = slice(done, done + len(w)) if done < n_boot else None  # None: the estimate
            done += len(w)
            parts.append(np.stack([histogram_distances(hist, ref(rows)) for ref in refs], axis=1))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return weighted_document_bootstrap(statistic, groups, n_boot=n_boot, seed=seed, level=level)


def _baseline_replicates(baseline: np.ndarray | torch.Tensor, bins: int, tile: int, n_boot: int, seed: int, index: int):
    """A function of a slice of replicates (None: the estimate) giving the baseline histogram(s) to compare with:
    the fixed histogram itself, or for a baseline sample, its resampled histograms (`replicate_histograms` over
    `BASELINE_GROUPS` groups of its iid tokens, drawn from their own seeded stream)."""
    if not isinstance(baseline, torch.Tensor) and np.ndim(baseline) == 1:
        fixed = np.asarray(baseline, dtype=np.float64)
        return lambda rows: fixed
    grouped = baseline_counts(baseline, bins, tile) if isinstance(baseline, torch.Tensor) else baseline
    if isinstance(grouped, SparseGroupedCounts):
        counts, g = grouped, grouped.n_groups
        full = grouped.total().astype(np.float64)
    else:
        counts = np.asarray(grouped, dtype=np.float64)
        g = len(counts)
        full = counts.sum((0, 1))
    m = _multiplicities(np.random.default_rng([seed, 1 + index]).integers(0, g, size=(n_boot, g)))
    return lambda rows: full if rows is None else replicate_histograms(counts, m[rows])


def baseline_counts(units: torch.Tensor, bins: int, tile: int, hist=None) -> np.ndarray:
    """The grouped pair counts by which a baseline sample of iid tokens (unit rows) is resampled: its tokens dealt
    round-robin into `BASELINE_GROUPS` groups (fewer for fewer tokens); with an empty `hist` (a `CosineHistogram`),
    the same pass makes the sample's histogram."""
    n = len(units)
    g = min(BASELINE_GROUPS, n)
    return grouped_cosine_counts(units, np.arange(n) % g, g, bins, tile, hist=hist)
