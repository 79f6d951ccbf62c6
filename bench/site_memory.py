"""Benchmark: the site task's peak memory (`tasks.analysis.site.analyze_site`) against `similarity.bins`.

    .venv/bin/python bench/site_memory.py [--bins 200 2000 20000 100000] [--n 300] [--d 384] [--limit-gb 6]
                                          [--against DIR]

One site as a demo-sized run's similarity task sees it (n sampled states of width d, 60 tokens per document, its
streaming statistics, the three variants with their matched Gaussians, 200 bootstrap replicates), once per value of
bins, each in its own process. Prints that process's peak resident memory (`ru_maxrss`) and wall time. Each process
runs under an address-space limit of --limit-gb: a task that would need more fails at once (`over the limit`)
instead of driving the machine into swap. With `--against DIR` (another checkout), the same with its code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic_site import synthetic_site  # bench/ is the script's folder: on sys.path

ROOT = Path(__file__).resolve().parent.parent


def worker(code: str, n: int, d: int, bins: int, limit_gb: float) -> None:
    import resource

    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, code)
    import torch

    from tasks.analysis.site import analyze_site
    try:
        from tasks.stats.site import SiteStatistics
    except ImportError:  # a checkout from before tasks/stats/moments.py was split (for --against)
        from tasks.stats.moments import SiteStatistics

    torch.set_num_threads(1)
    sample, keys, stats = synthetic_site(n, d, SiteStatistics)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        r = analyze_site(0, "resid_post", sample, keys, bins=bins, tile=1024, quantiles=(0.01, 0.5, 0.99),
                         store_root=tempfile.mkdtemp(), save_samples=False, stats=stats, n_boot=200)
        ok, w1 = True, r["variants"]["raw"]["w1_matched_ci_high"]
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        ok, w1 = False, f"{type(exc).__name__}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ok": ok, "peak_mib": peak / 1024, "before_mib": before / 1024,
                      "seconds": time.perf_counter() - t0, "w1_matched_ci_high": w1}))


def one(code: str, n: int, d: int, bins: int, limit_gb: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", code, "--n", str(n), "--d", str(d),
                          "--bins", str(bins), "--limit-gb", str(limit_gb)], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {"ok": False, "peak_mib": float("nan"), "before_mib": float("nan"), "seconds": float("nan"),
                "w1_matched_ci_high": (out.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=int, nargs="+", default=[200, 2000, 20000, 100000])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--limit-gb", type=float, default=6.0)
    p.add_argument("--against", help="another checkout of this repository, measured in the same run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.n, args.d, args.bins[0], args.limit_gb)
    codes = {"this checkout": str(ROOT)}
    if args.against:
        codes[f"--against {args.against}"] = str(Path(args.against).resolve())
    print(f"# site_memory.py {time.strftime('%Y-%m-%d')}: analyze_site, n={args.n}, d={args.d}, 3 variants, "
          f"200 bootstrap replicates, one process per row, address space limited to {args.limit_gb:g} GiB")
    print(f"| {'code':24s} | {'bins':>7s} | {'peak RSS MiB':>12s} | {'(before the task)':>17s} | {'seconds':>8s} | result |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 14}|{'-' * 19}|{'-' * 10}|--------|")
    for bins in args.bins:
        for name, code in codes.items():
            r = one(code, args.n, args.d, bins, args.limit_gb)
            result = "ok" if r["ok"] else f"over the limit ({r['w1_matched_ci_high']})"
            print(f"| {name:24s} | {bins:7d} | {r['peak_mib']:12.0f} | {r['before_mib']:17.0f} | {r['seconds']:8.2f} | {result} |",
                  flush=True)


if __name__ == "__main__":
    main()
