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

from tasks.baselines import fit_dimension, law_probabilities, matched_gaussian, wasserstein1
from tasks.dimension import dimension_report
from tasks.distances import energy_distance, ks_statistic
from tasks.similarity import CosineHistogram, cosine_histogram, quantile_pairs, unit_rows
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
    matched_seed: int = 0,
) -> dict:
    """Histogram, exemplar pairs and fitted dimension for one site's sample (n x d); with the site's merged
    streaming statistics (`stats`, a `SiteStatistics` state), the corpus-wide numbers too, and the statistics
    saved as `statistics/L{layer}-{site}.npz`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    store = RunStore(store_root)
    if save_samples:
        store.write_parquet(samples_part(layer, site), samples_table(layer, site, keys, vectors))
    corpus = {}
    variants = {"raw": vectors}
    if stats is not None:
        store.write_arrays(f"statistics/L{layer:03d}-{site}.npz", stats)
        corpus = corpus_numbers(SiteStatistics.load(stats))
        mean = corpus.pop("corpus_mean")
        variants["centered"] = vectors - mean.astype(np.float32)
    out = {name: sample_numbers(v, bins, tile, quantiles, device) for name, v in variants.items()}
    if "centered" in out:
        # E[cos^2] of the centred states against what a Gaussian with their covariance gives, exactly.
        c = out["centered"]
        c["cos2_over_gaussian"] = (c["cos_std"] ** 2 + c["cos_mean"] ** 2) / corpus["predicted_cos_var"]
        # The matched Gaussian: N(mean, covariance) draws through the same histogram code, per variant.
        draws = matched_gaussian(mean, corpus.pop("corpus_covariance"), n, seed=matched_seed)
        for name, states in (("raw", draws), ("centered", draws - mean.astype(np.float32))):
            h = cosine_histogram(unit_rows(states, device), bins, tile)
            v = out[name]
            v["matched_counts"] = h.counts
            data = CosineHistogram.load(v["hist"]).counts
            v["w1_matched"] = wasserstein1(data / data.sum(), h.counts / h.counts.sum())
            v["ks_matched"] = ks_statistic(data, h.counts)
            v["energy_matched"] = energy_distance(data, h.counts)
    return {**corpus, "layer": layer, "site": site, "d_model": d, "n_sample": n, "variants": out}


def sample_numbers(vectors: np.ndarray, bins: int, tile: int, quantiles: tuple[float, ...], device) -> dict:
    """The sampled states' pairwise cosine histogram, its exemplar pairs, fitted dimension and distances."""
    d = vectors.shape[1]
    units = unit_rows(vectors, device)
    hist = cosine_histogram(units, bins, tile)
    pairs = quantile_pairs(units, hist, quantiles, tile)
    prob = hist.counts / max(hist.n_pairs, 1)
    d_fit = fit_dimension(hist.counts, d_max=64.0 * d)
    exact = law_probabilities(d, len(prob))
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    return {
        "hist": hist.state(),
        "cos_mean": hist.mean,
        "cos_std": hist.std,
        "d_fit": d_fit,
        "w1_fit": wasserstein1(prob, law_probabilities(d_fit, bins)),
        "w1_gaussian": wasserstein1(prob, exact),
        "ks_gaussian": ks_statistic(prob, exact),
        "energy_gaussian": energy_distance(prob, exact),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std()),
        "pairs": [asdict(p) for p in pairs],
    }


def corpus_numbers(stats: SiteStatistics) -> dict:
    """The corpus-wide numbers of one site from its streaming statistics (every token, no sampling): exact
    all-pairs mean cosine and mean squared cosine, effective dimensions of the covariance (`tasks.dimension`),
    the cosine variance that a Gaussian with this covariance would give, norms, and the per-coordinate moments
    (returned as arrays for `moments.parquet`)."""
    m, u, cov = stats.moments, stats.units, stats.covariance
    rep = dimension_report(u.n, cov.mean, cov.covariance, u.sum, u.second)
    kurt = m.excess_kurtosis
    return {
        "n_tokens_stats": m.n,
        "n_tokens_second_order": u.n,
        "cos_mean_all": rep.mean_cos,
        "cos2_mean_all": rep.mean_cos2,
        "pr_raw": rep.pr_raw,
        "pr_corrected": rep.pr_corrected,
        "pc90": rep.pc90,
        "pc95": rep.pc95,
        "pc99": rep.pc99,
        "predicted_cos_var": rep.predicted_cos_var,
        "mean_share": rep.mean_share,
        "kurtosis_max": float(np.nanmax(kurt)),
        "kurtosis_median": float(np.nanmedian(kurt)),
        "norm_mean_all": float(stats.norms.moments.mean[0]),
        "norm_std_all": float(np.sqrt(stats.norms.moments.variance[0])),
        "corpus_mean": cov.mean,
        "corpus_covariance": cov.covariance,
        "dims": {"mean": m.mean, "variance": m.variance, "skewness": m.skewness, "excess_kurtosis": kurt},
    }
