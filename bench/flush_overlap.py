"""Benchmark: a capture actor's statistics flush overlapped with its next shards, against the flush in line.

    .venv/bin/python bench/flush_overlap.py [--width 1600] [--layers 2] [--shards 8] [--every 1] [--repeats 2]

The driver runs `ShardCapturer.flush` in the actor's `io` concurrency group, a thread of its own, while the actor's
main thread goes on with the shards queued on it; before, the flush queued behind those shards on the one thread.
This runs the actor's own `process` and `flush` both ways, as the Ray actor would (the shards back to back on one
thread; `flush` every `--every` shards, in line, or handed to a one-thread pool when a shard's result arrives), on
a GPT-2 architecture of `--layers` x `--width` (random weights, float32, every layer and site hooked, statistics
on), interleaved `--repeats` times, and prints the wall times, the flushes' own seconds and the share of them that
the overlap hid. On a CPU the flush (packing, checksum, write) competes with the forward passes for the same cores;
on a GPU actor the forward passes run on the card and the host is mostly idle.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.capture.actor import ShardCapturer  # noqa: E402
from tasks.corpus.shards import Shard  # noqa: E402

from tasks.sites import SITES  # noqa: E402


def shards(n: int, tokens: int, seq: int) -> list[Shard]:
    rng = np.random.default_rng(0)
    per = tokens // seq
    return [Shard(i, rng.integers(0, 50257, per * seq).astype(np.int32), np.arange(per + 1, dtype=np.int64) * seq,
                  np.arange(per, dtype=np.int64) + 1000 * i, np.zeros(per, np.int64)) for i in range(n)]


def run(cap: ShardCapturer, work: list[Shard], every: int, overlap: bool, root: str, tag: str) -> tuple[float, float, int]:
    """Wall seconds for all shards and flushes, the flushes' own seconds summed, and the shards they covered."""
    flush_seconds, covered = [], []

    def flush(name: str, final: bool):
        t0 = time.perf_counter()
        records = cap.flush(root, "bench", name, final)
        flush_seconds.append(time.perf_counter() - t0)
        covered.extend(i for r in records for i in r["shards"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as io:  # the actor's `io` group: one thread
        for i, shard in enumerate(work):
            cap.process(shard, 2000, np.uint64(2**64 - 1), 0, 4096, stats_fraction=0.05)
            if (i + 1) % every == 0:  # as the driver asks, when the shard that sealed a set replies
                name = f"{tag}-{i:04d}"
                io.submit(flush, name, False) if overlap else flush(name, False)
    flush(f"{tag}-last", True)
    return time.perf_counter() - t0, sum(flush_seconds), len(covered)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per shard")
    p.add_argument("--every", type=int, default=1, help="flush every this many shards (stats.flush_every)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.width // 64, n_positions=1024)
    model = GPT2Model(config).eval()
    sites = [(layer, s) for layer in range(args.layers) for s in SITES]
    cap = ShardCapturer.from_model(model, "gpt2", sites)
    cap.flush_every = args.every  # as `ready` sets it: statistics sealed every `--every` shards
    work = shards(args.shards, args.tokens, 512)
    packed = len(sites) * 2 * args.width * (args.width + 1) // 2 * 8
    print(f"# flush_overlap.py {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"GPT-2 {args.layers} x {args.width}, {len(sites)} sites, {args.shards} shards of {args.tokens} tokens, "
          f"flush every {args.every} (packed partial {packed / 2**20:.0f} MiB)")
    with tempfile.TemporaryDirectory(prefix="gpt-stats-flush-") as root:
        cap.process(work[0], 2000, np.uint64(2**64 - 1), 0, 4096, stats_fraction=0.05)  # warm-up
        cap.flush(root, "bench", "warm", True)
        results = {False: [], True: []}
        for r in range(args.repeats):
            for overlap in (False, True):
                wall, flushing, n = run(cap, work, args.every, overlap, root, f"r{r}-{int(overlap)}")
                assert n == args.shards, "every shard is covered by exactly one flush"
                results[overlap].append((wall, flushing))
    for overlap, label in ((False, "flush in line (one thread)"), (True, "flush overlapped (io thread)")):
        walls = [w for w, _ in results[overlap]]
        flushes = [f for _, f in results[overlap]]
        print(f"  {label:30s} wall best {min(walls):6.2f} s, median {np.median(walls):6.2f} s; "
              f"flushes' own time {np.median(flushes):5.2f} s")
    inline, overlapped = min(w for w, _ in results[False]), min(w for w, _ in results[True])
    flush_inline = np.median([f for _, f in results[False]])
    print(f"  overlapped / in line: {overlapped / inline:.3f} (best walls); flush time hidden: "
          f"{(inline - overlapped) / flush_inline:.0%} of the in-line flushes' {flush_inline:.2f} s")


if __name__ == "__main__":
    main()
