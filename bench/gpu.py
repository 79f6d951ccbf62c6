"""GPU check and benchmark for the capture actor and the similarity tiles, on one CUDA card.

    python bench/gpu.py [--layers 48] [--width 1600] [--batch-tokens 32768] [--batches 8]
    python bench/gpu.py --device cpu --smoke      # every step at toy sizes on a CPU (the test suite runs it)

Needs torch, transformers, numpy and scipy (no Ray, no hub: the GPT-2-XL architecture gets random weights).
Prints, measured in this run:
  1. correctness: bf16 and fp16 captured states against float32 on the same GPU (relative error per site), and
     the GPU tile histogram and quantile pairs against the CPU ones on the same sample;
  2. capture: tokens/s of a bare forward pass and of the actor with every layer and site hooked (the workflow's
     own `ShardCapturer.process`, sampling at the rate of a 2000-state sample from a 100M-token corpus and at a
     dense 5 % rate, and with the streaming statistics on, kept on the GPU), model FLOPs utilisation (2 x parameters x tokens / time over the card's bf16 peak), and
     peak GPU memory;
  3. `capture.batch_tokens: auto`: the budget the actor's probe picks, its predicted peak memory against the peak
     measured at that budget, and tokens/s at that budget against --batch-tokens on the same shard;
  4. tiles: pairs/s of the tiled histogram at N = 20,000, d = width, against the card's fp32 GEMM rate;
  5. split: a Llama over two devices by the actor's device plan (two GPUs; on a one-GPU machine half of it
     offloaded to the CPU) against the same model whole: sampled states and statistics agree (`bench/split_check.py`).

With `--device cpu` the same steps run on the CPU (memory figures are then the bytes of the model's module
outputs, `tasks.capture.batch_budget.OutputBytes`, whose hooks the timings then include, and the count of host
synchronisations is skipped); with `--smoke`, at toy sizes. Together they make sure that the script a lent GPU's minutes are spent on runs to its end.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks.capture.actor import ShardCapturer  # noqa: E402
from tasks.capture.batch_budget import CudaMemory, OutputBytes, fit_sequences  # noqa: E402
from tasks.capture.hooks import SiteRecorder, forward_and_gather, pad_batch  # noqa: E402
from tasks.corpus.shards import Shard  # noqa: E402
from tasks.capture.models import site_table  # noqa: E402
from tasks.stats.site import stack_states  # noqa: E402
from tasks.capture.sampling import candidate_threshold  # noqa: E402
from tasks.analysis.similarity import cosine_histogram, quantile_pairs, unit_rows  # noqa: E402
from workflows.config import StatsConfig  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0}
from tasks.sites import SITES  # noqa: E402
from split_check import check_split  # noqa: E402
DEVICE = "cuda"  # set by main from --device
CPU_MEMORY = 1 << 34  # what `--device cpu` tells the budget probe it may fill (16 GiB; 64 MiB with --smoke)


def gpt2(layers: int, width: int, heads: int, dtype: torch.dtype, seed: int = 0):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=1024, vocab_size=50257)
    with torch.device(DEVICE):
        model = GPT2Model._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(dtype).eval()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def sync_time(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def meter_for(model: torch.nn.Module):
    """Peak memory as the budget probe reads it: torch's peak allocation on a card, module-output bytes on a CPU."""
    return CudaMemory(torch.device("cuda")) if DEVICE == "cuda" else OutputBytes(model, CPU_MEMORY)


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def check_precision(layers: int = 4, width: int = 768, heads: int = 12) -> None:
    ref = gpt2(layers, width, heads, torch.float32)
    rng = np.random.default_rng(0)
    lengths = np.array([512, 300, 77])
    ids = rng.integers(0, 50257, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    input_ids, mask = pad_batch(ids, offsets, np.arange(3), 0)
    rows, cols = np.nonzero(mask)
    sites = [(layer, s) for layer in range(layers) for s in SITES]
    outs = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = ref if dtype == torch.float32 else gpt2(layers, width, heads, dtype)
        rec = SiteRecorder(model, site_table("gpt2"), sites)
        with rec.attached():
            outs[dtype] = forward_and_gather(model, rec, input_ids, mask, rows, cols).double().cpu().numpy()
    print(f"[precision] GPT-2 {layers} layers x {width}: rel. error of captured states vs float32 (same device, same weights)")
    for dtype in (torch.bfloat16, torch.float16):
        errs = [np.linalg.norm(outs[dtype][i] - outs[torch.float32][i]) / np.linalg.norm(outs[torch.float32][i]) for i in range(len(sites))]
        finite = bool(np.isfinite(outs[dtype]).all())
        print(f"  {str(dtype):15s} max {max(errs):.2e} median {np.median(errs):.2e} over {len(sites)} sites; all finite: {finite}")


def check_tiles(n: int = 6000, d: int = 1600) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, d)) + 0.1).astype(np.float32)
    cpu_u, gpu_u = unit_rows(x, "cpu"), unit_rows(x, DEVICE)
    h_cpu, h_gpu = cosine_histogram(cpu_u, 200, 2048), cosine_histogram(gpu_u, 200, 4096)
    q = (0.001, 0.5, 0.999)
    p_cpu, p_gpu = quantile_pairs(cpu_u, h_cpu, q, 2048), quantile_pairs(gpu_u, h_gpu, q, 4096)
    diff = int(np.abs(h_cpu.counts - h_gpu.counts).sum())
    print(f"[tiles] {DEVICE} vs CPU histogram, N={n}, d={d}: {h_gpu.n_pairs:,} pairs, sum |count diff| = {diff} "
          f"(edge ties), mean {h_gpu.mean:.6f} vs {h_cpu.mean:.6f}")
    for a, b in zip(p_cpu, p_gpu):
        print(f"  q={a.quantile}: CPU pair ({a.i},{a.j}) cos {a.cos:.6f} | {DEVICE} pair ({b.i},{b.j}) cos {b.cos:.6f}")


