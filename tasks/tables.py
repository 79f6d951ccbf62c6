"""Output tables: the Arrow schemas of the run directory's Parquet files and the builders that fill them.

Writing goes through `tasks.storage.RunStore` (atomic, local or object store).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SUMMARY_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("variant", pa.string()),
        ("d_model", pa.int32()),
        ("n_tokens", pa.int64()),
        ("n_sample", pa.int64()),
        ("n_pairs", pa.int64()),
        ("n_nonfinite", pa.int64()),
        ("cos_mean", pa.float64()),
        ("cos_std", pa.float64()),
        ("d_fit", pa.float64()),
        ("w1_gaussian", pa.float64()),
        ("w1_fit", pa.float64()),
        ("ks_gaussian", pa.float64()),
        ("energy_gaussian", pa.float64()),
        ("w1_matched", pa.float64()),
        ("ks_matched", pa.float64()),
        ("energy_matched", pa.float64()),
        ("verdict", pa.string()),
        ("verdict_confident", pa.bool_()),
        ("norm_mean", pa.float64()),
        ("norm_std", pa.float64()),
        # corpus-wide, from the streaming statistics over every token (null when stats.enabled is false)
        ("n_tokens_stats", pa.int64()),
        ("n_tokens_second_order", pa.int64()),
        ("cos_mean_all", pa.float64()),
        ("cos2_mean_all", pa.float64()),
        ("pr_raw", pa.float64()),
        ("pr_corrected", pa.float64()),
        ("pc90", pa.int32()),
        ("pc95", pa.int32()),
        ("pc99", pa.int32()),
        ("predicted_cos_var", pa.float64()),
        ("mean_share", pa.float64()),
        ("cos2_over_gaussian", pa.float64()),
        ("cos_mean_ci_low", pa.float64()),
        ("cos_mean_ci_high", pa.float64()),
        ("cos2_over_gaussian_ci_low", pa.float64()),
        ("cos2_over_gaussian_ci_high", pa.float64()),
        # 95 % document-bootstrap intervals of the six distances (exact law held fixed, matched draws resampled)
        *[(f"{m}_{b}_ci_{end}", pa.float64()) for b in ("gaussian", "matched") for m in ("w1", "ks", "energy")
          for end in ("low", "high")],
        ("dim_inv_cos2", pa.float64()),
        ("dim_inv_cos2_ci_low", pa.float64()),
        ("dim_inv_cos2_ci_high", pa.float64()),
        # intrinsic dimension of the sampled states (tasks.analysis.intrinsic) with 95 % document-bootstrap intervals;
        # the raw row's, repeated on the centred row (same distances), null on the standardized row
        *[(f"id_{e}{part}", pa.float64()) for e in ("twonn", "gride") for part in ("", "_ci_low", "_ci_high")],
        ("rogue_dims", pa.string()),
        ("rogue_share", pa.float64()),
        # the coordinate with the largest share of the mean cosine or of the variance (tasks/analysis/coordinates.py)
        ("top_coord", pa.int32()),
        ("top_coord_cos_share", pa.float64()),
        ("top_coord_var_share", pa.float64()),
        ("top_coord_dominates", pa.bool_()),
        ("top_eig_share", pa.float64()),
        ("cos_var_left_top1", pa.float64()),
        ("cos_var_left_top3", pa.float64()),
        ("cos_var_left_top5", pa.float64()),
        ("kurtosis_max", pa.float64()),
        ("kurtosis_median", pa.float64()),
        ("kurtosis_share", pa.float64()),
        ("kurtosis_share_sample", pa.float64()),
        ("pc_kurtosis_max", pa.float64()),
        ("pc_kurtosis_median", pa.float64()),
        ("pc_kurtosis_share", pa.float64()),
        ("norm_mean_all", pa.float64()),
        ("norm_std_all", pa.float64()),
        ("n_excluded", pa.int64()),  # tokens kept out by capture.exclude (finite states), and their norms
        ("excluded_norm_mean", pa.float64()),
        ("excluded_norm_std", pa.float64()),
        # massive activations (Sun et al. 2024) over every token, excluded ones included (tasks/analysis/massive.py)
        ("abs_max", pa.float64()),
        ("abs_median", pa.float64()),
        ("massive_ratio", pa.float64()),
        ("massive_dims", pa.string()),
    ]
)

# Where each summary column comes from. Every column is in exactly one group (`tests/test_tables.py`).
RUN_COLUMNS = ("layer", "site", "variant", "d_model", "n_tokens", "n_sample", "n_pairs", "n_nonfinite")
VERDICT_COLUMNS = ("verdict", "verdict_confident")  # from the site's rows by `tasks.analysis.verdict`
# Site-level, from the streaming statistics over every token: the same on every variant's row, except where a
# variant sets its own value (the standardized row's predicted_cos_var, from its correlation matrix).
CORPUS_COLUMNS = ("n_tokens_stats", "n_tokens_second_order", "cos_mean_all", "cos2_mean_all", "pr_raw",
                  "pr_corrected", "pc90", "pc95", "pc99", "predicted_cos_var", "mean_share", "kurtosis_max",
                  "kurtosis_median", "kurtosis_share", "kurtosis_share_sample", "pc_kurtosis_max",
                  "pc_kurtosis_median", "pc_kurtosis_share", "norm_mean_all", "norm_std_all", "n_excluded",
                  "excluded_norm_mean", "excluded_norm_std", "rogue_dims", "rogue_share", "top_coord",
                  "top_coord_cos_share", "top_coord_var_share", "top_coord_dominates", "top_eig_share", "abs_max",
                  "abs_median", "massive_ratio", "massive_dims")
# Corpus columns that describe the raw states (their directions, their coordinates' sizes): null on the centred
# and standardized rows.
RAW_ONLY = ("cos_mean_all", "cos2_mean_all", "mean_share", "rogue_dims", "rogue_share", "top_coord",
            "top_coord_cos_share", "top_coord_var_share", "top_coord_dominates", "abs_max", "abs_median",
            "massive_ratio", "massive_dims")
# The rest: each variant's own numbers from its sample (histogram, fit, distances, intervals).
VARIANT_COLUMNS = tuple(n for n in SUMMARY_SCHEMA.names if n not in (*RUN_COLUMNS, *VERDICT_COLUMNS, *CORPUS_COLUMNS))

MOMENTS_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("dim", pa.int32()),
        ("mean", pa.float64()),
        ("variance", pa.float64()),
        ("skewness", pa.float64()),
        ("excess_kurtosis", pa.float64()),
        ("cos_share", pa.float64()),
    ]
)

HISTOGRAM_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("variant", pa.string()),
        ("source", pa.string()),
        ("bin_left", pa.float64()),
        ("bin_right", pa.float64()),
        ("count", pa.int64()),
        ("probability", pa.float64()),
        ("density", pa.float64()),
    ]
)

_TOKEN_FIELDS = [("doc", pa.int64()), ("window", pa.int64()), ("pos", pa.int64()), ("token_id", pa.int32()), ("text", pa.string())]
EXEMPLAR_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("variant", pa.string()),
        ("quantile", pa.float64()),
        ("rank", pa.int64()),
        ("cos", pa.float64()),
        ("a_index", pa.int64()),
        *[(f"a_{name}", t) for name, t in _TOKEN_FIELDS],
        ("b_index", pa.int64()),
        *[(f"b_{name}", t) for name, t in _TOKEN_FIELDS],
    ]
)

# The top `stats.massive_top` |x| entries of every site over every token (tasks/stats/massive.py), by rank.
MASSIVE_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("rank", pa.int32()),
        ("value", pa.float64()),
        ("coord", pa.int32()),
        ("over_median", pa.float64()),
        ("massive", pa.bool_()),
        ("excluded", pa.bool_()),
        *_TOKEN_FIELDS[:4],
        ("token", pa.string()),
        ("text", pa.string()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("index", pa.int64()),
        ("doc", pa.int64()),
        ("window", pa.int64()),
        ("pos", pa.int64()),
        ("token_id", pa.int32()),
        ("vector", pa.list_(pa.float32())),
    ]
)

# The model sanity check (tasks/capture/sanity.py): the top-k next tokens after each configured prompt, rank from 1.
SANITY_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("rank", pa.int32()),
        ("token", pa.string()),
        ("token_id", pa.int32()),
        ("probability", pa.float64()),
    ]
)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def histogram_rows(
    layer: int, site: str, variant: str, source: str, edges: np.ndarray, probability: np.ndarray, counts=None
) -> pa.Table:
    """One histogram as columns; `counts` only for sources that are counts (data, empirical baseline)."""
    n = len(probability)
    width = np.diff(edges)
    return pa.table(
        {
            "layer": pa.array(np.full(n, layer), pa.int32()),
            "site": pa.array([site] * n, pa.string()),
            "variant": pa.array([variant] * n, pa.string()),
            "source": pa.array([source] * n, pa.string()),
            "bin_left": pa.array(edges[:-1], pa.float64()),
            "bin_right": pa.array(edges[1:], pa.float64()),
            "count": pa.array(counts if counts is not None else [None] * n, pa.int64()),
            "probability": pa.array(probability, pa.float64()),
            "density": pa.array(probability / width, pa.float64()),
        },
        schema=HISTOGRAM_SCHEMA,
    )


def samples_table(layer: int, site: str, keys: dict[str, np.ndarray], vectors: np.ndarray) -> pa.Table:
    """The sampled states of one site: identity columns and each state vector as a list of float32."""
    n, d = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    vec = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)))
    return pa.table(
        {
            "layer": pa.array(np.full(n, layer), pa.int32()),
            "site": pa.array([site] * n, pa.string()),
            "index": pa.array(np.arange(n), pa.int64()),
            "doc": pa.array(keys["doc"], pa.int64()),
            "window": pa.array(keys["window"], pa.int64()),
            "pos": pa.array(keys["pos"], pa.int64()),
            "token_id": pa.array(keys["token_id"], pa.int32()),
            "vector": vec,
        },
        schema=SAMPLE_SCHEMA,
    )


def moments_table(layer: int, site: str, dims: dict[str, np.ndarray]) -> pa.Table:
    """Per-coordinate moments of one site over every token."""
    d = len(dims["mean"])
    return pa.table(
        {
            "layer": pa.array(np.full(d, layer), pa.int32()),
            "site": pa.array([site] * d, pa.string()),
            "dim": pa.array(np.arange(d), pa.int32()),
            **{name: pa.array(np.asarray(dims[name], np.float64), pa.float64())
               for name in ("mean", "variance", "skewness", "excess_kurtosis", "cos_share")},
        },
        schema=MOMENTS_SCHEMA,
    )
