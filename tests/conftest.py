"""Shared fixtures: one Ray cluster per test session, a tiny random GPT-2 with a locally trained tokenizer, the
tests' English text (`prose`), and one tiny run of it that every module compares against (`tiny_run`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROSE = ROOT / "tests" / "fixtures" / "prose.txt"  # tests/fixtures/make_prose.py: the Python manual as WikiText
TOKENIZER = ROOT / "tests" / "fixtures" / "bpe-tokenizer"

# Test-only credentials for the local S3-compatible server (moto) that tests/test_s3.py starts on loopback;
# set before the session's Ray cluster starts so that its workers have them too.
TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _key, _value in TEST_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def prose() -> Path:
    """English text laid out as WikiText (a document per line, headings, blank lines, non-Latin scripts)."""
    return PROSE


def _save_tiny(folder: Path, config) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide GPT-2 with random weights and the fixture BPE tokenizer, saved as a model folder."""
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=2048,
                        bos_token_id=0, eos_token_id=0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), config)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (2 CPUs, no dashboard, its own short temp dir)."""
    import ray

    temp = tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=400 * 1024 * 1024,
        _temp_dir=temp,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **TEST_ENV}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
    # Anything of this cluster still running (e.g. after a crashed test) is named by its temp dir: stop it.
    subprocess.run(["pkill", "-f", temp], check=False)
    shutil.rmtree(temp, ignore_errors=True)


def tiny_config(model: Path, text: Path, out: Path, *overrides: str, defaults: bool = False):
    """The tests' run: the tiny GPT-2 over 300 documents of the tests' text, every layer and site, a sample of 300. With
    `defaults`, `stats.flush_every` and `cluster.shards_in_flight` keep their default values (the determinism
    tests' setting), not the per-shard partials that the resume tests reason with."""
    from workflows.config import config_from_dict

    data = {
        "model": {"name": str(model), "dtype": "float32"},
        "corpus": {"source": "files", "files": [str(text)], "max_docs": 300, "shard_tokens": 3000},
        "capture": {"layers": "all", "batch_tokens": 1024},
        "sample": {"size": 300},
        "similarity": {"bins": 60, "tile": 128},
        # statistics written per shard (resume tests reason shard by shard); d x d statistics on every token (the
        # brute-force checks compare with all of them; tests/test_capture.py covers a fraction)
        "stats": {"flush_every": 1, "second_order_fraction": 1.0},
        "cluster": {"actors": 1, "shards_in_flight": 1},  # with flush_every 1: one shard per statistics partial
        "run": {"seed": 1, "out": str(out)},
    }
    if defaults:
        data["stats"].pop("flush_every")
        data["cluster"].pop("shards_in_flight")
    return config_from_dict(data, list(overrides))


@pytest.fixture(scope="session")
def tiny_run(ray_cluster, tiny_gpt2, prose, tmp_path_factory) -> Path:
    """One uninterrupted run of `tiny_config`, shared by the session: the workflow tests read it, the reliability
    tests compare every interrupted or faulty run with it. Tests may redraw its plots, never its tables."""
    from workflows.driver import run

    return run(tiny_config(tiny_gpt2, prose, tmp_path_factory.mktemp("runs") / "tiny"))
