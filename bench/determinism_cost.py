"""The cost of fixed statistics groups against the scheduling before them: capture seconds, partials (count,
largest and total bytes) and the time to the first written partial, for the same config run by two checkouts.

    python bench/determinism_cost.py MODEL TEXT --trees . /tmp/det-base --every 4 64 [--set key=value ...]

Each run is `python -m workflows.run` of the tests' tiny config (`tests/conftest.py::tiny_config`, 2 actors,
2 shards in flight) with `stats.flush_every` set, in a process of its own with PYTHONPATH=TREE (a local Ray
cluster each), one after another; the tables of runs with the same `--every` are compared byte for byte across
trees (the same bytes only where the groups are the same: never across trees, which group otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(tree: Path, config: Path, out: Path, every: int, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    sets = [f"run.out={out}", f"stats.flush_every={every}", *extra]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "workflows.run", str(config), *[a for s in sets for a in ("--set", s)]],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = json.loads((out / "manifest.json").read_text())
    partials = sorted((out / "stats").glob("*.npz"))
    sizes = [p.stat().st_size for p in partials]
    first_shard = min(p.stat().st_mtime for p in (out / "shards").glob("*.json"))
    first_partial = min(p.stat().st_mtime for p in partials)
    return {"capture_s": m["timings"]["capture"], "total_s": time.time() - t0, "shards": m["shards"]["total"],
            "partials": len(partials), "largest_mib": max(sizes) / 2**20, "all_mib": sum(sizes) / 2**20,
            "first_partial_after_first_shard_s": first_partial - first_shard}


def main() -> None:
    import yaml

    from tests.conftest import tiny_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--trees", nargs="+", default=[str(ROOT)])
    p.add_argument("--every", nargs="+", type=int, default=[4, 64])
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="det-cost-"))
    cfg = tiny_config(Path(args.model), Path(args.text), tmp / "unused", "cluster.actors=2",
                      "cluster.shards_in_flight=2", *args.set)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    print(f"# determinism_cost.py {time.strftime('%Y-%m-%d %H:%M')}: {' '.join(sys.argv[1:])}")
    print(f"{'tree':<28} {'every':>5} {'shards':>6} {'capture s':>9} {'run s':>6} {'partials':>8} "
          f"{'largest MiB':>11} {'all MiB':>8} {'1st partial s':>13}")
    for every in args.every:
        for i, tree in enumerate(args.trees):
            r = one_run(Path(tree).resolve(), config, tmp / f"run-{every}-{i}", every, args.set)
            print(f"{tree:<28} {every:>5} {r['shards']:>6} {r['capture_s']:>9.2f} {r['total_s']:>6.1f} "
                  f"{r['partials']:>8} {r['largest_mib']:>11.2f} {r['all_mib']:>8.2f} "
                  f"{r['first_partial_after_first_shard_s']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
