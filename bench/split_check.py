"""A model split over two devices (`cluster.gpus_per_actor` > 1) against the same model on one: the step of
`bench/gpu.py` that checks the device map, hooks on several devices and statistics per site's device.

The split follows the actor's plan (`tasks.checkpoint.split.device_plan`, budgets of 75 % of the weights per
device, so that both are used). The two devices are two GPUs where there are two: hooks then run on both, and the
sampled states cross devices. On one GPU the second half goes to "cpu", which accelerate treats as offload (its
weights are streamed to the GPU for each forward), and with `--device cpu` both halves are the CPU with
accelerate's hooks forced on: these check the device map and the hooks under accelerate's dispatch, not a real
cross-device run.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from tasks.capture.actor import ShardCapturer
from tasks.checkpoint.loading import empty_model
from tasks.checkpoint.split import device_plan
from tasks.corpus.shards import Shard
from tasks.sites import SITES


def split_devices(device: str) -> tuple:
    """The two devices a split runs on here (see the module docstring)."""
    if device == "cpu":
        return "cpu", "cpu"
    return 0, 1 if torch.cuda.device_count() > 1 else "cpu"


def compare_split(config, device: str, n_seq: int = 4, seq: int = 128, seed: int = 0) -> dict:
    """Capture one random shard (every layer and site, statistics on) with `config`'s model whole on `device`
    and split over `split_devices(device)`; returns the plan, the largest differences of the sampled states and
    of the statistics' states, and both wall times."""
    torch.manual_seed(seed)
    from transformers import AutoModel

    layers = config.num_hidden_layers
    sites = [(layer, s) for layer in range(layers) for s in SITES]
    with tempfile.TemporaryDirectory() as folder:
        AutoModel.from_config(config).save_pretrained(folder)
        whole = AutoModel.from_pretrained(folder, dtype=torch.float32).to(device if device == "cpu" else 0).eval()
        skeleton = empty_model(config)
        weights = sum(p.numel() for p in skeleton.parameters()) * 4
        plan = device_plan(skeleton, {0: int(0.75 * weights), 1: int(0.75 * weights)}, torch.float32)
        devices = split_devices(device)
        device_map = {k: devices[v] for k, v in plan.items()}
        split = AutoModel.from_pretrained(folder, dtype=torch.float32, device_map=device_map).eval()
    if devices[0] == devices[1]:  # one device: transformers skips accelerate's hooks, which a real split runs
        from accelerate import dispatch_model

        split = dispatch_model(split, device_map=device_map, force_hooks=True)
    rng = np.random.default_rng(seed)
    shard = Shard(0, rng.integers(5, config.vocab_size, n_seq * seq).astype(np.int32),
                  np.arange(n_seq + 1, dtype=np.int64) * seq, np.arange(n_seq, dtype=np.int64), np.zeros(n_seq, np.int64))
    out, seconds = [], []
    for model in (whole, split):
        cap = ShardCapturer.from_model(model, config.model_type, sites)
        t0 = time.perf_counter()
        record = cap.process(shard, 64, np.uint64(2**64 - 1), 0, n_seq * seq, stats_fraction=1.0)
        seconds.append(time.perf_counter() - t0)
        out.append((record["state"], [st.state(copy=True) for st in cap.stats]))
    (sample_a, stats_a), (sample_b, stats_b) = out
    state_diff = max(float(np.max(np.abs(np.asarray(sample_a[k], np.float64) - np.asarray(sample_b[k], np.float64))))
                     for k in sample_a if np.asarray(sample_a[k]).dtype.kind == "f")
    stats_diff = max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) /
                               (1.0 + np.abs(np.asarray(a[k], np.float64)))))
                     for a, b in zip(stats_a, stats_b) for k in a if np.asarray(a[k]).size and np.asarray(a[k]).dtype.kind == "f")
    return {"plan": plan, "devices": devices, "dispatched": hasattr(split.get_submodule("layers.0"), "_hf_hook"), "state_diff": state_diff, "stats_diff": stats_diff,
            "seconds": seconds, "layer_devices": [split.get_submodule(f"layers.{i}").self_attn.q_proj.weight.device
                                                  for i in range(layers)]}


def check_split(device: str, layers: int = 8, width: int = 1024, heads: int = 16, seq: int = 512,
                vocab: int = 32000) -> None:
    """Print the `[split]` step of bench/gpu.py."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 4), intermediate_size=4 * width,
                         max_position_embeddings=seq)
    r = compare_split(config, device, seq=seq)
    first = sum(1 for v in r["plan"].values() if v == 0)
    print(f"[split] Llama {layers} x {width} over devices {r['devices']}: plan puts {first} of {len(r['plan'])} "
          f"entries on the first; layers on {[str(d) for d in r['layer_devices']]}")
    print(f"  split against whole: sampled states max |diff| {r['state_diff']:.3g}, statistics max rel diff "
          f"{r['stats_diff']:.3g}; process {r['seconds'][0]:.2f} s whole, {r['seconds'][1]:.2f} s split")
