"""Run comparison: align the layers and sites of several runs so their curves and histograms can be overlaid.

The questions are: trained against randomly initialised weights (same architecture), GPT-2 small against XL
(12 against 48 layers), corpus A against corpus B. Runs align on the sites they all have, and on layers:
  same depth   (every run's model has the same number of layers): the layer indices all runs captured;
  other depths: layers at the same relative depth (layer + 1) / n_layers, compared as exact fractions, so
               GPT-2 small's layer 2 (3/12) meets GPT-2-XL's layer 11 (12/48).
Runs with no site, variant or layer in common cannot be put side by side; that is refused with one line that
says what each run has.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from tasks.errors import UserError
from tasks.report.data import run_data
from tasks.report.profiles import panels_json

IGNORED_KEYS = ("run.out", "cluster.", "report.")  # where and how a run ran, or its sanity prompts


@dataclass(frozen=True)
class AlignedLayer:
    """One row of the comparison: a position on the x axis and each run's layer there."""

    label: str
    x: float
    layers: tuple[int, ...]


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(configs: Sequence[dict]) -> list[dict[str, object]]:
    """Per run, the config keys whose value differs between the runs (the reason they are compared)."""
    flat = [_flatten(c or {}) for c in configs]
    keys = sorted(set().union(*flat))
    diff = [k for k in keys if not k.startswith(IGNORED_KEYS) and len({repr(f.get(k)) for f in flat}) > 1]
    return [{k: f.get(k) for k in diff} for f in flat]


def _n_layers(run: dict) -> int:
    n = (run["identity"].get("model") or {}).get("n_layers")
    return int(n) if n else max(run["layers"]) + 1


def align_layers(runs: Sequence[dict], names: Sequence[str]) -> tuple[str, list[AlignedLayer]]:
    """(x-axis label, aligned rows) for runs' captured layers; UserError when none align."""
    depths = [_n_layers(r) for r in runs]
    described = "; ".join(f"{n} has layers {r['layers']} of {L}" for n, r, L in zip(names, runs, depths))
    if len(set(depths)) == 1:
        common = sorted(set.intersection(*(set(r["layers"]) for r in runs)))
        if not common:
            raise UserError(f"runs cannot be aligned: no layer captured by all of them ({described}); capture common layers")
        return "layer", [AlignedLayer(f"layer {l}", float(l), tuple(l for _ in runs)) for l in common]
    fractions = [{Fraction(l + 1, L): l for l in r["layers"]} for r, L in zip(runs, depths)]
    common_f = sorted(set.intersection(*(set(f) for f in fractions)))
    if not common_f:
        raise UserError(
            "runs cannot be aligned: their models have different depths and no captured layers sit at the same "
            f"relative depth (layer + 1) / n_layers ({described}); capture layers at common depths"
        )
    rows = []
    for frac in common_f:
        layers = tuple(f[frac] for f in fractions)
        label = " / ".join(f"{n} L{l}" for n, l in zip(names, layers))
        rows.append(AlignedLayer(f"depth {frac.numerator}/{frac.denominator}: {label}", float(frac), layers))
    return "relative depth (layer + 1) / n_layers", rows


def align_sites(runs: Sequence[dict], names: Sequence[str]) -> list[str]:
    common = [s for s in runs[0]["sites"] if all(s in r["sites"] for r in runs[1:])]
    if not common:
        described = "; ".join(f"{n} has {', '.join(r['sites'])}" for n, r in zip(names, runs))
        raise UserError(f"runs cannot be aligned: no site in common ({described}); compare runs that captured a common site")
    return common


def _slim(run: dict, letter: str, diff: dict) -> dict:
    ident = run["identity"]
    return {
        "letter": letter,
        "dir": ident["dir"],
        "path": ident["path"],
        "status": ident["status"],
        "model": ident.get("model", {}),
        "corpus": ident.get("corpus", {}),
        "corpus_config": ident.get("corpus_config", {}),
        "sample": ident.get("sample", {}),
        "seed": ident.get("seed"),
        "config_hash": ident.get("config_hash"),
        "diff": diff,
        "summary": run["summary"],
        "edges": run["edges"],
        "hists": run["hists"],
    }


def compare_data(run_dirs: Sequence[str | Path]) -> dict:
    """Everything the comparison page shows, after checking that the runs align."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise UserError("compare needs at least two run directories")
    if len({p.resolve() for p in paths}) < len(paths):
        raise UserError("compare was given the same run directory twice; give different runs")
    runs = [run_data(p, with_laws=False) for p in paths]
    names = [f"{letter} ({p.name})" for letter, p in zip(letters(len(runs)), paths)]
    sites = align_sites(runs, names)
    variants = [v for v in runs[0]["variants"] if all(v in r["variants"] for r in runs[1:])]
    if not variants:
        raise UserError("runs cannot be aligned: no variant in common (" + "; ".join(f"{n} has {r['variants']}" for n, r in zip(names, runs)) + ")")
    x_label, rows = align_layers(runs, names)
    diffs = config_differences([r["identity"].get("config") for r in runs])
    slim = [_slim(r, letter, d) for r, letter, d in zip(runs, letters(len(runs)), diffs)]
    return {
        "runs": slim,
        "sites": sites,
        "variants": variants,
        "x_label": x_label,
        # the depth-profile panels whose columns every run has
        "profiles": panels_json(set.intersection(*(set(r["summary_columns"]) for r in runs))),
        "rows": [{"label": a.label, "x": a.x, "layers": list(a.layers)} for a in rows],
        "default": _default(slim, rows, sites, variants[0]),
    }


def _default(runs: list[dict], rows: list[AlignedLayer], sites: list[str], variant: str) -> dict:
    """Open at the row and site where the runs differ most in their distance to the isotropic law."""
    index = [{(r["layer"], r["site"], r["variant"]): r for r in run["summary"]} for run in runs]
    best, best_gap = (0, sites[0]), -1.0
    for i, row in enumerate(rows):
        for site in sites:
            vals = [idx.get((l, site, variant), {}).get("w1_gaussian") for idx, l in zip(index, row.layers)]
            vals = [v for v in vals if v is not None]
            gap = max(vals) - min(vals) if len(vals) > 1 else 0.0
            if gap > best_gap:
                best, best_gap = (i, site), gap
    return {"row": best[0], "site": best[1], "variant": variant,
            "reason": "where the runs differ most in their distance to the isotropic law at d_model"}
