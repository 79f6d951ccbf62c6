"""The whole workflow on one tiny random model of every built-in family, and of an architecture without a table
through `model.sites`, over the tests' text: the sample is the brute-force bottom-k of the corpus, sampled states
equal a direct forward pass, and the sanity check's top token is the language model's own argmax.

Every run here is marked slow (`make test-all` and CI run them): each is a whole workflow, and `make test` already
runs the workflow end to end on GPT-2 (tests/conftest.py `tiny_run`) and every family's sites on a tiny model
without the workflow (tests/test_architectures.py, which also covers `model.sites`)."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.capture.architectures import ARCHITECTURES
from tests.conftest import tiny_config
from tests.families import CASES, save_tiny
from tests.test_workflow import expected_sample

FAMILIES = [case for case, (model_type, _cls, _kw) in CASES.items() if case == model_type]
MAX_DOCS, K, SEED, SEQ = 40, 60, 1, 128
SETTINGS = (f"corpus.max_docs={MAX_DOCS}", f"corpus.max_length={SEQ}", f"sample.size={K}", "stats.bootstrap=10",
            "stats.second_order_fraction=0.25", "stats.flush_every=64", "report.top_k=3")


def _run(model: Path, text: Path, out: Path, *overrides: str) -> Path:
    from workflows.driver import run

    return Path(run(tiny_config(model, text, out, *SETTINGS, *overrides)))


def _check_run(run_dir: Path, model: Path, text: Path, base_model, causal: bool) -> None:
    """The run's sample against brute force and a direct forward pass; its sanity check against the LM's argmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.corpus.documents import load_texts, tokenize
    from tasks.corpus.shards import make_sequences

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    samples = pq.read_table(run_dir / "samples.parquet").to_pandas()
    assert len(samples) == 2 * 3 * K
    doc, pos, token = expected_sample(model, text, max_docs=MAX_DOCS, k=K, seed=SEED)
    one = samples[(samples.layer == 0) & (samples.site == "resid_post")].sort_values("index")
    assert np.array_equal(one.doc.to_numpy(), doc) and np.array_equal(one.pos.to_numpy(), pos)
    assert np.array_equal(one.token_id.to_numpy(), token)
    # Five sampled tokens' layer-0 block outputs against output_hidden_states of their own window, run alone.
    tok = AutoTokenizer.from_pretrained(model)
    seqs = list(make_sequences(tokenize(load_texts("files", files=[str(text)]), tok, max_docs=MAX_DOCS), tok, SEQ,
                               "window"))
    by_key = {(d, w): s for d, w, s in seqs}
    for _, row in one.head(5).iterrows():
        ids = torch.as_tensor(np.asarray(by_key[(row.doc, row.window)], dtype=np.int64))[None]
        with torch.no_grad():
            state = base_model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, row.pos]
        np.testing.assert_allclose(row.vector, state.numpy(), rtol=1e-4, atol=1e-4)
    assert manifest["sanity"]["applies"] == causal
    if causal:
        sanity = pq.read_table(run_dir / "sanity.parquet").to_pandas()
        lm = AutoModelForCausalLM.from_pretrained(model).eval()
        for prompt, group in sanity.groupby("prompt"):
            with torch.no_grad():
                logits = lm(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
            assert group.sort_values("rank").token_id.iloc[0] == int(logits.argmax())


def _family_params():
    return [pytest.param(case, marks=pytest.mark.slow) for case in FAMILIES]


@pytest.mark.parametrize("case", _family_params())
def test_workflow_runs_on_family(case, ray_cluster, prose, tmp_path):
    from transformers import AutoModel

    causal = ARCHITECTURES[case].causal
    model = save_tiny(case, tmp_path / "model", causal)
    run_dir = _run(model, prose, tmp_path / "run")
    _check_run(run_dir, model, prose, AutoModel.from_pretrained(model).eval(), causal)


@pytest.mark.slow
def test_unknown_architecture_runs_through_model_sites(ray_cluster, prose, tmp_path):
    """StarCoder2 has no built-in table: it stops with the line pointing to model.sites, and runs with it."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, Starcoder2Config

    from tasks.errors import UserError
    from tests.conftest import TOKENIZER

    assert "starcoder2" not in ARCHITECTURES
    torch.manual_seed(0)
    config = Starcoder2Config(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                              bos_token_id=0, eos_token_id=0)
    model = tmp_path / "starcoder2"
    AutoModelForCausalLM.from_config(config).save_pretrained(model)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(model)
    with pytest.raises(UserError, match="model.sites"):
        _run(model, prose, tmp_path / "refused")
    sites = "model.sites={blocks: layers, resid_post: '', attn_out: self_attn, mlp_out: mlp}"
    run_dir = _run(model, prose, tmp_path / "run", sites)
    _check_run(run_dir, model, prose, AutoModel.from_pretrained(model).eval(), causal=True)
