"""Benchmark: the driver's overhead per shard (dispatch, bookkeeping, merge) against the shard compute time.

    .venv/bin/python bench/scaling.py [--shard-tokens 1000,8000] [--repeats 3] [--actors 2] [--profile]

Runs the real driver (`workflows.driver.run`) on a local Ray cluster that this script starts and stops, with a
tiny random GPT-2 (2 layers, 64 wide, the test fixtures' tokenizer) over the tests' text (tests/fixtures/prose.txt) cut into many small
shards, streaming statistics on, so that the driver's per-shard costs are as large as they can be next to the
compute. Prints, all measured in this run (medians over --repeats runs per shard size, on one Ray cluster):
  * per shard: the actors' compute time (`seconds` in the shard records), the driver process's CPU time during
    the capture stage (`timings.capture_driver_cpu`), the actor time lost to anything but compute (capture wall
    after the actors were ready, times the actors, minus the compute), the merge stage's wall time, and the
    merge's own work (the first merge level over the run's shard files, in this process);
  * with two shard sizes, the cost of one more shard (slope) and the fixed part (intercept);
  * the extrapolation to 1,000 shards on 64 actors of GPT-2-XL work, with its arithmetic: the driver's share of
    the run's time, and the share of the driver's time that dispatching at the rate of 64 actors takes.
With --profile, the capture stage's driver is run under cProfile and its top functions printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROSE = ROOT / "tests" / "fixtures" / "prose.txt"
TOKENIZER = ROOT / "tests" / "fixtures" / "bpe-tokenizer"
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# GPT-2-XL capture rate on one H200 (BENCHMARKS.md, "GPU check"): bare forward 113,734 tokens/s; dense capture
# costs 1.71x the bare forward time. With statistics on, every batch runs its forward pass, so the bare forward
# is the floor of a shard's time.
H200_BARE_TOK_S = 113_734
H200_CAPTURE_FACTOR = 1.71


def tiny_model(folder: Path) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=2048, bos_token_id=0, eos_token_id=0)
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    return folder


def idle_driver_cpu_rate(seconds: float) -> float:
    """CPU seconds per second that this process (a connected Ray driver) burns while doing nothing."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.perf_counter() - t0)


