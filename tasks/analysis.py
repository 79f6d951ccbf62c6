"""Per-site analysis, the body of one CPU Ray task: similarity histogram, exemplar pairs, baseline fit, and the
site's share of `samples.parquet`.

Run as a task per (layer, site), it receives that site's merged sample vectors from the object store and returns
only small results (counts, numbers, pair indices), so the driver never handles the vectors.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tasks.baselines import fit_dimension, law_probabilities, wasserstein1
from tasks.similarity import cosine_histogram, quantile_pairs, unit_rows
from tasks.tables import samples_table, write_parquet

log = logging.getLogger(__name__)


def analyze_site(
    layer: int,
    site: str,
    vectors: np.ndarray,
    keys: dict[str, np.ndarray],
    *,
    bins: int,
    tile: int,
    quantiles: tuple[float, ...],
    samples_path: str | None,
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
    if samples_path is not None:
        write_parquet(samples_table(layer, site, keys, vectors), Path(samples_path))
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
