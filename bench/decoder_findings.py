"""What the decoder shows (issue 25): the per-layer tables of docs/findings.md from two finished runs of one
config, the default `capture.exclude` and `capture.exclude=[]`.

    python bench/decoder_findings.py --excluded RUN_DIR --kept RUN_DIR > tables.md

Reads only the run directories' Parquet files and manifests. Per layer and site: the exact all-pairs mean cosine
(`cos_mean_all`), the fitted isotropic dimension (`d_fit`), the corrected participation ratio, the verdict, and
the coordinate carrying the largest share of the mean cosine or of the variance with both shares
(`tasks.analysis.coordinates`, recomputed from `moments.parquet`: its `cos_share` column is each coordinate's
exact term c_j of the mean cosine and its `variance` the per-coordinate variance, both over every token, so
runs written before the `top_coord_*` summary columns give the same numbers); the massive activations
(Sun et al. 2024) with the tokens and positions that carry them; the residual stream's mean cosine against depth
(Ethayarajh 2019's anisotropy); and the kept-against-excluded comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.analysis.coordinates import top_coordinate  # noqa: E402

SITES = ("resid_post", "attn_out", "mlp_out")
SHORT = {"resid_post": "resid", "attn_out": "attn", "mlp_out": "mlp"}
VERDICT = {"non-gaussian": "non-G", "gaussian-shaped-low-dim": "G-low-d", "near-gaussian": "near-G"}


def write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def load(run: Path) -> dict:
    """The raw summary rows, moments, massive entries and manifest of one run."""
    summary = pd.read_parquet(run / "summary.parquet")
    return {"summary": summary[summary.variant == "raw"].set_index(["layer", "site"]),
            "moments": pd.read_parquet(run / "moments.parquet"),
            "massive": pd.read_parquet(run / "massive.parquet"),
            "manifest": json.loads((run / "manifest.json").read_text())}


def top_coords(run: dict) -> dict[tuple[int, str], object]:
    """`top_coordinate` of every site from moments.parquet."""
    out = {}
    for (layer, site), g in run["moments"].groupby(["layer", "site"]):
        g = g.sort_values("dim")
        out[(int(layer), site)] = top_coordinate(g.cos_share.to_numpy(), g.variance.to_numpy())
    return out


def verdict(row: pd.Series) -> str:
    label = VERDICT.get(row.verdict, row.verdict)
    return label + ("" if row.verdict_confident else "?")


def layer_table(run: dict, title: str) -> None:
    """mean cos (all pairs) / d_fit / PR corrected / verdict per site, and the dominant coordinate where any."""
    tops = top_coords(run)
    write(f"### {title}")
    write()
    write("| layer | " + " | ".join(f"{SHORT[s]}: cos, d_fit, PR, verdict" for s in SITES)
          + " | top coordinate: cos share / var share (* dominates) |")
    write("|---|" + "---|" * (len(SITES) + 1))
    s = run["summary"]
    for layer in sorted({k[0] for k in s.index}):
        cells, notes = [], []
        for site in SITES:
            r = s.loc[(layer, site)]
            cells.append(f"{r.cos_mean_all:.3f}, {r.d_fit:.3g}, {r.pr_corrected:.3g}, {verdict(r)}")
            t = tops[(layer, site)]
            if t.dominates or t.var_share > 0.25 or t.cos_share > 0.25:
                notes.append(f"{SHORT[site]} {t.coord}: {t.cos_share:.2f}/{t.var_share:.2f}" + ("*" if t.dominates else ""))
        write(f"| {layer} | " + " | ".join(cells) + " | " + ("; ".join(notes) or "–") + " |")
    write()


def massive_table(run: dict, title: str) -> None:
    """Per site: max |x|, its ratio to the median, the coordinate, token and position of the top entry, and how
    many of the top entries sit at position 0 / on excluded tokens."""
    m, s = run["massive"], run["summary"]
    write(f"### {title}")
    write()
    write("| layer | site | max abs x | median | ratio | massive dims | top entry: coord, pos, token | top 20 at pos 0 | top 20 coords |")
    write("|---|---|---|---|---|---|---|---|---|")
    for (layer, site), g in m.groupby(["layer", "site"]):
        g = g.sort_values("rank")
        r = s.loc[(layer, site)]
        if r.massive_ratio < 100 and not r.massive_dims:
            continue
        top = g.iloc[0]
        coords = ",".join(f"{c}x{n}" for c, n in g.coord.value_counts().items())
        write(f"| {layer} | {site} | {r.abs_max:.1f} | {r.abs_median:.3g} | {r.massive_ratio:.0f} | {r.massive_dims or '–'} | "
              f"{top.coord}, {top.pos}, {top.token!r} | {(g.pos == 0).sum()} | {coords} |")
    write()


def compare_table(excluded: dict, kept: dict) -> None:
    """Per layer, for each site: the mean cosine, d_fit and corrected PR with the first token excluded and kept,
    and the kept run's largest single-coordinate variance share; then the largest changes over all sites."""
    tk = top_coords(kept)
    se, sk = excluded["summary"], kept["summary"]
    write("### First token excluded (default) against kept (`capture.exclude=[]`)")
    write()
    write("| layer | " + " | ".join(f"{SHORT[s]}: cos excl/kept, d_fit excl/kept, PR excl/kept, var share kept (coord)"
                                   for s in SITES) + " |")
    write("|---|" + "---|" * len(SITES))
    for layer in sorted({k[0] for k in se.index}):
        cells = []
        for site in SITES:
            a, b, t = se.loc[(layer, site)], sk.loc[(layer, site)], tk[(layer, site)]
            cells.append(f"{a.cos_mean_all:.3f}/{b.cos_mean_all:.3f}, {a.d_fit:.3g}/{b.d_fit:.3g}, "
                         f"{a.pr_corrected:.3g}/{b.pr_corrected:.3g}, {t.var_share:.2f} ({t.coord})")
        write(f"| {layer} | " + " | ".join(cells) + " |")
    write()
    joined = se.merge(sk, left_index=True, right_index=True, suffixes=("_excl", "_kept"))
    for col in ("cos_mean_all", "cos_mean", "d_fit", "pr_corrected", "kurtosis_max", "w1_gaussian"):
        diff = (joined[f"{col}_kept"] - joined[f"{col}_excl"]).abs()
        ratio = joined[f"{col}_kept"] / joined[f"{col}_excl"]
        write(f"* {col}: largest |kept - excluded| {diff.max():.4g} at {diff.idxmax()}; kept / excluded from "
              f"{ratio.min():.3g} to {ratio.max():.3g}")
    flips = joined[joined.verdict_excl != joined.verdict_kept]
    write(f"* verdicts that differ: {len(flips)} of {len(joined)}: "
          + ", ".join(f"L{i[0]} {i[1]} {r.verdict_excl} -> {r.verdict_kept}" for i, r in flips.iterrows()))
    write()