def bench_capture(layers: int, width: int, heads: int, batch_tokens: int, n_batches: int, seq: int = 1024) -> None:
    dev = device_name()
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in dev), None)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32  # bf16 matmuls crawl on a CPU
    model = gpt2(layers, width, heads, dtype)
    meter = meter_for(model)
    n_params = sum(p.numel() for p in model.parameters())
    per_batch = batch_tokens // seq
    rng = np.random.default_rng(2)
    n_seq = per_batch * n_batches
    ids = rng.integers(0, 50257, size=n_seq * seq).astype(np.int32)
    offsets = np.arange(n_seq + 1, dtype=np.int64) * seq
    shard = Shard(0, ids, offsets, np.arange(n_seq, dtype=np.int64), np.zeros(n_seq, np.int64))
    tokens = shard.n_tokens
    print(f"[capture] {dev}; GPT-2 architecture {layers} layers x {width} ({n_params / 1e9:.2f} B params), "
          f"{str(dtype).removeprefix('torch.')}, SDPA; "
          f"{n_batches} batches of {per_batch} x {seq} tokens")

    def bare():
        with torch.inference_mode():
            for b in range(n_batches):
                sl = slice(b * per_batch, (b + 1) * per_batch)
                x = torch.as_tensor(ids.reshape(n_seq, seq)[sl].astype(np.int64), device=DEVICE)
                model(input_ids=x)  # equal lengths: the actor passes no mask either

    bare()  # warm-up
    meter.reset()
    t_bare = min(sync_time(bare) for _ in range(2))
    mem_bare = meter.peak() / 2**30
    sites = [(layer, s) for layer in range(layers) for s in SITES]
    cap = ShardCapturer.from_model(model, "gpt2", sites)
    results = {}
    sparse = candidate_threshold(2000, 100_000_000)
    fraction = StatsConfig().second_order_fraction
    for label, threshold, stats in [("sparse (2000 of 100M tokens)", sparse, None),
                                    ("dense (5% of tokens)", np.uint64(int(0.05 * 2.0**64)), None),
                                    (f"sparse + statistics (d x d on {fraction:.0%})", sparse, fraction),
                                    ("sparse + statistics (d x d on 100%)", sparse, 1.0)]:
        def once():
            cap.stats = None  # a fresh accumulation, as after a flush
            return cap.process(shard, 2000, threshold, 0, batch_tokens, stats_fraction=stats)

        once()  # warm-up
        meter.reset()
        t = min(sync_time(once) for _ in range(2))
        meta = once()
        results[label] = (t, meter.peak() / 2**30, meta)

    def line(name, t, mem):
        mfu = f", MFU {2 * n_params * tokens / t / 1e12 / peak:.1%} of {peak:.0f} TFLOP/s" if peak else ""
        what = "peak GPU mem" if DEVICE == "cuda" else "module outputs"
        return f"  {name:50s} {tokens / t:10,.0f} tok/s ({t / t_bare:5.3f} x bare time){mfu}, {what} {mem:.1f} GiB"

    print(line("bare forward", t_bare, mem_bare))
    for label, (t, mem, meta) in results.items():
        print(line(f"capture {len(sites)} sites, {label}", t, mem) + f", {meta['forward_batches']} forwards")
    # What a flush moves to the host: the statistics' accumulators (float64, on the GPU until `state()`).
    t0 = time.perf_counter()
    state = stack_states(cap.stats, copy=False, packed=True)  # as `ShardCapturer.flush` does
    t_state = time.perf_counter() - t0
    nbytes = sum(a.nbytes for a in state.values())
    print(f"  statistics flush: state() moves {nbytes / 2**30:.2f} GiB to the host in {t_state:.2f} s "
          f"({nbytes / 2**30 / t_state:.1f} GiB/s)")
    del state
    if DEVICE == "cuda":
        count_syncs(cap, shard, sparse, batch_tokens, fraction, len(sites))
    cap.stats = None
    check_budget(cap, meter, seq, batch_tokens, fraction, sparse)


