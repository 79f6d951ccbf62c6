"""Where the statistics part of the capture hooks spends its time, on one batch of a model's real states.

    python bench/hook_profile.py [--model gguf] [--cache /tmp/acts.pt] [--repeats 5] [--profile] [--fraction F]

Runs one default-statistics batch through `ShardCapturer.process` (the model of `bench/capture_overhead.py`:
`--model gpt2|gguf|package:...`, `--gguf PATH`), keeping every site's output and the recorder's inputs (selection,
real-token mask, `StatsFeed`); `--cache FILE` saves them (or loads them, skipping the model). Then it calls the
recorder's own hooks on those outputs, as a forward pass would: the hooks' whole cost without the model (gather
of the sample rows, norms, finiteness, every statistic). The statistics are fed the batch once before timing, so
that every timed call is a later batch (merged into accumulators, as in a run's steady state). Prints the best of
`--repeats`, and with `--profile` the torch ops by self CPU time (torch.profiler) and the Python functions by
cumulative time (cProfile) of one more call. `--states FILE.npz` saves the statistics' states after two batches
(the warm-up and one more), to compare two checkouts bit for bit.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks.capture.actor as actor  # noqa: E402
from capture_overhead import gguf_model, gguf_path, model_of  # noqa: E402
from tasks.capture.actor import ShardCapturer  # noqa: E402
from tasks.capture.models import site_table  # noqa: E402
from tasks.capture.sampling import candidate_threshold  # noqa: E402
from tasks.corpus.shards import Exclusion, Shard  # noqa: E402
from tasks.sites import SITES  # noqa: E402
from tasks.stats.site import SiteStatistics, stack_states  # noqa: E402
from workflows.config import StatsConfig  # noqa: E402


def record(args) -> dict:
    """One batch through the model with statistics on: the sites' outputs and the recorder's inputs."""
    path = gguf_path(args.model, args.gguf)
    if path is None:
        model, model_type, vocab, special = model_of(12, 768, 12, "cpu", torch.float32), "gpt2", 50257, (50256,)
    else:
        model = gguf_model(path, "cpu", torch.float32)
        cfg = model.config
        model_type, vocab = cfg.model_type, cfg.vocab_size
        special = tuple(sorted({i for i in (cfg.bos_token_id, cfg.eos_token_id) if i is not None}))
    layers = model.config.num_hidden_layers
    sites = [(layer, s) for layer in range(layers) for s in SITES]
    n_seq = args.tokens // args.seq
    ids = np.random.default_rng(0).integers(0, vocab, size=n_seq * args.seq).astype(np.int32)
    shard = Shard(0, ids, np.arange(n_seq + 1, dtype=np.int64) * args.seq, np.arange(n_seq, dtype=np.int64),
                  np.zeros(n_seq, np.int64))
    cap = ShardCapturer.from_model(model, model_type, sites)
    outputs: list[torch.Tensor] = []
    saved: dict = {}
    inner = actor.forward_and_gather

    def spy(model, recorder, *rest):
        handles = [recorder.model.get_submodule(p).register_forward_hook(
            lambda _m, _i, out: outputs.append((out[0] if isinstance(out, tuple) else out).clone()))
            for p in recorder.paths]
        try:
            result = inner(model, recorder, *rest)
        finally:
            for h in handles:
                h.remove()
        feed = recorder.feed  # the context ids are named only when a state is taken: not needed, not picklable
        feed = dataclasses.replace(feed, identity=dataclasses.replace(feed.identity, context=None))
        saved.update(select=recorder.select, valid=recorder.valid, feed=feed)
        return result

    actor.forward_and_gather = spy
    try:
        cap.process(shard, 2000, candidate_threshold(2000, 100_000_000), 0, args.tokens,
                    stats_fraction=args.fraction, exclusion=Exclusion(True, special))
    finally:
        actor.forward_and_gather = inner
    return {"model_type": model_type, "sites": sites, "outputs": outputs, **saved}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gguf")
    p.add_argument("--gguf")
    p.add_argument("--cache", help="save the recorded batch here, or load it if the file exists")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--fraction", type=float, default=StatsConfig().second_order_fraction)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--states", help="save the states after two batches here (.npz)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    if args.cache and Path(args.cache).exists():
        rec = torch.load(args.cache, weights_only=False)
    else:
        rec = record(args)
        if args.cache:
            torch.save(rec, args.cache)
    from tasks.capture.hooks import SiteRecorder

    recorder = SiteRecorder(torch.nn.Module(), site_table(rec["model_type"]), rec["sites"])
    hooks = [recorder._hook(i) for i in range(len(rec["sites"]))]

    def run() -> float:
        recorder.select, recorder.valid, recorder.feed, recorder._moved = rec["select"], rec["valid"], rec["feed"], {}
        recorder.reset_counts(torch.device("cpu"))
        t0 = time.perf_counter()
        for hook, out in zip(hooks, rec["outputs"]):
            hook(None, None, out)
        return time.perf_counter() - t0

    recorder.stats = [SiteStatistics() for _ in rec["sites"]]
    run()
    if args.states:
        run()
        for st in recorder.stats:
            st.massive.settle()
        np.savez(args.states, **stack_states(recorder.stats), nonfinite=recorder.nonfinite.numpy())
    times = [run() for _ in range(args.repeats)]
    n, d = rec["outputs"][0].shape[:-1].numel(), rec["outputs"][0].shape[-1]
    print(f"# hook_profile.py {time.strftime('%Y-%m-%d %H:%M')}: {len(hooks)} sites of {n} x {d}, "
          f"second_order_fraction {args.fraction}, torch {torch.get_num_threads()} threads")
    print(f"hooks (statistics on): best {min(times):.3f} s, median {np.median(times):.3f} s of {args.repeats}")
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        pr = cProfile.Profile()
        pr.enable()
        run()
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
