"""Benchmark: the tiled cosine histogram against this machine's GEMM rate and against the obvious alternatives.

    .venv/bin/python bench/similarity_tiles.py [--n 20000] [--d 1600] [--peer-n 4000] [--device cpu|cuda]

Prints, all measured in this run:
  * the fp32 matrix-product rate (GFLOP/s) and the pairs/s it would allow (2 d flops per pair),
  * pairs/s of the tiled histogram at N = --n and at N = --peer-n, with peak memory,
  * pairs/s and peak memory of the seed's way (one matrix of cosines between the two halves of the sample, sorted,
    then numpy.histogram) and of scipy.spatial.distance.pdist + numpy.histogram, at N = --peer-n (their cost per
    pair does not fall with N, and at N = 20,000 they need GBs and minutes).
Each method runs in its own process so peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _data(n: int, d: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d), dtype=np.float32) + 0.2).astype(np.float32)  # shifted like real states


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gemm(d: int, device: str) -> dict:
    import torch

    m = 4096
    a = torch.randn(m, d, device=device)
    b = torch.randn(d, m, device=device)
    for _ in range(2):
        a @ b
    reps = 5
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    return {"gflops": 2 * m * m * d / dt / 1e9}


def _tiled(n: int, d: int, bins: int, tile: int, device: str) -> dict:
    import torch

    from tasks.analysis.similarity import cosine_histogram, unit_rows

    x = _data(n, d)
    base = _peak_mib()
    units = unit_rows(x, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    hist = cosine_histogram(units, bins, tile)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"pairs": hist.n_pairs, "seconds": dt, "peak_mib": _peak_mib(), "input_mib": base}
    if device == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _seed_way(n: int, d: int, bins: int) -> dict:
    import numpy as np
    import torch

    x = torch.from_numpy(_data(n, d))
    base = _peak_mib()
    t0 = time.perf_counter()
    u = x / x.norm(dim=1, keepdim=True)
    angles = u[: n // 2] @ u[n // 2 :].t()  # the seed: one half of the sample against the other
    sorted_angles, _ = angles.view(-1).sort(dim=0)
    counts, _ = np.histogram(angles.view(-1).numpy(), bins=np.linspace(-1, 1, bins + 1))
    dt = time.perf_counter() - t0
    return {"pairs": int(counts.sum()), "seconds": dt, "peak_mib": _peak_mib(), "input_mib": base}


def _pdist(n: int, d: int, bins: int) -> dict:
    import numpy as np
    from scipy.spatial.distance import pdist

    x = _data(n, d).astype(np.float64)
    base = _peak_mib()
    t0 = time.perf_counter()
    cos = 1.0 - pdist(x, "cosine")
    counts, _ = np.histogram(np.clip(cos, -1, 1), bins=np.linspace(-1, 1, bins + 1))
    dt = time.perf_counter() - t0
    return {"pairs": int(counts.sum()), "seconds": dt, "peak_mib": _peak_mib(), "input_mib": base}


def _child(fn, args, queue) -> None:
    queue.put(fn(*args))


def isolated(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--d", type=int, default=1600)
    p.add_argument("--peer-n", type=int, default=4000)
    p.add_argument("--bins", type=int, default=200)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torch

    print(f"# similarity tiles benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    gemm = isolated(_gemm, args.d, args.device)
    bound = gemm["gflops"] * 1e9 / (2 * args.d)
    print(f"fp32 GEMM (4096 x {args.d} x 4096): {gemm['gflops']:.1f} GFLOP/s -> GEMM-bound rate {bound / 1e6:.1f} M pairs/s at d={args.d}")

    rows = []
    for label, fn, a in [
        (f"tiled histogram, N={args.n}", _tiled, (args.n, args.d, args.bins, args.tile, args.device)),
        (f"tiled histogram, N={args.peer_n}", _tiled, (args.peer_n, args.d, args.bins, args.tile, args.device)),
        (f"seed's way (halves matrix + sort), N={args.peer_n}", _seed_way, (args.peer_n, args.d, args.bins)),
        (f"pdist + numpy.histogram, N={args.peer_n}", _pdist, (args.peer_n, args.d, args.bins)),
    ]:
        if fn is not _tiled and args.device != "cpu":
            continue
        r = isolated(fn, *a)
        rate = r["pairs"] / r["seconds"]
        rows.append((label, rate))
        extra = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in r else ""
        print(f"{label:52s} {r['pairs']:>12,d} pairs {r['seconds']:8.2f} s {rate / 1e6:8.2f} M pairs/s "
              f"({rate / bound:5.2f} x GEMM bound)  peak RSS {r['peak_mib']:7.0f} MiB (input loaded: {r['input_mib']:.0f}){extra}")
    ours = rows[1][1]
    for label, rate in rows[2:]:
        print(f"tiled / {label.split(',')[0]}: {ours / rate:.1f}x pairs/s at the same N")


if __name__ == "__main__":
    main()
