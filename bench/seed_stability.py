"""Seed stability: does the demo restate its numbers under another seed, within the intervals it reports?
(issue 3, "the demo model's numbers are stable across seeds within the reported intervals").

    python bench/seed_stability.py [--config configs/demo.yaml] [--seeds 0 1 2] [--runs DIR ...]

Runs the config once per seed (`run.seed` picks the sampled tokens, the second-order tokens, the matched
Gaussian's draws and the bootstrap's; `--runs` reuses finished run directories instead), then, for every
summary number that has a 95 % interval (`X_ci_low`, `X_ci_high`), counts at how many (site, variant) rows each
other seed's estimate falls inside the first seed's interval, and how far outside the misses are (in units of
the interval's half-width). Also: verdict agreement, and the spread of the corpus-wide (every-token) numbers.
With 95 % intervals, about 5 % of rows should miss by chance: and a bit more, since the other seed's estimate
carries its own sampling error (two independent estimates differ by sqrt(2) x one's error).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CORPUS_WIDE = ("cos_mean_all", "cos2_mean_all", "pr_corrected", "kurtosis_max")


def run_seed(config: str, seed: int, out: Path) -> Path:
    cmd = [str(Path(sys.executable).parent / "gpt-stats"), "run", config, "--fresh",
           "--set", f"run.seed={seed}", "--set", f"run.out={out}"]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", help="finished run directories to compare instead of running")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpt-stats-seeds-") as tmp:
        dirs = [Path(d) for d in args.runs] if args.runs else [
            run_seed(args.config, s, Path(tmp) / f"seed{s}") for s in args.seeds]
        tables = [pd.read_parquet(d / "summary.parquet").set_index(["layer", "site", "variant"]).sort_index() for d in dirs]
    ref, others = tables[0], tables[1:]
    names = [c[: -len("_ci_low")] for c in ref.columns if c.endswith("_ci_low") and f"{c[:-7]}_ci_high" in ref.columns]
    print(f"# seed_stability.py {time.strftime('%Y-%m-%d')}: {len(dirs)} runs of {Path(args.config).name}; reference: the "
          f"first run's 95 % intervals, {len(ref)} (layer, site, variant) rows")
    print(f"{'statistic':28s} {'inside':>12s} {'worst miss (half-widths)':>26s}")
    for name in names:
        est = name
        low, high = ref[f"{name}_ci_low"], ref[f"{name}_ci_high"]
        inside = total = 0
        worst = 0.0
        for other in others:
            x = other[est].reindex(ref.index)
            ok = low.notna() & x.notna()
            half = ((high - low) / 2)[ok]
            centre = ((high + low) / 2)[ok]
            dist = (x[ok] - centre).abs() / half.where(half > 0, np.nan)
            inside += int(((x[ok] >= low[ok]) & (x[ok] <= high[ok])).sum())
            total += int(ok.sum())
            worst = max(worst, float(dist.max()) if len(dist) else 0.0)
        if total:
            print(f"{est:28s} {inside:5d} / {total:<5d} {worst:26.2f}")
    agree = sum(int((o["verdict"].reindex(ref.index) == ref["verdict"]).sum()) for o in others)
    print(f"verdict: {agree} of {len(ref) * len(others)} rows the same as the reference")
    if "verdict_confident" in ref.columns:
        confident = ref["verdict_confident"].fillna(False).astype(bool)
        flips = [o["verdict"].reindex(ref.index) != ref["verdict"] for o in others]
        flagged = sum(int((f & ~confident).sum()) for f in flips)
        kept = sum(int((~f & confident).sum()) for f in flips)
        print(f"  flipped rows flagged borderline (verdict_confident false) in the reference: {flagged} of "
              f"{sum(int(f.sum()) for f in flips)}; rows marked confident that kept their verdict: {kept} of "
              f"{int(confident.sum()) * len(others)}")
    raw = [t.xs("raw", level="variant") for t in tables]
    for col in CORPUS_WIDE:
        if col in raw[0].columns:
            v = np.stack([r[col].to_numpy(dtype=float) for r in raw])
            rel = np.nanmax(np.abs(v - v[0]) / np.abs(v[0]).clip(1e-12))
            print(f"corpus-wide {col:16s} max relative change across seeds: {rel:.2e}")


if __name__ == "__main__":
    main()
