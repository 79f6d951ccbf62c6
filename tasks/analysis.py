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
from tasks.dimension import dimension_report, mean_cosine, mean_squared_cosine
from tasks.distances import energy_distance, ks_statistic, weighted_document_bootstrap
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
    n_boot: int = 0,
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
    docs = keys.get("doc")
    out = {name: sample_numbers(v, bins, tile, quantiles, device, docs, n_boot, matched_seed) for name, v in variants.items()}
    if "rogue_order" in corpus:  # how much of the raw cosine variance is left without the top 1, 3, 5 of them
        order = corpus.pop("rogue_order")
        for m in (1, 3, 5):
            trimmed = vectors.copy()
            trimmed[:, order[:m]] = 0.0
            h = cosine_histogram(unit_rows(trimmed, device), bins, tile)
            out["raw"][f"cos_var_left_top{m}"] = h.std**2 / out["raw"]["cos_std"] ** 2
    if "centered" in out:
        # E[cos^2] of the centred states against what a Gaussian with their covariance gives, exactly.
        c = out["centered"]
        c["cos2_over_gaussian"] = (c["cos_std"] ** 2 + c["cos_mean"] ** 2) / corpus["predicted_cos_var"]
        if "cos2_ci" in c:  # the prediction comes from every token: its own error is negligible next to these
            c["cos2_over_gaussian_ci_low"], c["cos2_over_gaussian_ci_high"] = (
                x / corpus["predicted_cos_var"] for x in c["cos2_ci"])
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


def sample_numbers(vectors: np.ndarray, bins: int, tile: int, quantiles: tuple[float, ...], device,
                   docs: np.ndarray | None = None, n_boot: int = 0, seed: int = 0) -> dict:
    """The sampled states' pairwise cosine histogram, its exemplar pairs, fitted dimension and distances; with
    the tokens' documents, bootstrap intervals (over documents) of the mean cosine and mean squared cosine."""
    d = vectors.shape[1]
    units = unit_rows(vectors, device)
    boot = pair_moments_bootstrap(units.double().cpu().numpy(), docs, n_boot, seed) if docs is not None and n_boot else None
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
        **({} if boot is None else {
            "cos_mean_ci_low": float(boot.low[0]), "cos_mean_ci_high": float(boot.high[0]),
            "cos2_ci": (float(boot.low[1]), float(boot.high[1])),
        }),
    }


def pair_moments_bootstrap(units: np.ndarray, docs: np.ndarray, n_boot: int, seed: int):
    """95 % intervals of (mean cosine, mean squared cosine) over pairs of distinct sampled tokens, by resampling
    documents (pairs share tokens, and tokens of a document are correlated).

    A replicate draws documents with multiplicities m_d. Pairs between two drawn documents count m_d m_e times;
    pairs inside one document count m_d times (once per copy), not m_d^2, so that a replicate does not invent
    within-document pairs the sample never had (which would bias every replicate toward the, more similar,
    within-document pairs). With token weights w_i = m_doc(i) and G the Gram matrix of unit rows:
    sum_{i != j} w_i w_j G_ij = |U^T w|^2 - sum_i w_i^2, then minus sum_d (m_d^2 - m_d) W_d with W_d the sum of
    G_ij over distinct pairs inside document d; the same for G_ij^2 and for the pair counts. All replicates at
    once; G o G in row blocks (memory ~ 2048 x n)."""
    n = len(units)
    norms2 = np.einsum("ij,ij->i", units, units)  # 1 for unit rows, 0 for zero rows
    uniq, first, codes = np.unique(docs, return_index=True, return_inverse=True)
    codes = codes.reshape(-1)
    within = np.zeros((len(uniq), 3))  # per document: sum of G, of G^2, and the number of ordered pairs
    for b in range(0, n, 2048):
        g = units[b : b + 2048] @ units.T
        same = codes[b : b + 2048, None] == codes[None, :]
        rows = np.arange(b, min(b + 2048, n))
        same[rows - b, rows] = False  # distinct tokens only
        within[:, 0] += np.bincount(codes[rows], (g * same).sum(1), minlength=len(uniq))
        within[:, 1] += np.bincount(codes[rows], (g * g * same).sum(1), minlength=len(uniq))
        within[:, 2] += np.bincount(codes[rows], same.sum(1), minlength=len(uniq))

    def statistic(w: np.ndarray) -> np.ndarray:
        self_pairs = w**2 @ norms2
        m = w[:, first]
        extra = (m * m - m) @ within  # within-document pairs counted m^2 times by the products, kept m times
        s1 = w @ units
        second = np.zeros(len(w))
        for b in range(0, n, 2048):  # w^T (G o G) w, a row block of G at a time
            g = units[b : b + 2048] @ units.T
            second += np.einsum("kn,kn->k", w[:, b : b + 2048] @ (g * g), w)
        totals = np.stack([np.einsum("kd,kd->k", s1, s1) - self_pairs, second - self_pairs], axis=1) - extra[:, :2]
        pairs = w.sum(1) ** 2 - (w**2).sum(1) - extra[:, 2]
        return totals / pairs[:, None]

    return weighted_document_bootstrap(statistic, docs, n_boot=n_boot, seed=seed)


def corpus_numbers(stats: SiteStatistics) -> dict:
    """The corpus-wide numbers of one site from its streaming statistics (every token, no sampling): exact
    all-pairs mean cosine and mean squared cosine, effective dimensions of the covariance (`tasks.dimension`),
    the cosine variance that a Gaussian with this covariance would give, norms, the count and norms of the tokens
    kept out (`capture.exclude`), and the per-coordinate moments (returned as arrays for `moments.parquet`)."""
    m, u, cov = stats.moments, stats.units, stats.covariance
    ex = stats.excluded_norms.moments
    mean_cos = mean_cosine(u.n, u.sum, u.sq) if u.n > 1 else float("nan")  # every token
    rep = dimension_report(cov.n, cov.mean, cov.covariance, mean_cos, mean_squared_cosine(stats.unit_second.n, stats.unit_second.second))
    kurt = m.excess_kurtosis
    # Each coordinate's share of the all-pairs mean cosine: mean over pairs of u_ik u_jk (sums to cos_mean_all).
    contribution = (u.sum**2 - u.sq) / (u.n * (u.n - 1)) if u.n > 1 else np.full(len(u.sum), np.nan)
    rogue = np.argsort(-contribution)[:5]
    return {
        "n_tokens_stats": m.n,
        "n_tokens_second_order": cov.n,
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
        "n_excluded": ex.n,
        "excluded_norm_mean": float(ex.mean[0]) if ex.n else None,
        "excluded_norm_std": float(np.sqrt(ex.variance[0])) if ex.n else None,
        "corpus_mean": cov.mean,
        "corpus_covariance": cov.covariance,
        "rogue_dims": ",".join(str(int(k)) for k in rogue),
        "rogue_share": float(contribution[rogue[0]] / rep.mean_cos) if rep.mean_cos else float("nan"),
        "rogue_order": rogue,
        "dims": {"mean": m.mean, "variance": m.variance, "skewness": m.skewness, "excess_kurtosis": kurt,
                 "cos_share": contribution},
    }
