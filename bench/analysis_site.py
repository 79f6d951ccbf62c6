"""Benchmark: the similarity stage's task for one site (`tasks.analysis.site.analyze_site`), against another checkout.

    .venv/bin/python bench/analysis_site.py [--against DIR] [--n 2000] [--d 384] [--repeats 4]

One site as the demo's similarity task sees it: a sample of n states of width d (anisotropic, with a mean and
shared document directions, 60 tokens per document), its streaming statistics over 10 x n tokens of the same law,
the three variants (raw, centred, standardised) with their matched Gaussians, 200 bins, 200 bootstrap replicates.
Prints the task's wall time (best and median of --repeats, after a warm-up) and its own split (write, corpus,
histogram, bootstrap, baselines), and a few of its numbers. With `--against DIR` (a checkout of this repository,
e.g. `git worktree add /tmp/old <commit>`), the same run with that checkout's code, in its own process, interleaved:
the peer in the same run, and a check that the numbers agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from synthetic_site import synthetic_site  # bench/ is the script's folder: on sys.path

ROOT = Path(__file__).resolve().parent.parent


def one(code: str, n: int, d: int, repeats: int) -> dict:
    """Run `analyze_site` with the code of checkout `code` (this script re-run in a subprocess)."""
    out = subprocess.run([sys.executable, __file__, "--worker", code, "--n", str(n), "--d", str(d),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(code: str, n: int, d: int, repeats: int) -> None:
    import time

    sys.path.insert(0, code)
    from tasks.analysis.site import analyze_site
    from tasks.stats.site import SiteStatistics

    sample, keys, stats = synthetic_site(n, d, SiteStatistics)
    kw = dict(bins=200, tile=1024, quantiles=(0.001, 0.01, 0.5, 0.99, 0.999), store_root=tempfile.mkdtemp(),
              save_samples=False, stats=stats, n_boot=200)
    analyze_site(0, "resid_post", sample, keys, **kw)  # warm-up
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = analyze_site(0, "resid_post", sample, keys, **kw)
        walls.append(time.perf_counter() - t0)
    v = r["variants"]
    numbers = {"cos_mean": v["raw"]["cos_mean"], "w1_matched_ci_low": v["raw"]["w1_matched_ci_low"],
               "cos2_ci_high": v["centered"]["cos2_ci"][1], "d_fit": v["standardized"]["d_fit"],
               "cos_var_left_top1": v["raw"]["cos_var_left_top1"]}
    print(json.dumps({"best": min(walls), "median": float(np.median(walls)), "split": r["timings"], "numbers": numbers}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", help="another checkout of this repository, measured in the same run")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both checkouts")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.n, args.d, args.repeats)
    import time

    codes = {"this checkout": str(ROOT)}
    if args.against:
        codes[f"--against {args.against}"] = str(Path(args.against).resolve())
    print(f"# analysis_site.py {time.strftime('%Y-%m-%d')}: analyze_site, n={args.n}, d={args.d}, 3 variants, "
          f"200 bins, 200 bootstrap replicates; best/median of {args.repeats} per round, {args.rounds} rounds")
    results: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(args.rounds):
        for name, code in codes.items():
            results[name].append(one(code, args.n, args.d, args.repeats))
    for name, runs in results.items():
        best = min(r["best"] for r in runs)
        median = float(np.median([r["median"] for r in runs]))
        split = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1]["split"].items())
        print(f"  {name:40s} best {best:.3f} s, median {median:.3f} s  ({split})")
        print(f"    numbers: {runs[-1]['numbers']}")
    if args.against:
        mine, theirs = (min(r["best"] for r in runs) for runs in results.values())
        print(f"  this checkout / --against: {mine / theirs:.3f} (best times)")


if __name__ == "__main__":
    main()
