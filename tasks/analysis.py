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
) -> dict:
    """Histogram, exemplar pairs and fitted dimension for one site's sample (n x d)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    units = unit_rows(vectors, device)
    hist = cosine_histogram(units, bins, tile)
    pairs = quantile_pairs(units, hist, quantiles, tile)
    prob = hist.counts / max(hist.n_pairs, 1)
    d_fit = fit_dimension(hist.counts, d_max=64.0 * d)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if save_samples:
        RunStore(store_root).write_parquet(samples_part(layer, site), samples_table(layer, site, keys, vectors))
    return {
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
