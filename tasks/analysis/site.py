"""Per-site analysis, the body of one CPU Ray task: similarity histogram, exemplar pairs, baseline fit, and the
site's share of `samples.parquet`.

Run as a task per (layer, site), it receives that site's merged sample vectors from the object store and returns
only small results (counts, numbers, pair indices), so the driver never handles the vectors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from tasks.analysis.baselines import (
    fit_dimension,
    law_probabilities,
    matched_deviations,
    wasserstein1,
)
from tasks.analysis.coordinates import cosine_contributions, top_coordinate
from tasks.analysis.dimension import (
    covariance_spectrum,
    dimension_report,
    gaussian_cosine_variance,
    inverse_mean_cos2_dimension,
    inverse_std,
    mean_cosine,
    mean_squared_cosine,
    standardized_covariance,
)
from tasks.analysis.distances import (
    DISTANCES,
    baseline_counts,
    document_groups,
    energy_distance,
    histogram_distance_bootstrap,
    ks_statistic,
    weighted_document_bootstrap,
)
from tasks.analysis.intrinsic import intrinsic_dimension
from tasks.analysis.massive import massive_numbers
from tasks.stats.site import SiteStatistics
from tasks.analysis.similarity import (
    CosineHistogram,
    cosine_histogram,
    grouped_cosine_counts,
    quantile_pairs,
    unit_rows,
)
from tasks.sites import site_key
from tasks.storage import RunStore
from tasks.tables import samples_table
from tasks.analysis.tails import excess_kurtosis, kurtosis_summary, principal_components_kurtosis

log = logging.getLogger(__name__)

MIN_BOOTSTRAP_DOCS = 20  # fewer sampled documents than this support no bootstrap interval (reported missing)
GRAM_CACHE_BYTES = 256 << 20  # the bootstrap keeps G o G (n^2 float64) up to this size: n <= 5,792


def samples_part(layer: int, site: str) -> str:
    """This site's file inside the `samples.parquet` dataset folder."""
    return f"samples.parquet/part-{site_key(layer, site)}.parquet"


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Each coordinate z-scored with the corpus-wide mean and standard deviation, (x - mean) / std, in float64
    then float32; coordinates with std 0 (constant over the corpus) map to 0 rather than to NaN."""
    return ((np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)) * inverse_std(std)).astype(np.float32)


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
    streaming statistics (`stats`, a `SiteStatistics` state), the corpus-wide numbers too, the `centered` and
    `standardized` variants with their matched Gaussians, and the statistics saved as
    `statistics/{site_key}.npz`. `timings` holds the seconds spent per step (write, corpus, histogram,
    bootstrap, baselines, intrinsic), which the driver sums over sites. The intrinsic dimension
    (`tasks.analysis.intrinsic`) is the raw states' and also the centred ones' (centring moves no distance); the
    standardized states, whose distances weigh the coordinates anew, get none."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = dict.fromkeys(("write", "corpus", "histogram", "bootstrap", "baselines", "intrinsic"), 0.0)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] += now - clock
        clock = now

    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    store = RunStore(store_root)
    if save_samples:
        store.write_parquet(samples_part(layer, site), samples_table(layer, site, keys, vectors))
    if stats is not None:
        store.write_arrays(f"statistics/{site_key(layer, site)}.npz", stats)
    lap("write")
    corpus = {}
    variants = {"raw": vectors}
    matched: dict[str, torch.Tensor] = {}  # unit rows of the matched Gaussian draws, per variant
    if stats is not None:
        corpus = corpus_numbers(SiteStatistics.load(stats))
        mean, covariance = corpus.pop("corpus_mean"), corpus.pop("corpus_covariance")
        z_mean, z_std = corpus.pop("moments_mean"), corpus.pop("moments_std")
        variants["centered"] = vectors - mean.astype(np.float32)
        variants["standardized"] = standardize(vectors, z_mean, z_std)
        pc = kurtosis_summary(principal_components_kurtosis(vectors, mean, covariance))
        corpus.update(pc_kurtosis_max=pc["max"], pc_kurtosis_median=pc["median"], pc_kurtosis_share=pc["share"],
                      kurtosis_share_sample=kurtosis_summary(excess_kurtosis(vectors))["share"])
        lap("corpus")
        # The matched Gaussian: N(mean, covariance) draws through the same histogram code, per variant. The centred
        # variant's draws are the raw ones before their mean is added (float64: no cancellation); the standardized
        # variant's, z-scored with the same corpus mean and standard deviation as the data, are drawn from the
        # standardized covariance itself (D^-1 S D^-1, unit-scale, so no coordinate's spread is lost under the
        # others' when its root is taken) plus the standardized mean. Both then follow their inputs' leading digits
        # only, not the last bits, which vary with how the statistics' partials were grouped (the number of actors).
        deviations = matched_deviations(covariance, n, seed=matched_seed)
        scaled = matched_deviations(standardized_covariance(covariance, z_std), n, seed=matched_seed)
        offset = (np.asarray(mean, np.float64) - z_mean) * inverse_std(z_std)  # the draws' mean, standardized
        states = {"raw": (deviations + mean).astype(np.float32), "centered": deviations.astype(np.float32),
                  "standardized": (scaled + offset).astype(np.float32)}
        matched = {name: unit_rows(x, device) for name, x in states.items()}
        lap("baselines")
    docs = keys.get("doc")
    out = {name: sample_numbers(v, bins, tile, quantiles, device, docs, n_boot, matched_seed,
                                matched_units=matched.get(name), seconds=seconds)
           for name, v in variants.items()}
    clock = time.perf_counter()
    if "rogue_order" in corpus:  # how much of the raw cosine variance is left without the top 1, 3, 5 of them
        order = corpus.pop("rogue_order")
        for m in (1, 3, 5):
            trimmed = vectors.copy()
            trimmed[:, order[:m]] = 0.0
            out["raw"][f"cos_var_left_top{m}"] = pair_cosine_variance(trimmed) / out["raw"]["cos_std"] ** 2
    predicted = {"centered": corpus.get("predicted_cos_var"),
                 "standardized": corpus.pop("predicted_cos_var_standardized", None)}
    for name, prediction in predicted.items():
        if name not in out:
            continue
        # E[cos^2] of the centred (standardised) states against what a Gaussian with their covariance
        # (correlation matrix) gives, exactly; 1 / E[cos^2] as an effective dimension.
        c = out[name]
        cos2 = c["cos_std"] ** 2 + c["cos_mean"] ** 2
        c["predicted_cos_var"] = prediction
        c["cos2_over_gaussian"] = cos2 / prediction
        c["dim_inv_cos2"] = inverse_mean_cos2_dimension(cos2)
        if "cos2_ci" in c:  # the prediction comes from every token: its own error is negligible next to these
            low, high = c["cos2_ci"]
            c["cos2_over_gaussian_ci_low"], c["cos2_over_gaussian_ci_high"] = low / prediction, high / prediction
            c["dim_inv_cos2_ci_low"], c["dim_inv_cos2_ci_high"] = 1.0 / high, 1.0 / low
    lap("histogram")
    ids = intrinsic_dimension(vectors, docs, n_boot, matched_seed)
    for name in ("raw", "centered"):
        if name in out:
            out[name].update(ids)
    lap("intrinsic")
    if docs is not None and n_boot > 0:
        n_docs = len(np.unique(docs))
        for numbers in out.values():
            drop_unsupported_intervals(numbers, n_docs)
    lap("histogram")
    timings = {k: round(v, 4) for k, v in seconds.items()}
    return {**corpus, "layer": layer, "site": site, "d_model": d, "n_sample": n, "variants": out, "timings": timings}


def drop_unsupported_intervals(numbers: dict, n_docs: int) -> None:
    """Report as missing (None) every bootstrap interval that nothing supports: all of them when the sample's
    tokens come from fewer than MIN_BOOTSTRAP_DOCS documents (the resampled units: one document gives every
    replicate the sample itself, a zero-width interval; a few give a handful of distinct replicates), and any
    interval with a NaN or infinite end (a replicate without pairs). A verdict reading a missing interval is not
    marked confident (`tasks.analysis.verdict.verdict_confident`). In place, on one variant's numbers."""
    few = n_docs < MIN_BOOTSTRAP_DOCS
    for key in [k for k in numbers if k.endswith("_ci_low")]:
        high = key[: -len("low")] + "high"
        ends = (numbers[key], numbers.get(high))
        if few or any(e is None or not np.isfinite(e) for e in ends):
            numbers[key] = numbers[high] = None
    if "cos2_ci" in numbers and (few or not np.all(np.isfinite(numbers["cos2_ci"]))):
        numbers["cos2_ci"] = None


