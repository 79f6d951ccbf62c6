"""Tiny GGUF files written with the `gguf` package, for the GGUF loading tests: a 2-layer, 32-wide Llama in
float32 with the fixture BPE tokenizer (llama.cpp's `gpt2` tokenizer model: tokens, merges), random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import TOKENIZER

LAYER_TENSORS = {"attn_q": "qq", "attn_k": "qq", "attn_v": "qq", "attn_output": "qq", "ffn_gate": "fq",
                 "ffn_up": "fq", "ffn_down": "qf"}  # shapes: q the width, f the feed-forward width


def write_tiny_llama(path: Path, *, layers: int = 2, width: int = 32, heads: int = 2, ffn: int = 64,
                     context: int = 128, drop: tuple[str, ...] = (), seed: int = 0) -> Path:
    """A GGUF file of a random tiny Llama (tied head: no `output.weight`), leaving out the tensors in `drop`."""
    import gguf

    tok = json.loads((TOKENIZER / "tokenizer.json").read_text())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(context)
    w.add_embedding_length(width)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(width // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    size = {"q": width, "f": ffn}

    def tensor(name: str, *shape: int) -> None:
        if name not in drop:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(tokens), width)
    tensor("output_norm.weight", width)
    for i in range(layers):
        for name, (a, b) in LAYER_TENSORS.items():
            tensor(f"blk.{i}.{name}.weight", size[a], size[b])
        tensor(f"blk.{i}.attn_norm.weight", width)
        tensor(f"blk.{i}.ffn_norm.weight", width)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
