"""The report's data model: a run directory's Parquet files and manifest read into plain JSON-ready values.

Everything the page shows comes from here, so `gpt-stats report RUN_DIR` can redraw it after the run, from the
files alone. Histograms are regrouped per (layer, site, variant) as arrays of densities over the run's bins;
exemplars per (layer, site, variant) sorted by quantile; the sanity check per prompt. For the dimension slider,
the isotropic law's per-bin densities are precomputed on a log-spaced grid of d (plus every site's `d_model`
and `d_fit`, so the slider can sit exactly on them) with `tasks.analysis.baselines.law_probabilities`: the same exact
Beta-CDF differences the run used, no second implementation in JavaScript.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.analysis.baselines import law_probabilities
from tasks.errors import UserError, first_line
from tasks.report.profiles import panels_json
from tasks.sites import site_order
from tasks.storage import RunStore

REQUIRED = ("manifest.json", "summary.parquet", "histograms.parquet")


@dataclass(frozen=True)
class LawGrid:
    """The dimension slider's grid: `per_decade` log-spaced values of d from `d_min` to `span` x the widest
    model, merged with the exact d_model and d_fit values of the run."""

    d_min: float = 1.1
    span: float = 4.0
    per_decade: int = 32


def key(layer: int, site: str, variant: str) -> str:
    """The page's key of one histogram: 'layer|site|variant'."""
    return f"{layer}|{site}|{variant}"


def finite(values: Any, digits: int = 6) -> list:
    """Floats rounded to `digits` significant digits, non-finite values as None (JSON has no NaN)."""
    out = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
    return out


def _clean(value: Any) -> Any:
    """A Parquet cell as a JSON value (NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# The tables the report reads, with the columns it needs of each (optional ones only when present).
COLUMNS = {
    "summary.parquet": ("layer", "site", "variant", "d_model"),
    "histograms.parquet": ("layer", "site", "variant", "source", "bin_left", "bin_right", "density"),
    "exemplars.parquet": ("layer", "site", "variant", "quantile", "rank", "cos"),
    "sanity.parquet": ("prompt", "rank", "token", "token_id", "probability"),
    "massive.parquet": ("layer", "site", "rank", "value", "coord", "over_median", "massive", "excluded", "doc",
                        "window", "pos", "token_id", "token", "text"),
}


def damaged(run_dir: RunStore, name: str, what: str) -> UserError:
    """The one line for a damaged file of a run directory: which file, what is wrong, and the command that rebuilds
    it (a rerun of the same config into the same directory recomputes every table from the saved shards)."""
    return UserError(
        f"{run_dir.path(name)} is damaged ({what}); rerun the same config to rebuild it: "
        f"gpt-stats run {run_dir.path('config.yaml')}"
    )


def read_table(run_dir: RunStore, name: str, columns: tuple[str, ...] | None = None):
    """A table of the run directory, or a UserError naming the file when it is not Parquet (truncated,
    overwritten) or lacks a column the report needs."""
    try:
        table = run_dir.read_parquet(name)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise damaged(run_dir, name, f"not a readable Parquet file: {first_line(exc)}") from None
    for column in columns if columns is not None else COLUMNS.get(name, ()):
        if column not in table.column_names:
            raise damaged(run_dir, name, f"has no column {column!r}")
    return table


def check_run_dir(run_dir: RunStore) -> None:
    """Refuse a directory that is not a finished run, naming the missing file, or one whose manifest or tables
    are damaged, naming the file (before anything is drawn or written). The tables are checked by their footers and
    schemas; a damage inside a table's data is caught when it is read (`read_table`)."""
    missing = [f for f in REQUIRED if not run_dir.exists(f)]
    if missing:
        raise UserError(
            f"{run_dir.root!r} is not a finished run directory (no {missing[0]}); give the run.out of a completed run"
        )
    load_manifest(run_dir)
    for name, columns in COLUMNS.items():
        if not run_dir.exists(name):
            continue
        try:
            schema = pq.read_schema(run_dir.path(name), filesystem=run_dir.fs)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise damaged(run_dir, name, f"not a readable Parquet file: {first_line(exc)}") from None
        for column in columns:
            if column not in schema.names:
                raise damaged(run_dir, name, f"has no column {column!r}")