def pair_cosine_variance(x: np.ndarray) -> float:
    """Variance of the cosine over the pairs of distinct rows of x (a zero row: cosine 0 with every row), exactly
    and without a pass over the pairs: with unit rows u_i (or 0), s = sum_i u_i and M = U^T U (d x d),
    sum_{i != j} cos = |s|^2 - sum_i |u_i|^2 and sum_{i != j} cos^2 = |M|_F^2 - sum_i |u_i|^4 (float64)."""
    u = torch.from_numpy(np.array(x, dtype=np.float64))
    norms = u.norm(dim=1, keepdim=True)
    u /= torch.where(norms > 0, norms, 1.0)
    n = len(u)
    sq = (u * u).sum(1)
    s = u.sum(0)
    mean = mean_cosine(n, s.numpy(), float(sq.sum()))
    mean_sq = (float(torch.linalg.matrix_norm(u.T @ u) ** 2) - float((sq * sq).sum())) / (float(n) * (n - 1))
    return mean_sq - mean**2


def sample_numbers(vectors: np.ndarray, bins: int, tile: int, quantiles: tuple[float, ...], device,
                   docs: np.ndarray | None = None, n_boot: int = 0, seed: int = 0,
                   matched_units: torch.Tensor | None = None, seconds: dict[str, float] | None = None) -> dict:
    """The sampled states' pairwise cosine histogram, its exemplar pairs, fitted dimension and distances to the
    exact isotropic law (`*_gaussian`) and, given its draws' unit rows, to the matched Gaussian (`*_matched`); with the
    tokens' documents, bootstrap intervals (over documents, the same draws for all) of the mean cosine, the mean
    squared cosine and the six distances (`histogram_distance_bootstrap`: the exact law held fixed, the matched
    Gaussian's draws resampled too). `seconds`, if
    given, accumulates the time spent in "histogram" and "bootstrap"."""
    t0 = time.perf_counter()
    d = vectors.shape[1]
    units = unit_rows(vectors, device)
    bootstrap = docs is not None and n_boot > 0
    grouped = matched_grouped = None  # with the bootstrap, its grouped pair counts and the histograms in one pass
    if bootstrap:
        hist = CosineHistogram(bins)
        groups = document_groups(docs)
        grouped = grouped_cosine_counts(units, groups, int(groups.max()) + 1, bins, tile, hist=hist)
    else:
        hist = cosine_histogram(units, bins, tile)
    pairs = quantile_pairs(units, hist, quantiles, tile)
    prob = hist.counts / max(hist.n_pairs, 1)
    d_fit = fit_dimension(hist.counts, d_max=64.0 * d)
    exact = law_probabilities(d, len(prob))
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    out = {
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
    baselines = {"gaussian": exact}
    if matched_units is not None:
        if bootstrap:
            matched_hist = CosineHistogram(bins)
            matched_grouped = baseline_counts(matched_units, bins, tile, hist=matched_hist)
            matched_counts = matched_hist.counts
        else:
            matched_counts = cosine_histogram(matched_units, bins, tile).counts
        out["matched_counts"] = matched_counts
        out["w1_matched"] = wasserstein1(prob, matched_counts / matched_counts.sum())
        out["ks_matched"] = ks_statistic(hist.counts, matched_counts)
        out["energy_matched"] = energy_distance(hist.counts, matched_counts)
        baselines["matched"] = matched_units if matched_grouped is None else matched_grouped
    t1 = time.perf_counter()
    if bootstrap:
        boot = pair_moments_bootstrap(units.double().cpu().numpy(), docs, n_boot, seed)
        out.update(cos_mean_ci_low=float(boot.low[0]), cos_mean_ci_high=float(boot.high[0]),
                   cos2_ci=(float(boot.low[1]), float(boot.high[1])))
        dist = histogram_distance_bootstrap(units, docs, list(baselines.values()), bins, tile, n_boot, seed,
                                            counts=grouped)
        for b, name in enumerate(baselines):
            for k, measure in enumerate(DISTANCES):
                out[f"{measure}_{name}_ci_low"] = float(dist.low[b, k])
                out[f"{measure}_{name}_ci_high"] = float(dist.high[b, k])
    if seconds is not None:
        seconds["histogram"] = seconds.get("histogram", 0.0) + t1 - t0
        seconds["bootstrap"] = seconds.get("bootstrap", 0.0) + time.perf_counter() - t1
    return out


def pair_moments_bootstrap(units: np.ndarray, docs: np.ndarray, n_boot: int, seed: int):
    """95 % intervals of (mean cosine, mean squared cosine) over pairs of distinct sampled tokens, by resampling
    documents (pairs share tokens, and tokens of a document are correlated).

    A replicate draws documents with multiplicities m_d. Pairs between two drawn documents count m_d m_e times;
    pairs inside one document count m_d times (once per copy), not m_d^2, so that a replicate does not invent
    within-document pairs the sample never had (which would bias every replicate toward the, more similar,
    within-document pairs). With token weights w_i = m_doc(i) and G the Gram matrix of unit rows:
    sum_{i != j} w_i w_j G_ij = |U^T w|^2 - sum_i w_i^2, then minus sum_d (m_d^2 - m_d) W_d with W_d the sum of
    G_ij over distinct pairs inside document d; the same for G_ij^2 and for the pair counts. All replicates at
    once; G o G in row blocks (memory ~ 2048 x n), computed once and kept while n^2 float64 fit GRAM_CACHE_BYTES,
    else recomputed per call."""
    n = len(units)
    norms2 = np.einsum("ij,ij->i", units, units)  # 1 for unit rows, 0 for zero rows
    uniq, first, codes = np.unique(docs, return_index=True, return_inverse=True)
    codes = codes.reshape(-1)
    within = np.zeros((len(uniq), 3))  # per document: sum of G, of G^2, and the number of ordered pairs
    kept = [] if n * n * 8 <= GRAM_CACHE_BYTES else None  # G o G's row blocks, when small enough to keep
    for b in range(0, n, 2048):
        g = units[b : b + 2048] @ units.T
        g2 = g * g
        same = codes[b : b + 2048, None] == codes[None, :]
        rows = np.arange(b, min(b + 2048, n))
        same[rows - b, rows] = False  # distinct tokens only
        within[:, 0] += np.bincount(codes[rows], (g * same).sum(1), minlength=len(uniq))
        within[:, 1] += np.bincount(codes[rows], (g2 * same).sum(1), minlength=len(uniq))
        within[:, 2] += np.bincount(codes[rows], same.sum(1), minlength=len(uniq))
        if kept is not None:
            kept.append(g2)

    def squared_gram(index: int, b: int) -> np.ndarray:
        if kept is not None:
            return kept[index]
        g = units[b : b + 2048] @ units.T
        return g * g

    def statistic(w: np.ndarray) -> np.ndarray:
        self_pairs = w**2 @ norms2
        m = w[:, first]
        extra = (m * m - m) @ within  # within-document pairs counted m^2 times by the products, kept m times
        s1 = w @ units
        second = np.zeros(len(w))
        for index, b in enumerate(range(0, n, 2048)):  # w^T (G o G) w, a row block of G at a time
            second += np.einsum("kn,kn->k", w[:, b : b + 2048] @ squared_gram(index, b), w)
        totals = np.stack([np.einsum("kd,kd->k", s1, s1) - self_pairs, second - self_pairs], axis=1) - extra[:, :2]
        pairs = w.sum(1) ** 2 - (w**2).sum(1) - extra[:, 2]
        return totals / pairs[:, None]

    return weighted_document_bootstrap(statistic, docs, n_boot=n_boot, seed=seed)


def corpus_numbers(stats: SiteStatistics) -> dict:
    """The corpus-wide numbers of one site from its streaming statistics (every token, no sampling): exact
    all-pairs mean cosine and mean squared cosine, effective dimensions of the covariance (`tasks.analysis.dimension`),
    the cosine variance that a Gaussian with this covariance (and with the correlation matrix, for the
    standardized variant) would give, norms, the count and norms of the tokens kept out (`capture.exclude`),
    per-coordinate kurtosis, the massive activations (`tasks.analysis.massive`; their entries for `massive.parquet`),
    and the per-coordinate moments (returned as arrays for `moments.parquet`). The mean and
    standard deviation that z-score the standardized variant are the per-coordinate `Moments` over every token."""
    m, u, cov = stats.moments, stats.units, stats.covariance
    ex = stats.excluded_norms.moments
    mean_cos = mean_cosine(u.n, u.sum, u.sq) if u.n > 1 else float("nan")  # every token
    rep = dimension_report(cov.n, cov.mean, cov.covariance, mean_cos, mean_squared_cosine(stats.unit_second.n, stats.unit_second.second))
    kurt = m.excess_kurtosis
    # Each coordinate's term of the all-pairs mean cosine: mean over pairs of u_ik u_jk (sums to cos_mean_all).
    contribution = cosine_contributions(u.n, u.sum, u.sq)
    rogue = np.argsort(-contribution)[:5]
    top = top_coordinate(contribution, m.variance)
    std = np.sqrt(m.variance)
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
        "kurtosis_share": kurtosis_summary(kurt)["share"],
        "norm_mean_all": float(stats.norms.moments.mean[0]),
        "norm_std_all": float(np.sqrt(stats.norms.moments.variance[0])),
        "n_excluded": ex.n,
        "excluded_norm_mean": float(ex.mean[0]) if ex.n else None,
        "excluded_norm_std": float(np.sqrt(ex.variance[0])) if ex.n else None,
        "corpus_mean": cov.mean,
        "corpus_covariance": cov.covariance,
        "moments_mean": m.mean,
        "moments_std": std,
        "predicted_cos_var_standardized": gaussian_cosine_variance(
            covariance_spectrum(standardized_covariance(cov.covariance, std))),
        "rogue_dims": ",".join(str(int(k)) for k in rogue),
        "rogue_share": float(contribution[rogue[0]] / rep.mean_cos) if rep.mean_cos else float("nan"),
        "rogue_order": rogue,
        "top_coord": top.coord,
        "top_coord_cos_share": top.cos_share,
        "top_coord_var_share": top.var_share,
        "top_coord_dominates": top.dominates,
        "top_eig_share": rep.top_eig_share,
        **massive_numbers(stats.massive, stats.abs_hist),
        "dims": {"mean": m.mean, "variance": m.variance, "skewness": m.skewness, "excess_kurtosis": kurt,
                 "cos_share": contribution},
    }
