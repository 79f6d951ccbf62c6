"""Weights a checkpoint does not hold are refused, never initialised at random: a base model missing its input
embedding (a folder whose weights held the tied embedding as `lm_head.weight` only), or a dropped layer weight,
stops the run before the run directory is touched, with one line naming the key and exit status 2; the actors'
own load refuses them too. Complete checkpoints with tied heads (a Llama with `tie_word_embeddings`, a GPT-2
base-model folder) are accepted."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import torch

from tasks.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory) -> Path:
    """A complete tiny Llama with a tied head, saved as a language model (no `lm_head.weight` in the file)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.conftest import TOKENIZER

    folder = tmp_path_factory.mktemp("tied-llama")
    config = LlamaConfig(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    return folder


def _rewrite(source: Path, target: Path, edit) -> Path:
    """A copy of a model folder whose `model.safetensors` holds `edit(tensors)` instead."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(source / "model.safetensors")
    save_file(edit(tensors), target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def embedding_as_head(tied_llama, tmp_path_factory) -> Path:
    """The reported case: the tied embedding stored as `lm_head.weight`, no `model.embed_tokens.weight`."""
    def edit(t):
        t["lm_head.weight"] = t.pop("model.embed_tokens.weight")
        return t

    return _rewrite(tied_llama, tmp_path_factory.mktemp("bad") / "embedding-as-head", edit)


@pytest.fixture(scope="module")
def dropped_layer(tied_llama, tmp_path_factory) -> Path:
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        return t

    return _rewrite(tied_llama, tmp_path_factory.mktemp("bad") / "dropped-layer", edit)


def _check(folder: Path) -> None:
    from tasks.checkpoint.completeness import check_weights
    from tasks.checkpoint.loading import load_model_config

    check_weights(str(folder), load_model_config(str(folder)), causal=True)


@pytest.mark.parametrize("case, key", [("embedding_as_head", "embed_tokens.weight"),
                                       ("dropped_layer", "layers.1.mlp.up_proj.weight")])
def test_missing_weights_are_refused_by_the_driver_and_the_actors(case, key, request):
    from tasks.checkpoint.loading import load_model

    folder = request.getfixturevalue(case)
    with pytest.raises(UserError) as driver:
        _check(folder)
    with pytest.raises(UserError) as actor:
        load_model(str(folder), "float32", CPU)  # the base model, as a capture actor loads it
    for exc in (driver, actor):
        message = str(exc.value)
        assert "\n" not in message and "does not hold 1 weight(s) of LlamaModel" in message
        assert message.split(": ")[-1].startswith(key), message


def test_complete_tied_checkpoints_are_accepted(tied_llama, tiny_gpt2):
    """A tied Llama saved as a language model, and a GPT-2 saved as a base model (its head, tied to the input
    embedding, is in no file): every base-model weight is there, and the language model loads too."""
    from safetensors import safe_open

    from tasks.checkpoint.loading import load_model

    for folder in (tied_llama, tiny_gpt2):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            assert not any(k.startswith("lm_head") for k in f.keys())  # the head is tied, in no file
        _check(folder)
        base = load_model(str(folder), "float32", CPU)
        lm = load_model(str(folder), "float32", CPU, causal_lm=True)
        assert torch.equal(lm.get_output_embeddings().weight, base.get_input_embeddings().weight)


def test_a_run_on_missing_weights_stops_before_anything_is_written(embedding_as_head, prose, tmp_path):
    """`gpt-stats run` refuses the checkpoint in its input checks: exit 2, one line naming the key, and the
    run directory is not even created."""
    from workflows.cli import main

    out, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("{}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(config), "--set", f"model.name={embedding_as_head}", "--set", "model.dtype=float32",
                     "--set", "corpus.source=files", "--set", f"corpus.files=[{prose}]",
                     "--set", f"run.out={out}"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith("gpt-stats: error: model ") and "embed_tokens.weight" in lines[0]
    assert not out.exists()


def test_the_name_check_leaves_unknown_names_to_the_load(tied_llama, tmp_path):
    """A checkpoint holding a tensor name that is neither a base-model nor a language-model name (one that
    transformers might rename while loading) is not judged from names: the load decides."""
    from tasks.checkpoint.completeness import checkpoint_keys, missing_weights
    from tasks.checkpoint.loading import empty_model, load_model_config

    config = load_model_config(str(tied_llama))
    base, lm = empty_model(config), empty_model(config, causal_lm=True)
    keys = checkpoint_keys(tied_llama)
    assert missing_weights(base, lm, keys) == []
    assert missing_weights(base, lm, keys - {"model.norm.weight"}) == ["norm.weight"]
    assert missing_weights(base, lm, keys | {"model.norm.gamma"}) is None
