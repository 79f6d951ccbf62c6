"""Per-site analysis, the body of one CPU Ray task: similarity histogram, exemplar pairs, baseline fit, and the
site's share of `samples.parquet`.

Run as a task per (layer, site), it receives that site's merged sample vectors from the object store and returns
only small results (counts, numbers, pair indices), so the driver never handles the vectors.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch

from tasks.baselines import fit_dimension, law_probabilities, wasserstein1
from tasks.similarity import cosine_histogram, quantile_pairs, unit_rows
from tasks.moments import SiteStatistics
from tasks.storage import RunStore
from tasks.tables import samples_table

log = logging.getLogger(__name__)


def samples_part(layer: int, site: str) -> str:
    """This site's file inside the `samples.parquet` dataset folder."""
    return f"samples.parquet/part-L{layer:03d}-{site}.parquet"


def analyze_site(
    layer: int,
    site: str,
    vectors: np.ndarray,
    keys: dict[str, np.ndarray],
    *,
    bins: int,
    tile: int,
    quantiles: tuple[float, ...],
    store_root: str,
    save_samples: bool,
    stats: dict | None = None,
) -> dict:
    """Histogram, exemplar pairs and fitted dimension for one site's sample (n x d); with the site's merged
    streaming statistics (`stats`, a `SiteStatistics` state), the corpus-wide numbers too, and the statistics
    saved as `statistics/L{layer}-{site}.npz`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    units = unit_rows(vectors, device)
    hist = cosine_histogram(units, bins, tile)
    pairs = quantile_pairs(units, hist, quantiles, tile)
    prob = hist.counts / max(hist.n_pairs, 1)
    d_fit = fit_dimension(hist.counts, d_max=64.0 * d)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    store = RunStore(store_root)
    if save_samples:
        store.write_parquet(samples_part(layer, site), samples_table(layer, site, keys, vectors))
    corpus = {}
    if stats is not None:
        store.write_arrays(f"statistics/L{layer:03d}-{site}.npz", stats)
        corpus = corpus_numbers(SiteStatistics.load(stats))
    return {
        **corpus,
        "layer": layer,
        "site": site,
        "d_model": d,
        "n_sample": n,
        "hist": hist.state(),
        "cos_mean": hist.mean,
        "cos_std": hist.std,
        "d_fit": d_fit,
        "w1_fit": wasserstein1(prob, law_probabilities(d_fit, bins)),
        "w1_gaussian": wasserstein1(prob, law_probabilities(d, bins)),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std()),
        "pairs": [asdict(p) for p in pairs],
    }


def corpus_numbers(stats: SiteStatistics) -> dict:
    """The corpus-wide numbers of one site from its streaming statistics (every token, no sampling):
    exact all-pairs mean cosine and mean squared cosine, covariance spectrum summaries, norms, and the
    per-coordinate moments (returned as arrays for `moments.parquet`)."""
    m, u, cov = stats.moments, stats.units, stats.covariance
    n = u.n
    # Over all ordered pairs of distinct tokens: (|sum u|^2 - n) / (n (n - 1)), (|U^T U|_F^2 - n) / (n (n - 1)).
    cos_mean_all = (float(u.sum @ u.sum) - n) / (n * (n - 1)) if n > 1 else float("nan")
    cos2_mean_all = (float(np.sum(u.second * u.second)) - n) / (n * (n - 1)) if n > 1 else float("nan")
    eig = np.clip(np.linalg.eigvalsh(cov.covariance)[::-1], 0.0, None)
    share = np.cumsum(eig) / eig.sum()
    kurt = m.excess_kurtosis
    return {
        "n_tokens_stats": m.n,
        "n_tokens_second_order": n,
        "cos_mean_all": cos_mean_all,
        "cos2_mean_all": cos2_mean_all,
        "pr_raw": float(eig.sum() ** 2 / np.sum(eig**2)),
        "pc90": int(np.searchsorted(share, 0.90) + 1),
        "pc95": int(np.searchsorted(share, 0.95) + 1),
        "pc99": int(np.searchsorted(share, 0.99) + 1),
        "kurtosis_max": float(np.nanmax(kurt)),
        "kurtosis_median": float(np.nanmedian(kurt)),
        "norm_mean_all": float(stats.norms.moments.mean[0]),
        "norm_std_all": float(np.sqrt(stats.norms.moments.variance[0])),
        "dims": {"mean": m.mean, "variance": m.variance, "skewness": m.skewness, "excess_kurtosis": kurt},
    }
