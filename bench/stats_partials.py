"""Benchmark: the cost of the streaming statistics' partials (an actor's flush, the merge) at a large model's width.

    .venv/bin/python bench/stats_partials.py [--width 1600] [--sites 12] [--partials 4] [--actors 64]

Each capture actor writes its accumulated statistics (`SiteStatistics` of every site: two d x d matrices each, so
144 sites x 2 x 1600^2 x 8 B = 5.9 GB of float64 for GPT-2-XL) every `stats.flush_every` shards, and CPU tasks
merge the partials. This measures, on `--sites` sites of width `--width` filled with random float32 batches:
  flush   `SiteStatistics.state()` and `RunStore.write_arrays` (what `ShardCapturer.flush` does), and the file size;
  merge   `tasks.merge.tree.merge_statistics_files` over `--partials` files (one first-level merge task), with the
          peak memory of the process that ran it (a fresh subprocess, so that its peak is its own);
and, as the floors in the same run, writing the same number of bytes as one raw array (`ndarray.tofile`) and
their SHA-256 in memory (a merge checks every partial's checksum before it trusts it). Then extrapolates to GPT-2-XL (144 sites) and
64 actors, showing the arithmetic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def filled_statistics(n_sites: int, width: int, seed: int):
    import torch

    from tasks.stats.site import SiteStatistics

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_sites):
        s = SiteStatistics()
        s.add(torch.randn(512, width, generator=gen) * 2 + 0.5)
        out.append(s)
    return out


def write_partials(root: str, n_sites: int, width: int, n_partials: int) -> tuple[list[tuple[str, str]], float, float, int]:
    """Write `n_partials` partials as actors do; returns (files, state seconds, write seconds, bytes) per partial."""
    from tasks.stats.site import stack_states
    from tasks.storage import RunStore

    store = RunStore(root)
    files, t_state, t_write = [], [], []
    for p in range(n_partials):
        stats = filled_statistics(n_sites, width, p)
        t0 = time.perf_counter()
        state = stack_states(stats, copy=False, packed=True)  # as `ShardCapturer.flush` does
        t1 = time.perf_counter()
        sha = store.write_arrays(f"stats/p{p}.npz", state)
        t2 = time.perf_counter()
        files.append((f"stats/p{p}.npz", sha))
        t_state.append(t1 - t0)
        t_write.append(t2 - t1)
        del state, stats
    size = os.path.getsize(os.path.join(root, files[0][0]))
    return files, float(np.median(t_state)), float(np.median(t_write)), size


def merge_in_subprocess(root: str, n_sites: int, files: list[tuple[str, str]]) -> dict:
    # Peak resident memory of the merge alone: after the imports, the kernel's high-water mark is reset (writing 5
    # to /proc/self/clear_refs, Linux) and read back from /proc/self/status (VmHWM) when the merge is done.
    code = (
        "import json, sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from tasks.merge.tree import merge_statistics_files\n"
        "def kib(key): return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key)))\n"
        "args = json.loads(sys.argv[2]); open('/proc/self/clear_refs', 'w').write('5'); base = kib('VmRSS:')\n"
        "t0 = time.perf_counter(); merge_statistics_files(args['root'], args['sites'], [tuple(f) for f in args['files']])\n"
        "print(json.dumps({'seconds': time.perf_counter() - t0, 'base_kib': base, 'peak_kib': kib('VmHWM:')}))\n"
    )
    arg = json.dumps({"root": root, "sites": n_sites, "files": files})
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), arg], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_peers(root: str, nbytes: int) -> tuple[float, float]:
    """Seconds to write `nbytes` as one raw float64 array (`tofile`), and to SHA-256 them in memory: the floors of
    a flush and of a checked read."""
    a = np.random.default_rng(0).standard_normal(nbytes // 8)
    path = os.path.join(root, "raw.bin")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        a.tofile(f)
    t1 = time.perf_counter()
    hashlib.sha256(memoryview(a).cast("B")).hexdigest()
    t2 = time.perf_counter()
    os.unlink(path)
    return t1 - t0, t2 - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--sites", type=int, default=12)
    p.add_argument("--partials", type=int, default=4)
    p.add_argument("--xl-sites", type=int, default=144, help="sites of the extrapolation (GPT-2-XL: 48 x 3)")
    p.add_argument("--actors", type=int, default=64, help="actors (one partial each) of the extrapolation")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="gpt-stats-partials-", dir=args.dir)
    try:
        files, t_state, t_write, size = write_partials(root, args.sites, args.width, args.partials)
        merged = merge_in_subprocess(root, args.sites, files)
        w_raw, sha_raw = raw_peers(root, size)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mib = size / 2**20
    print(f"# stats_partials.py {time.strftime('%Y-%m-%d')}: {args.sites} sites x width {args.width}, "
          f"{args.partials} partials, in {args.dir or tempfile.gettempdir()}")
    print(f"partial file: {mib:,.1f} MiB ({size / args.sites / 2**20:.2f} MiB per site; "
          f"d x d float64 = {args.width**2 * 8 / 2**20:.2f} MiB)")
    print(f"  flush: state() {t_state:.3f} s + write_arrays {t_write:.3f} s = {mib / (t_state + t_write):,.0f} MiB/s"
          f"   | raw tofile of the same bytes: {w_raw:.3f} s = {mib / w_raw:,.0f} MiB/s"
          f"  -> {(t_state + t_write) / w_raw:.2f} x raw")
    per_partial = merged["seconds"] / args.partials
    peak = (merged["peak_kib"] - merged["base_kib"]) / 1024
    print(f"  merge: {args.partials} partials in {merged['seconds']:.3f} s = {per_partial:.3f} s per partial = "
          f"{mib / per_partial:,.0f} MiB/s   | SHA-256 of the same bytes: {sha_raw:.3f} s = "
          f"{mib / sha_raw:,.0f} MiB/s  -> {per_partial / sha_raw:.2f} x the checksum alone")
    print(f"  merge task peak resident memory above its start: {peak:,.0f} MiB = {peak / mib:.1f} x one partial "
          f"file (mapped file pages included; peak RSS {merged['peak_kib'] / 1024:,.0f} MiB)")
    scale = args.xl_sites / args.sites
    xl_size = size * scale / 2**30
    xl_merge = per_partial * scale
    print(f"extrapolation to {args.xl_sites} sites and {args.actors} actors (one partial each), linear in sites:")
    print(f"  partial = {mib:,.1f} MiB x {args.xl_sites}/{args.sites} = {xl_size:.2f} GiB; all partials "
          f"{xl_size:.2f} x {args.actors} = {xl_size * args.actors:,.0f} GiB")
    from tasks.merge.reduce import stats_fan_in

    fan_in = stats_fan_in(args.actors)
    levels, width, folds = 0, args.actors, 0
    while width > 1:
        folds += min(fan_in, width)  # the slowest task of this level folds up to fan_in parts, in sequence
        width = -(-width // fan_in)
        levels += 1
    print(f"  flush per actor = {(t_state + t_write) * scale:.1f} s; merge per partial = {xl_merge:.1f} s")
    print(f"  merge tree, fan-in {fan_in} (stats_fan_in({args.actors})): {levels} levels, {folds} folds on the longest "
          f"path = {folds * xl_merge:,.0f} s with {-(-args.actors // fan_in)} CPUs (one task over all {args.actors}: "
          f"{args.actors * xl_merge:,.0f} s); each task holds one running sum, {mib * scale / 1024:.2f} GiB, "
          f"plus the file it reads, mapped")


if __name__ == "__main__":
    main()