def one_run(driver, cfg) -> dict:
    """Run the driver once into a fresh run directory; the per-run totals the figures are made of."""
    from tasks.merge.tree import merge_shard_files

    out = Path(driver.run(cfg))
    manifest = json.loads((out / "manifest.json").read_text())
    records = [json.loads(f.read_text()) for f in sorted((out / "shards").glob("shard-*.json"))]
    # The merge's work per shard, apart from the stage's fixed costs (task workers starting, the statistics
    # partials): the first merge level over every shard file, in this process, after one warm-up pass.
    files = sorted((r["shard"], r["sha256"]) for r in records if r.get("n_kept"))
    merge_shard_files(cfg.sample.size, str(out), files)
    t0 = time.perf_counter()
    merge_shard_files(cfg.sample.size, str(out), files)
    merge_files = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    t = manifest["timings"]
    n = len(records)
    a = min(cfg.cluster.actors, n)
    compute = sum(r["seconds"] for r in records)
    return {
        "n": n, "actors": a, "tokens": sum(r["n_tokens"] for r in records), "compute": compute,
        "t_shard": compute / n, "capture": t["capture"], "startup": t["capture_startup"], "cpu": t["capture_driver_cpu"],
        "gap": a * (t["capture"] - t["capture_startup"]) - compute,  # actor-seconds not computing, once all were ready
        "merge": t["merge"], "merge_files": merge_files, "sites": len(manifest["model"]["sites"]) * len(manifest["model"]["layers"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=str(PROSE))
    p.add_argument("--max-docs", type=int, default=2000, help="first N non-empty lines of the text")
    p.add_argument("--shard-tokens", default="1000,8000",
                   help="comma-separated shard sizes: the first gives the per-shard figures, two give the marginal "
                        "cost per extra shard (slope) and the fixed cost (intercept)")
    p.add_argument("--repeats", type=int, default=3, help="runs per shard size (medians are printed)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--shards-in-flight", type=int, default=2)
    p.add_argument("--sample", type=int, default=300)
    p.add_argument("--profile", action="store_true", help="cProfile the driver during the capture stages")
    p.add_argument("--top", type=int, default=25, help="functions printed with --profile")
    p.add_argument("--target-shards", type=int, default=1000)
    p.add_argument("--target-actors", type=int, default=64)
    p.add_argument("--target-shard-tokens", type=int, default=32768)
    args = p.parse_args()
    sizes = [int(x) for x in args.shard_tokens.split(",")]
    os.environ.update(ENV)

    import ray
    import torch

    from workflows import driver
    from workflows.config import config_from_dict

    work = Path(tempfile.mkdtemp(prefix="gs-scaling-", dir="/tmp"))
    ray_temp = tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp")
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    profiler = cProfile.Profile() if args.profile else None
    try:
        model = tiny_model(work / "tiny-gpt2")

        def config(size: int, index: int):
            return config_from_dict({
                "model": {"name": str(model), "dtype": "float32"},
                "corpus": {"source": "files", "files": [args.text], "max_docs": args.max_docs, "shard_tokens": size},
                "capture": {"layers": "all", "batch_tokens": 1024},
                "sample": {"size": args.sample},
                "similarity": {"bins": 60, "tile": 128},
                "stats": {"bootstrap": 20},
                "cluster": {"actors": args.actors, "cpus_per_actor": args.cpus_per_actor,
                            "shards_in_flight": args.shards_in_flight},
                "run": {"seed": 0, "out": str(work / f"run-{size}-{index}")},
                "report": {"prompts": [], "sanity_tokens": 0},
            }, [])

        ray.init(num_cpus=max(2, int(np.ceil(args.actors * args.cpus_per_actor))), include_dashboard=False,
                 object_store_memory=400 * 1024 * 1024, _temp_dir=ray_temp,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **ENV}}, logging_level="WARNING", log_to_driver=False)
        idle_rate = idle_driver_cpu_rate(3.0)
        if profiler is not None:
            inner = driver.run_capture

            def profiled(*a, **kw):
                profiler.enable()
                try:
                    return inner(*a, **kw)
                finally:
                    profiler.disable()

            driver.run_capture = profiled
        for index in range(args.repeats):  # sizes interleaved, so drifts in the machine's load hit both alike
            for size in sizes:
                runs[size].append(one_run(driver, config(size, index)))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)

    def med(size: int, key: str, per_shard: bool = False) -> float:
        return statistics.median(r[key] / r["n"] if per_shard else r[key] for r in runs[size])

    first = runs[sizes[0]][0]
    print(f"# driver scaling benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}")
    print(f"tiny GPT-2 (2 layers x 64), {first['sites']} sites, statistics on, {first['tokens']:,} tokens, "
          f"{first['actors']} actors ({args.cpus_per_actor:g} CPU each), {args.shards_in_flight} shards in flight per "
          f"actor; medians of {args.repeats} runs per shard size; idle Ray driver burns {idle_rate * 1e3:.1f} ms CPU/s")
    print(f"{'shard tokens':>12} {'shards':>6} {'capture s':>9} {'ready s':>7} {'merge s':>7} | per shard: "
          f"{'compute':>9} {'driver CPU':>14} {'actor gap':>14} {'merge stage':>14} {'merge files':>14}")
    for size in sizes:
        ts = med(size, "t_shard")
        cells = [f"{med(size, key, True) * 1e3:6.2f} ms {med(size, key, True) / ts:5.1%}"
                 for key in ("cpu", "gap", "merge", "merge_files")]
        print(f"{size:>12,} {med(size, 'n'):>6.0f} {med(size, 'capture'):>9.2f} {med(size, 'startup'):>7.2f} "
              f"{med(size, 'merge'):>7.2f} |            {ts * 1e3:6.2f} ms " + " ".join(f"{c:>14}" for c in cells))
    print("  (per shard, and as a share of its compute: driver CPU = the driver process's CPU time during capture;\n"
          "   actor gap = actors x (capture - ready) - sum of the shards' compute seconds; merge stage = its wall\n"
          "   time; merge files = the first merge level over all shard files, one process, wall)")
    small = sizes[0]
    c = med(small, "cpu", True)  # driver CPU per shard at the smallest shards, fixed costs included: conservative
    m = med(small, "merge_files", True)  # merge work per shard, on one core (the tree's tasks run in parallel)
    if len(sizes) > 1:
        big = sizes[1]
        dn = med(small, "n") - med(big, "n")
        for key, label in (("cpu", "driver CPU"), ("gap", "actor gap"), ("merge", "merge wall")):
            slope = (med(small, key) - med(big, key)) / dn
            fixed = med(small, key) - slope * med(small, "n")
            print(f"marginal {label:10s} per extra shard = ({med(small, key):.3f} - {med(big, key):.3f}) s / "
                  f"({med(small, 'n'):.0f} - {med(big, 'n'):.0f}) = {slope * 1e3:6.2f} ms; fixed part {fixed:6.2f} s")

    # Extrapolation: N shards on A actors, each shard `target_shard_tokens` GPT-2-XL tokens on an H200.
    N, A = args.target_shards, args.target_actors
    print(f"extrapolation to {N:,} shards on {A} actors, {args.target_shard_tokens:,} GPT-2-XL tokens per shard "
          f"(H200, BENCHMARKS.md: bare forward {H200_BARE_TOK_S:,} tok/s, capture {H200_CAPTURE_FACTOR}x bare):")
    print(f"  driver per shard c = {c * 1e3:.2f} ms (CPU at {small:,}-token shards, fixed costs included); "
          f"merge per shard m = {m * 1e3:.2f} ms (merge files, one core)")
    for label, factor in (("capture", H200_CAPTURE_FACTOR), ("bare forward (floor)", 1.0)):
        ts = args.target_shard_tokens / H200_BARE_TOK_S * factor
        compute_wall = N * ts / A
        rate = A / ts
        util = c * rate
        serial = N * (c + m)
        print(f"  shard time, {label}: t = {args.target_shard_tokens:,} / {H200_BARE_TOK_S:,} x {factor} = {ts:.3f} s; "
              f"capture N t / A = {N:,} x {ts:.3f} / {A} = {compute_wall:.2f} s")
        print(f"    per shard: driver c / t = {c * 1e3:.2f} / {ts * 1e3:.0f} ms = {c / ts:.2%} (target < 1 %: "
              f"{'met' if c < 0.01 * ts else 'not met'}); merge m / t = {m * 1e3:.2f} / {ts * 1e3:.0f} ms = {m / ts:.2%}")
        print(f"    dispatch: A / t = {A} / {ts:.3f} = {rate:.1f} shards/s; driver busy c x A / t = {c * 1e3:.2f} ms x "
              f"{rate:.1f}/s = {util:.1%} of the time ({1 / util:.1f}x headroom before it cannot keep up)")
        print(f"    serial worst case (dispatch not overlapped, merge on one core): (N c + N m) / (N t / A + N c + N m) = "
              f"({N * c:.2f} + {N * m:.2f}) / ({compute_wall:.2f} + {N * c:.2f} + {N * m:.2f}) = "
              f"{serial / (compute_wall + serial):.1%}; under 1 % would need c + m <= 1 % x t / A = {0.01 * ts / A * 1e6:.0f} us")

    if profiler is not None:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(args.top)
        print("\n# cProfile of the driver during the capture stages (sorted by own time; wall clock, waits included)")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip()))


if __name__ == "__main__":
    main()
