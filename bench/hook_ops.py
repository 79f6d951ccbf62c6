"""What the capture hooks cost the host per site and forward pass, counted and timed, against another checkout.

    .venv/bin/python bench/hook_ops.py [--against DIR]

1. Ops: torch operations dispatched per site and forward pass with the streaming statistics on (default
   `second_order_fraction`, position 0 excluded), along the path a GPU takes (the hooks never ask the device
   whether a batch's states are all finite, and take their row norms in one float64 reduction), counted at torch's
   dispatcher on a 2-layer GPT-2 on the CPU: all ops, those that are not views (each one a kernel launch on a GPU),
   and those that make a GPU's host wait for the card (`nonzero`, a boolean-mask gather, `bincount`, `item`).
   Op counts do not depend on the width, so a small model gives the count a GPU's host pays per site.
2. Time: the statistics part of the hook (`SiteStatistics.add` of the gathered rows, and `add_massive` of the batch
   where the checkout has it) for 36 sites of 4,096 x 768 float32 states, on this CPU, on a first batch (empty accumulators) and a later one (best of 5).
With `--against DIR` (a checkout, e.g. `git worktree add /tmp/old <commit>`), the same in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def dispatch_counts():
    """`tasks.capture.dispatch_counts` of this checkout, loaded by path: the checkout measured may predate it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dispatch_counts", HERE / "tasks" / "capture" / "dispatch_counts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker() -> dict:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2Model

    counting = dispatch_counts()  # before the measured checkout's `tasks` is imported
    import tasks.capture.hooks
    from tasks.capture.actor import ShardCapturer
    from tasks.corpus.shards import Exclusion, Shard
    try:
        from tasks.stats.reductions import row_norms
        from tasks.stats.site import SiteStatistics
    except ImportError:  # a checkout from before tasks/stats/moments.py was split (for --against)
        from tasks.stats.moments import SiteStatistics, row_norms
    from workflows.config import StatsConfig

    torch.set_grad_enabled(False)
    if hasattr(tasks.capture.hooks, "_fed"):  # the GPU's path: weights always, no finiteness check
        tasks.capture.hooks._fed = lambda finite: finite
    tasks.capture.hooks.row_norms = lambda x: torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64)
    try:  # a GPU counts the |x| bins of the massive activations with histc (bincount would synchronise)
        import tasks.stats.massive as massive

        gpu_counts = massive._count_into
        massive._count_into = lambda counts, idx: counts.add_(massive.histc_counts(idx, len(counts)))
    except ImportError:  # a checkout from before them
        massive = None

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=2048, n_positions=256)
    model = GPT2Model._from_config(cfg, attn_implementation="sdpa").eval()
    sites = [(layer, s) for layer in range(2) for s in ("resid_post", "attn_out", "mlp_out")]  # older checkouts lack tasks.sites
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 2048, 4 * 128).astype(np.int32)
    shard = Shard(0, ids, np.arange(5, dtype=np.int64) * 128, np.arange(4), np.zeros(4, np.int64))
    fraction = StatsConfig().second_order_fraction
    counts = {}
    for label, sites_on, stats in (("bare", [], None), ("hooks", sites, fraction)):
        cap = ShardCapturer.from_model(model, "gpt2", sites_on or sites)
        run = (lambda: cap.process(shard, 10, np.uint64(0), 0, 512, stats_fraction=stats,
                                   exclusion=Exclusion(True, ()))) if sites_on else \
            (lambda: model(input_ids=torch.as_tensor(ids.reshape(4, 128).astype(np.int64))))
        run()
        cap.stats = None
        run()  # accumulators exist, as after the first batch
        with counting.DispatchCounter() as ops:
            run()
        counts[label] = ops.count
    extra = counts["hooks"] - counts["bare"]  # no sample (threshold 0): the hooks and the statistics
    per = len(sites)
    result = {"ops": sum(extra.values()) / per, "kernels": ops.kernels(extra) / per,
              "syncs": ops.synchronising(extra) / per}
    # time: the statistics part of the hook, CPU path
    if massive is not None:
        massive._count_into = gpu_counts
    torch.manual_seed(1)
    states = [torch.randn(4096, 768) * (1 + 10 * torch.rand(768)) for _ in range(6)]
    second = torch.nonzero(torch.rand(4096) < fraction).reshape(-1)

    kept = torch.ones(4096, dtype=torch.bool)
    identity = None
    if hasattr(SiteStatistics, "add_massive"):  # the massive activations: the whole batch, with weights, as the hook
        from tasks.stats.massive import RowIdentity

        identity = RowIdentity.of({"doc": np.arange(4096) // 512, "window": np.zeros(4096, np.int64),
                                   "pos": np.arange(4096) % 512, "token_id": np.arange(4096)})

    def feed(all_stats):
        t0 = time.perf_counter()
        for i, st in enumerate(all_stats):
            x = states[i % 6]
            st.add(x, second_order_rows=second, norms=row_norms(x))
            if identity is not None:
                st.add_massive(x, weights=kept, identity=identity)
        return time.perf_counter() - t0

    first = min(feed([SiteStatistics() for _ in range(36)]) for _ in range(5))
    warm = [SiteStatistics() for _ in range(36)]
    feed(warm)
    later = min(feed(warm) for _ in range(5))
    result.update(first_ms=first * 1e3, later_ms=later * 1e3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", help="another checkout to measure the same way")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        sys.path.insert(0, args.worker)
        print(json.dumps(worker()))
        return
    here = str(HERE)
    print(f"# hook_ops.py {time.strftime('%Y-%m-%d')}: per site and forward pass, statistics on (GPU's path for the "
          f"counts); statistics part of the hook for 36 sites of 4,096 x 768 on this CPU")
    for name, root in (("this checkout", here), ("--against", args.against)):
        if root is None:
            continue
        out = subprocess.run([sys.executable, __file__, "--worker", str(Path(root).resolve())], capture_output=True,
                             text=True, check=True, cwd=root)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {name:14s} {r['ops']:6.1f} ops, {r['kernels']:6.1f} not views, {r['syncs']:4.1f} synchronising;"
              f"  hook statistics {r['first_ms']:5.0f} ms first batch, {r['later_ms']:5.0f} ms later  ({root})")


if __name__ == "__main__":
    main()