def load_manifest(run_dir: RunStore) -> dict:
    try:
        manifest = run_dir.read_json("manifest.json")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise damaged(run_dir, "manifest.json", f"not readable JSON: {first_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise damaged(run_dir, "manifest.json", f"not a JSON object but a {type(manifest).__name__}")
    return manifest


def load_summary(run_dir: RunStore) -> list[dict]:
    rows = read_table(run_dir, "summary.parquet").to_pylist()
    return [{k: _clean(v) for k, v in r.items()} for r in rows]


def load_histograms(run_dir: RunStore) -> tuple[list[float], dict[str, dict[str, list]]]:
    """(bin edges, {key: {source: densities}}), bins in order of `bin_left`."""
    table = read_table(run_dir, "histograms.parquet").select(["layer", "site", "variant", "source", "bin_left", "bin_right", "density"])
    df = table.to_pandas().sort_values(["layer", "site", "variant", "source", "bin_left"], kind="stable")
    hists: dict[str, dict[str, list]] = {}
    edges: list[float] | None = None
    for (layer, site, variant, source), group in df.groupby(["layer", "site", "variant", "source"], sort=False):
        hists.setdefault(key(int(layer), site, variant), {})[source] = finite(group["density"].to_numpy())
        if edges is None:
            left = group["bin_left"].to_numpy()
            edges = [float(x) for x in np.append(left, group["bin_right"].to_numpy()[-1])]
    return edges or [], hists


def load_exemplars(run_dir: RunStore) -> dict[str, list[dict]]:
    path = "exemplars.parquet"
    if not run_dir.exists(path):
        return {}
    out: dict[str, list[dict]] = {}
    rows = sorted(read_table(run_dir, path).to_pylist(), key=lambda r: (r["layer"], r["site"], r["variant"], r["quantile"]))
    for r in rows:
        pair = {"quantile": r["quantile"], "rank": r["rank"], "cos": r["cos"]}
        for side in ("a", "b"):
            pair[side] = {f: _clean(r[f"{side}_{f}"]) for f in ("index", "doc", "window", "pos", "token_id", "text")}
        out.setdefault(key(r["layer"], r["site"], r["variant"]), []).append(pair)
    return out


def load_massive(run_dir: RunStore) -> dict[str, list[dict]]:
    """massive.parquet as {'layer|site': [entries by rank]} (empty without the file)."""
    path = "massive.parquet"
    if not run_dir.exists(path):
        return {}
    out: dict[str, list[dict]] = {}
    for r in sorted(read_table(run_dir, path).to_pylist(), key=lambda r: (r["layer"], r["site"], r["rank"])):
        out.setdefault(f"{r['layer']}|{r['site']}", []).append({k: _clean(v) for k, v in r.items() if k not in ("layer", "site")})
    return out


def load_sanity(run_dir: RunStore, manifest: dict) -> dict:
    """The sanity check as the manifest's entry (applies, reason, the corpus measures and verdict) with
    prompts: [{prompt, top: [{rank, token, token_id, probability}]}]."""
    entry = dict(manifest.get("sanity") or {})
    path = "sanity.parquet"
    if not run_dir.exists(path):
        if entry.get("applies") and not entry.get("prompts"):  # measured, without prompts (report.prompts: [])
            return {**entry, "prompts": []}
        entry.setdefault("applies", False)
        entry.setdefault("reason", "this run has no sanity.parquet (it predates the check, or the check did not run)")
        return entry
    prompts: dict[str, list] = {}
    for r in sorted(read_table(run_dir, path).to_pylist(), key=lambda r: r["rank"]):
        prompts.setdefault(r["prompt"], []).append(
            {"rank": r["rank"], "token": r["token"], "token_id": r["token_id"], "probability": r["probability"]}
        )
    entry.update(applies=True, prompts=[{"prompt": p, "top": top} for p, top in prompts.items()])
    return entry


def law_grid(summary: list[dict], bins: int, grid: LawGrid = LawGrid()) -> dict:
    """Densities of the isotropic law over the run's bins for every d of the slider's grid."""
    d_models = {float(r["d_model"]) for r in summary}
    d_fits = {float(r["d_fit"]) for r in summary if r.get("d_fit") is not None}
    top = max(d_models) * grid.span
    n = int(round(math.log10(top / grid.d_min) * grid.per_decade)) + 1
    ds = sorted({float(f"{d:.4g}") for d in np.geomspace(grid.d_min, top, n)} | d_models | d_fits)
    width = 2.0 / bins
    return {"d": ds, "density": [finite(law_probabilities(d, bins) / width, 5) for d in ds]}


def ordered_sites(summary: list[dict]) -> list[str]:
    return site_order(r["site"] for r in summary)


def default_selection(summary: list[dict]) -> dict:
    """The layer and site the page opens at: the one farthest from the isotropic law at the model's width
    (largest `w1_gaussian`) among the raw states (the seed's view), where the eye should go first."""
    raw = [r for r in summary if r.get("variant") == "raw"] or summary
    rows = [r for r in raw if r.get("w1_gaussian") is not None] or raw
    best = max(rows, key=lambda r: r.get("w1_gaussian") or 0.0)
    return {"layer": best["layer"], "site": best["site"], "variant": best["variant"],
            "reason": "farthest from the isotropic Gaussian at the model's width (largest W1)"}


def identity(run_dir: RunStore, manifest: dict) -> dict:
    """What identifies the run: model, corpus, sample, seed, hash, versions, timings."""
    cfg = manifest.get("config", {})
    return {
        "dir": run_dir.name,
        "path": run_dir.base if run_dir.local else run_dir.root,
        "status": manifest.get("status"),
        "config_hash": manifest.get("config_hash"),
        "started": manifest.get("started"),
        "finished": manifest.get("finished"),
        "command": manifest.get("command"),
        "model": manifest.get("model", {}),
        "corpus": manifest.get("corpus", {}),
        "corpus_config": cfg.get("corpus", {}),
        "sample": manifest.get("sample", {}),
        "seed": cfg.get("run", {}).get("seed"),
        "config": cfg,
        "versions": manifest.get("versions", {}),
        "timings": manifest.get("timings", {}),
        "actors": manifest.get("actors", []),
        "throughput": manifest.get("throughput", {}),
        "checks": manifest.get("checks", {}),
    }


def run_data(run_dir: str | Path | RunStore, with_laws: bool = True) -> dict:
    """Everything the report page shows for one run, as JSON-ready values."""
    run_dir = run_dir if isinstance(run_dir, RunStore) else RunStore(str(run_dir))
    check_run_dir(run_dir)
    manifest = load_manifest(run_dir)
    summary = load_summary(run_dir)
    edges, hists = load_histograms(run_dir)
    columns = list(read_table(run_dir, "summary.parquet").schema.names)
    data = {
        "identity": identity(run_dir, manifest),
        "summary": summary,
        "summary_columns": columns,
        "profiles": panels_json(columns),  # the depth-profile panels whose columns this run has
        "sites": ordered_sites(summary),
        "layers": sorted({r["layer"] for r in summary}),
        "variants": sorted({r["variant"] for r in summary}, key=lambda v: (v != "raw", v)),  # raw first
        "edges": edges,
        "hists": hists,
        "exemplars": load_exemplars(run_dir),
        "massive": load_massive(run_dir),
        "sanity": load_sanity(run_dir, manifest),
        "default": default_selection(summary),
    }
    if with_laws:
        data["laws"] = law_grid(summary, len(edges) - 1)
    return data