def count_syncs(cap: ShardCapturer, shard: Shard, sparse: np.uint64, batch_tokens: int, fraction: float,
                n_sites: int) -> None:
    # Host synchronisations per forward pass with statistics on (each one drains the GPU's queue): counted by
    # torch's sync debug mode, which warns at every synchronising call.
    cap.stats = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            meta = cap.process(shard, 2000, sparse, 0, batch_tokens, stats_fraction=fraction)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    print(f"  host synchronisations with statistics on: {syncs} in {meta['forward_batches']} forwards "
          f"({syncs / max(meta['forward_batches'], 1):.0f} per forward, {n_sites} sites)")


def check_budget(cap: ShardCapturer, meter, seq: int, batch_tokens: int, fraction: float, sparse: np.uint64) -> None:
    """`capture.batch_tokens: auto` on this card: the probe's memory model and choice, the peak measured at that
    budget in the probe's worst case (every token a candidate, d x d statistics on every token), and throughput at
    that budget against the fixed one on one shard of two auto-sized batches."""
    gib = 2.0**30
    t0 = time.perf_counter()
    model = cap.memory_model(seq, 2000, stats=True, meter=meter)
    t_probe = time.perf_counter() - t0
    n = fit_sequences(model)
    print(f"[budget] probe {t_probe:.1f} s: fixed {model.fixed / gib:.2f} GiB + {model.per_sequence / gib:.3f} GiB per "
          f"{seq}-token sequence, available {model.available / gib:.1f} GiB -> {n} sequences ({n * seq:,} tokens), "
          f"predicted peak {model.peak(n) / gib:.1f} GiB")
    rng = np.random.default_rng(5)

    def shard(m: int) -> Shard:
        return Shard(0, rng.integers(0, 50257, m * seq).astype(np.int32), np.arange(m + 1, dtype=np.int64) * seq,
                     np.arange(m, dtype=np.int64), np.zeros(m, np.int64))

    meter.reset()
    cap.process(shard(n), 2000, np.uint64(2**64 - 1), 0, n * seq, stats_fraction=1.0)
    measured = meter.peak()
    print(f"  measured peak at that budget (all candidates, d x d on every token): {measured / gib:.1f} GiB "
          f"({measured / model.peak(n):.2f} x predicted; the prediction adds 2 k sample rows the probe does not hold)")
    two = shard(2 * n)
    for budget in (n * seq, batch_tokens):
        cap.stats = None
        cap.process(two, 2000, sparse, 0, budget, stats_fraction=fraction)  # warm-up at this shape
        cap.stats = None
        t = sync_time(lambda: cap.process(two, 2000, sparse, 0, budget, stats_fraction=fraction))
        print(f"  budget {budget:9,} tokens: {two.n_tokens / t:10,.0f} tok/s (sparse sample, statistics on "
              f"{fraction:.0%}, {two.n_tokens:,} tokens)")
    cap.stats = None


