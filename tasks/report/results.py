"""The run's result tables from the per-site results: `summary.parquet`, `histograms.parquet`,
`exemplars.parquet`, `moments.parquet` and `massive.parquet`.

Each site task (`tasks.analysis.site.analyze_site`) returns its numbers per variant; here they become rows of the
schemas in `tasks.tables`, each histogram is written beside its three Gaussian baselines, and every site
gets its verdict from its raw and centred rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.analysis.baselines import law_probabilities, wasserstein1
from tasks.analysis.similarity import CosineHistogram, bin_edges
from tasks.analysis.verdict import verdict, verdict_confident
from tasks.report.exemplars import exemplar_rows, massive_rows
from tasks.tables import (
    CORPUS_COLUMNS,
    EXEMPLAR_SCHEMA,
    MASSIVE_SCHEMA,
    RAW_ONLY,
    SUMMARY_SCHEMA,
    VARIANT_COLUMNS,
    histogram_rows,
    moments_table,
    rows_to_table,
)
from tasks.errors import RunError
from tasks.sites import site_key
from tasks.storage import RunStore


def summary_row(result: dict, variant: str, n_pairs: int, n_tokens: int, nonfinite: int) -> dict:
    """One row of `summary.parquet` (without the verdict) for a site's result and one variant."""
    v = result["variants"][variant]
    site_level = {name: result.get(name) for name in CORPUS_COLUMNS}
    if variant != "raw":  # these describe the raw states' directions, not the centred ones
        for name in RAW_ONLY:
            site_level[name] = None
    site_level.update({name: v[name] for name in CORPUS_COLUMNS if name in v})  # a variant's own value
    return {
        "layer": result["layer"], "site": result["site"], "variant": variant, "d_model": result["d_model"],
        "n_tokens": n_tokens, "n_sample": result["n_sample"], "n_pairs": n_pairs, "n_nonfinite": int(nonfinite),
        **{name: v.get(name) for name in VARIANT_COLUMNS},
        **site_level,
    }


def add_verdicts(summary: list[dict]) -> None:
    """Set every row's `verdict` and `verdict_confident` from its site's raw and centred rows."""
    rows = {(r["layer"], r["site"], r["variant"]): r for r in summary}
    for r in summary:
        site_rows = rows[(r["layer"], r["site"], "raw")], rows.get((r["layer"], r["site"], "centered"))
        r["verdict"], r["verdict_confident"] = verdict(*site_rows), verdict_confident(*site_rows)


def check_counts(results: list[dict], n_tokens: int, nonfinite: np.ndarray) -> None:
    """Refuse results whose token counts do not add up, a check a run gets for free: per site, the tokens in the
    statistics, the excluded ones and the non-finite ones are every token of the corpus, each once (a shard
    counted twice or lost on the way from the records would break it). RunError, one line."""
    for r, bad in zip(results, nonfinite):
        if r.get("n_tokens_stats") is None:  # statistics off
            continue
        n_stats, n_excluded = int(round(r["n_tokens_stats"])), int(round(r.get("n_excluded") or 0))
        if n_stats + n_excluded + int(bad) != n_tokens:
            raise RunError(f"{site_key(r['layer'], r['site'])}: {n_stats} tokens in the statistics + {n_excluded} "
                           f"excluded + {int(bad)} non-finite != the corpus's {n_tokens}; the run directory's shard "
                           "records disagree with their statistics: rerun with --fresh")


def write_results(store: RunStore, results: list[dict], empirical: CosineHistogram, keys: dict, tokenizer,
                  bins: int, n_tokens: int, nonfinite: np.ndarray) -> dict:
    """Write the result tables (once `check_counts` passed); returns the consistency checks for the manifest (the
    empirical Gaussian baseline against the exact law it estimates)."""
    check_counts(results, n_tokens, nonfinite)
    edges = bin_edges(bins)
    emp_prob = empirical.counts / empirical.n_pairs
    summary, hist_tables, exemplars, moment_tables, massive = [], [], [], [], []
    for r, bad in zip(results, nonfinite):
        layer, site, d = r["layer"], r["site"], r["d_model"]
        if "dims" in r:
            moment_tables.append(moments_table(layer, site, r["dims"]))
        if "massive_entries" in r:
            massive += massive_rows(layer, site, r["massive_entries"], tokenizer)
        for variant, v in r["variants"].items():
            hist = CosineHistogram.load(v["hist"])
            summary.append(summary_row(r, variant, hist.n_pairs, n_tokens, bad))
            if "matched_counts" in v:
                mc = v["matched_counts"]
                hist_tables.append(histogram_rows(layer, site, variant, "gaussian_matched", edges, mc / mc.sum(), mc))
            hist_tables += [
                histogram_rows(layer, site, variant, "data", edges, hist.counts / hist.n_pairs, hist.counts),
                histogram_rows(layer, site, variant, "gaussian_exact", edges, law_probabilities(d, bins)),
                histogram_rows(layer, site, variant, "gaussian_fit", edges, law_probabilities(v["d_fit"], bins)),
                histogram_rows(layer, site, variant, "gaussian_empirical", edges, emp_prob, empirical.counts),
            ]
            exemplars += exemplar_rows(layer, site, variant, v["pairs"], keys, tokenizer)
    add_verdicts(summary)
    store.write_parquet("summary.parquet", rows_to_table(summary, SUMMARY_SCHEMA))
    store.write_parquet("histograms.parquet", pa.concat_tables(hist_tables))
    store.write_parquet("exemplars.parquet", rows_to_table(exemplars, EXEMPLAR_SCHEMA))
    for name, table in (("moments.parquet", moment_tables and pa.concat_tables(moment_tables)),
                        ("massive.parquet", massive and rows_to_table(massive, MASSIVE_SCHEMA))):
        if table:  # statistics on
            store.write_parquet(name, table)
        else:
            store.delete(name)
    d = results[0]["d_model"]
    return {
        "gaussian_empirical_vs_exact": {
            "d": d,
            "n_pairs": empirical.n_pairs,
            "w1": wasserstein1(emp_prob, law_probabilities(d, bins)),
            "cos_std_empirical": empirical.std,
            "cos_std_exact": float(1.0 / np.sqrt(d)),
        }
    }