def overview(run: dict, name: str) -> None:
    """Counts: verdicts per site, ranges of d_fit and mean cosine, dominated sites."""
    s, tops = run["summary"], top_coords(run)
    c = run["manifest"].get("corpus", {})
    write(f"### {name}: overview")
    write()
    write(f"tokens {c.get('tokens')}, excluded {c.get('tokens_excluded')} ({c.get('excluded_kinds')}), "
          f"sequences {c.get('sequences')}, documents {c.get('documents')}; status {run['manifest'].get('status')}, "
          f"finished {run['manifest'].get('finished')}")
    write()
    for site in SITES:
        g = s.xs(site, level="site")
        counts = g.verdict.value_counts().to_dict()
        firm = int((g.verdict_confident == True).sum())  # noqa: E712 (nullable booleans)
        dom = [layer for layer in g.index if tops[(layer, site)].dominates]
        write(f"* {site}: verdicts {counts} ({firm} confident); cos_mean_all {g.cos_mean_all.min():.3f} to "
              f"{g.cos_mean_all.max():.3f}; d_fit {g.d_fit.min():.3g} to {g.d_fit.max():.3g} (median "
              f"{g.d_fit.median():.3g}); PR corrected {g.pr_corrected.min():.3g} to {g.pr_corrected.max():.3g}; "
              f"kurtosis_max {g.kurtosis_max.min():.3g} to {g.kurtosis_max.max():.3g}; "
              f"dominated by one coordinate at layers {dom or 'none'}")
    write()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--excluded", type=Path, required=True, help="run directory with the default capture.exclude")
    p.add_argument("--kept", type=Path, help="run directory with capture.exclude=[]")
    args = p.parse_args()
    excluded = load(args.excluded)
    overview(excluded, f"{args.excluded} (default exclude)")
    layer_table(excluded, "Per layer, first token excluded (default)")
    massive_table(excluded, "Massive activations, default run (every token, excluded ones included)")
    if args.kept:
        kept = load(args.kept)
        overview(kept, f"{args.kept} (exclude=[])")
        layer_table(kept, "Per layer, every token kept")
        compare_table(excluded, kept)
        write("### Residual stream mean cosine against depth (all pairs, every token)")
        write()
        write("| layer | excluded | kept | excluded, without the top 1 / top 3 coordinates' terms |")
        write("|---|---|---|---|")
        moments = excluded["moments"][excluded["moments"].site == "resid_post"]
        for layer in sorted({k[0] for k in excluded["summary"].index}):
            c = np.sort(moments[moments.layer == layer].cos_share.to_numpy())[::-1]  # terms c_j, sum = mean cosine
            write(f"| {layer} | {excluded['summary'].loc[(layer, 'resid_post')].cos_mean_all:.3f} | "
                  f"{kept['summary'].loc[(layer, 'resid_post')].cos_mean_all:.3f} | "
                  f"{c.sum() - c[0]:.3f} / {c.sum() - c[:3].sum():.3f} |")
        write()


if __name__ == "__main__":
    main()