def bench_tiles(n: int, d: int) -> None:
    m = min(8192, n)
    a = torch.randn(m, d, device=DEVICE)
    b = torch.randn(d, m, device=DEVICE)
    for _ in range(3):
        a @ b
    t = min(sync_time(lambda: a @ b) for _ in range(5))
    gflops = 2 * m * m * d / t / 1e9
    bound = gflops * 1e9 / (2 * d)
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    units = unit_rows(x, DEVICE)
    cosine_histogram(units, 200, 4096)
    for tile in (4096, 8192):
        th = min(sync_time(lambda: cosine_histogram(units, 200, tile)) for _ in range(2))
        pairs = n * (n - 1) // 2
        print(f"[tiles] N={n}, d={d}, tile {tile}: {pairs / th / 1e9:.2f} G pairs/s = {pairs / th / bound:.2f} x the fp32 "
              f"GEMM bound ({gflops / 1e3:.3f} TFLOP/s fp32, tf32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")
    split_tile(units[:m], 200)


def split_tile(u: torch.Tensor, bins: int, replicas: int = 16) -> None:
    """Where one tile's time goes: the GEMM, the arithmetic bin index, the count (`bincount`, whose CUDA kernel
    also reads the input's min and max back, and whose shared-memory atomics serialise when a warp's values fall
    in the same few bins, as cosines do), and the same count over `replicas` interleaved copies of the bins
    (neighbouring threads then hit different copies), and `histc` on the clipped cosines (no index pass, no min and
    max read back): neither is used by the workflow yet; measurements for the next change, with their counts checked
    against the plain ones."""
    from tasks.analysis.similarity import bin_index

    block = u @ u.T
    t_gemm = min(sync_time(lambda: u @ u.T) for _ in range(3))
    t_index = min(sync_time(lambda: bin_index(block, bins)) for _ in range(3))
    idx = bin_index(block, bins)
    plain = torch.bincount(idx.reshape(-1), minlength=bins)
    t_count = min(sync_time(lambda: torch.bincount(idx.reshape(-1), minlength=bins)) for _ in range(3))
    offsets = (torch.arange(idx.shape[1], device=idx.device, dtype=torch.int32) % replicas) * bins

    def replicated():
        return torch.bincount((idx + offsets).reshape(-1), minlength=bins * replicas).view(replicas, bins).sum(0)

    same = bool(torch.equal(replicated(), plain))
    t_rep = min(sync_time(replicated) for _ in range(3))
    chunk = max((1 << 24) // block.shape[1], 1)  # rows per `histc` call: float32 counts stay exact below 2^24

    def histc():  # binned by histc's own arithmetic, (c + 1) * bins / 2 in float32, after clipping to [-1, 1]
        clipped = block.clamp(-1.0, 1.0)
        return sum(torch.histc(clipped[i : i + chunk], bins, -1.0, 1.0) for i in range(0, len(clipped), chunk))

    histc_diff = int((histc().long() - plain).abs().sum())
    t_histc = min(sync_time(histc) for _ in range(3))
    t_sums = min(sync_time(lambda: (block.sum(dim=1).double().sum(), torch.linalg.vector_norm(block, dim=1)))
                 for _ in range(3))
    print(f"[tiles] one {len(u)} x {len(u)} tile: GEMM {t_gemm * 1e3:.2f} ms, bin index {t_index * 1e3:.2f} ms, "
          f"bincount {t_count * 1e3:.2f} ms (over {replicas} interleaved copies of the bins: {t_rep * 1e3:.2f} ms, "
          f"same counts: {same}), clip + histc {t_histc * 1e3:.2f} ms (no index pass; sum |count diff| {histc_diff}, "
          f"ties at bin edges), sums {t_sums * 1e3:.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--heads", type=int, default=25)
    p.add_argument("--batch-tokens", type=int, default=32768)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--smoke", action="store_true", help="toy sizes: 2 layers x 64, 128-token sequences, N = 400")
    args = p.parse_args()
    global DEVICE, CPU_MEMORY
    DEVICE = args.device
    if args.smoke:
        CPU_MEMORY = 1 << 26
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here; run it on a GPU machine, or pass --device cpu")
    torch.set_grad_enabled(False)
    import transformers

    print(f"# gpu.py {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{device_name()}{', smoke sizes' if args.smoke else ''}")
    if args.smoke:
        check_precision(2, 64, 2)
        check_tiles(300, 64)
        bench_capture(2, 64, 2, 512, 2, seq=128)
        bench_tiles(400, 64)
        check_split(DEVICE, 4, 64, 4, 64, vocab=256)
        return
    check_precision()
    check_tiles()
    bench_capture(args.layers, args.width, args.heads, args.batch_tokens, args.batches)
    bench_tiles(args.n, args.width)
    check_split(DEVICE)


if __name__ == "__main__":
    main()
