"""End to end: the demo's wall time split by stage, and tokens per second overall (issue 6, benchmark 3).

    python bench/end_to_end.py [--config configs/demo.yaml] [--set KEY=VALUE ...]

Runs `gpt-stats run CONFIG --fresh` in a subprocess (into a temporary run directory unless `run.out` is set),
timing the whole command from outside, then reads the run's `manifest.json` (the driver's own stage timers, each
actor's model-load time) and the shard records (each shard's capture seconds). Prints every stage with its share
of the command's wall time, so that the largest one is plain to see. Model load and the analysis's parts happen
inside the stages that contain them and are printed indented under them.
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
STAGES = [("validate", "validate (config, model config, run dir)"), ("corpus", "corpus (read, tokenize, shard)"),
          ("cluster_start", "cluster start (local Ray)"), ("resume_check", "resume check"),
          ("capture", "capture (actors: model load, forward, sample, statistics)"),
          ("merge", "merge (samples and statistics partials)"),
          ("similarity", "similarity and baselines (one task per site)"),
          ("report", "report (tables, plots, report.html)"), ("sanity", "model sanity check")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpt-stats-e2e-") as tmp:
        out = next((s.split("=", 1)[1] for s in args.set if s.startswith("run.out=")), str(Path(tmp) / "run"))
        cmd = [str(Path(sys.executable).parent / "gpt-stats"), "run", args.config, "--fresh", "--set", f"run.out={out}",
               *[x for s in args.set if not s.startswith("run.out=") for x in ("--set", s)]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        records = [json.loads(f.read_text()) for f in sorted((Path(out) / "shards").glob("*.json"))]
    t = manifest["timings"]
    tokens = manifest["corpus"]["tokens"]
    load = max((a.get("load_seconds", 0.0) for a in manifest.get("actors", [])), default=0.0)
    shard_s = sum(r["seconds"] for r in records)
    write_s = sum(r.get("write_seconds", 0.0) for r in records)
    n_actors = len(manifest.get("actors", [])) or 1
    print(f"# end_to_end.py {time.strftime('%Y-%m-%d')}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}")
    print(f"model {manifest['model'].get('name', '?')}, {tokens:,} tokens, {len(records)} shards, {n_actors} actor(s), "
          f"{len(manifest['config']['capture']['sites'])} site kinds")
    print(f"{'stage':62s} {'seconds':>8s} {'share':>6s}")
    print(f"{'command wall time (Python start, imports, the run)':62s} {wall:8.1f} {1:6.0%}")
    print(f"{'  outside the driver (interpreter start, imports, exit)':62s} {wall - t['total']:8.1f} {(wall - t['total']) / wall:6.0%}")
    for key, label in STAGES:
        if key in t:
            print(f"{'  ' + label:62s} {t[key]:8.1f} {t[key] / wall:6.0%}")
        if key == "capture" and key in t:
            print(f"{'    actors starting (until all ready)':62s} {t.get('capture_startup', float('nan')):8.1f}")
            print(f"{'    model load (slowest actor, in parallel)':62s} {load:8.1f}")
            print(f"{'    driver CPU (dispatch, bookkeeping)':62s} {t.get('capture_driver_cpu', float('nan')):8.1f}")
            print(f"{f'    shard work, summed over {n_actors} actors':62s} {shard_s:8.1f}  "
                  f"({tokens / max(shard_s, 1e-9) * n_actors:,.0f} tokens/s across actors)")
            print(f"{'    shard sample writes, summed over actors':62s} {write_s:8.1f}")
        if key == "similarity":
            parts = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("similarity_parts.")}
            for part, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"{f'    {part} (task seconds summed over sites)':62s} {sec:8.1f}")
    print(f"tokens/s overall: {tokens / wall:,.0f} (command wall time); capture stage alone: {tokens / t['capture']:,.0f}")


if __name__ == "__main__":
    main()
