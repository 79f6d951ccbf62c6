"""Benchmark: drawing a run directory's plots (`tasks.report.plots.draw_plots`), in one process.

    .venv/bin/python bench/plots.py RUN_DIR [--against DIR] [--rounds 2]

Draws every plot of a copy of RUN_DIR with `workers=1` (the per-figure cost, without the spawned processes'
start), each time in a fresh process, alternating this checkout's code and, with `--against`, another checkout's.
Prints the seconds of each drawing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(code: str, run_dir: str) -> None:
    sys.path.insert(0, code)
    from tasks.report.plots import draw_plots

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy)
        t0 = time.perf_counter()
        n = len(draw_plots(copy, workers=1))
        print(f"{n} {time.perf_counter() - t0:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--against", help="another checkout of this repository, measured in the same run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.run_dir)
    codes = {"this checkout": str(ROOT)}
    if args.against:
        codes[f"--against {args.against}"] = str(Path(args.against).resolve())
    print(f"# plots.py {time.strftime('%Y-%m-%d')}: draw_plots({args.run_dir}, workers=1), {args.rounds} rounds")
    for _ in range(args.rounds):
        for name, code in codes.items():
            out = subprocess.run([sys.executable, __file__, args.run_dir, "--worker", code], capture_output=True,
                                 text=True, check=True).stdout.split()
            print(f"  {name:40s} {out[0]} plots in {float(out[1]):6.1f} s")


if __name__ == "__main__":
    main()
