"""Every built-in architecture's site table against the model itself: tiny random models of each family (and of
the config variants that change the residual kind), recorded through the project's hooks (`SiteRecorder`) and
checked against `output_hidden_states`, the family's residual algebra, and the same sequences run unpadded."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.capture.architectures import ARCHITECTURES, markdown_table
from tasks.capture.hooks import SiteRecorder, forward_and_gather
from tasks.sites import SITES
from tests.families import CASES, VOCAB, tiny_model
from tests.test_capture import _batch

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [17, 9, 30]


def _record(model, table, input_ids, mask, rows, cols):
    sites = [(layer, s) for layer in range(2) for s in SITES]
    rec = SiteRecorder(model, table, sites)
    with rec.attached():
        got = forward_and_gather(model, rec, input_ids, mask, rows, cols)
    return {site: got[i] for i, site in enumerate(sites)}


def test_every_built_in_family_is_tested():
    assert {model_type for model_type, _cls, _kw in CASES.values()} == set(ARCHITECTURES)


@pytest.mark.parametrize("case", list(CASES))
def test_sites_against_hidden_states_and_residual_algebra(case):
    """resid_post is output_hidden_states[layer + 1] (the last one after the family's final norm, where the base
    model applies one); resid_post follows from the block input and the two sites as the family's residual kind
    says; a padded batch gives every real token the state it has alone."""
    model_type = CASES[case][0]
    table = ARCHITECTURES[model_type]
    model = tiny_model(case)
    kind = table.residual_kind(model.config)
    expected_kind = {"gpt_neox-sequential": "sequential", "falcon-sequential": "sequential",
                     "opt-post-norm": "post-norm"}.get(case)
    if expected_kind:
        assert kind == expected_kind
    input_ids, mask, rows, cols = _batch(VOCAB, LENGTHS)
    got = _record(model, table, input_ids, mask, rows, cols)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
        hs = [h[rows, cols] for h in out.hidden_states]
        assert len(hs) == 3
        torch.testing.assert_close(got[(0, "resid_post")], hs[1])
        final = model.get_submodule(table.final_norm) if table.final_norm and _has(model, table.final_norm) else None
        last = got[(1, "resid_post")]
        torch.testing.assert_close(final(last) if final is not None else last, hs[2])
        for layer in (0, 1):
            pre, post = hs[layer], got[(layer, "resid_post")]
            attn, mlp = got[(layer, "attn_out")], got[(layer, "mlp_out")]
            assert attn.abs().max() > 0 and mlp.abs().max() > 0
            if kind == "post-norm":
                block = model.get_submodule(f"{table.blocks}.{layer}")
                n1, n2 = (block.get_submodule(p) for p in table.norms)
                torch.testing.assert_close(n2(n1(pre + attn) + mlp), post, rtol=1e-5, atol=1e-5)
            else:  # sequential and parallel: the same sum
                torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-5, atol=1e-5)
    # Padding: each sequence alone, unpadded, gives its real tokens the same states at every site.
    start = 0
    for i, n in enumerate(LENGTHS):
        alone = _record(model, table, input_ids[i:i + 1, :n], mask[i:i + 1, :n], np.zeros(n, int), np.arange(n))
        for site, states in alone.items():
            torch.testing.assert_close(got[site][start:start + n], states, rtol=1e-4, atol=1e-5)
        start += n


def _has(model, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def test_parallel_families_feed_the_mlp_the_block_input():
    """What tells parallel from sequential: in a parallel block the MLP's input is a norm of the block input,
    so it is unchanged when attention's output is zeroed; in a sequential block it changes."""
    for case, parallel in [("gpt_neox", True), ("gpt_neox-sequential", False), ("phi", True), ("llama", False)]:
        model = tiny_model(case)
        table = ARCHITECTURES[CASES[case][0]]
        mlp = model.get_submodule(f"{table.blocks}.0.{table.mlp_out}")
        attn = model.get_submodule(f"{table.blocks}.0.{table.attn_out}")
        seen = []
        handle = mlp.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].clone()))
        ids = torch.tensor(_batch(VOCAB, [12])[0])
        with torch.no_grad():
            model(input_ids=ids)
            zero = attn.register_forward_hook(lambda _m, _i, o: (o[0] * 0, *o[1:]) if isinstance(o, tuple) else o * 0)
            model(input_ids=ids)
            zero.remove()
        handle.remove()
        assert torch.equal(seen[0], seen[1]) == parallel, case


def test_documented_table_is_the_code():
    """The architecture table in docs/design.md is `markdown_table()`, row for row."""
    lines = (ROOT / "docs" / "design.md").read_text().splitlines()
    start = lines.index("| model_type | blocks | attn_out | mlp_out | residual |")
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    assert lines[start:end] == markdown_table().splitlines()


def test_llama_style_bos_and_position0_are_excluded_by_default():
    """A tokenizer that prefixes every input with a BOS (as Llama's does): every window starts with it, it is a
    special id, and the default exclusion keeps out exactly position 0 of each window plus any BOS."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from tasks.corpus.shards import Exclusion, make_sequences
    from tests.conftest import TOKENIZER
    from workflows.config import CaptureConfig

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("a b")["input_ids"][0] == bos
    docs = [tok(text, add_special_tokens=False)["input_ids"] for text in ("one two three " * 20, "four five")]
    seqs = list(make_sequences(docs, tok, 16, "window"))
    assert len(seqs) > 2 and all(s[0] == bos and bos not in s[1:] for _, _, s in seqs)
    exclusion = Exclusion.from_config(CaptureConfig().exclude, tok)
    assert bos in exclusion.special_ids
    ids = np.concatenate([s for _, _, s in seqs])
    pos = np.concatenate([np.arange(len(s)) for _, _, s in seqs])
    assert np.array_equal(exclusion.mask(ids, pos), pos == 0)
    # the attention sink is position 0 whatever its id: a window starting mid-text is excluded there too
    assert Exclusion(position0=True).mask(np.array([7, 8, 9]), np.array([0, 1, 2])).tolist() == [True, False, False]


def test_every_shipped_config_is_valid():
    """Every config in configs/ passes validation (the hub checkpoints they name cannot be reached here)."""
    from workflows.config import load_config

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        load_config(path)


def test_model_sites_cover_an_architecture_without_a_table():
    """StarCoder2 has no built-in table; `model.sites` paths give sites that match output_hidden_states and the
    sequential algebra, and pass the weightless module-tree check, which refuses a wrong path naming the nearest."""
    from transformers import AutoModel, Starcoder2Config

    from tasks.capture.models import check_sites, site_table
    from tasks.checkpoint.loading import empty_model
    from tasks.errors import UserError

    config = Starcoder2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    assert config.model_type not in ARCHITECTURES
    with pytest.raises(UserError, match="model.sites"):
        site_table(config.model_type)
    sites = [(layer, s) for layer in range(2) for s in SITES]
    table = site_table(config.model_type, {"blocks": "layers", "resid_post": "", "attn_out": "self_attn", "mlp_out": "mlp"})
    check_sites(empty_model(config), table, sites, "model.sites")
    wrong = site_table(config.model_type, {"blocks": "layers", "resid_post": "", "attn_out": "attn", "mlp_out": "mlp"})
    with pytest.raises(UserError, match=r"model.sites: attn_out path 'layers.0.attn' is not a module of "
                                        r"Starcoder2Model; nearest: layers.0.self_attn"):
        check_sites(empty_model(config), wrong, sites, "model.sites")
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    input_ids, mask, rows, cols = _batch(VOCAB, LENGTHS)
    got = _record(model, table, input_ids, mask, rows, cols)
    with torch.no_grad():
        hs = [h[rows, cols] for h in model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask),
                                           output_hidden_states=True).hidden_states]
    torch.testing.assert_close(got[(0, "resid_post")], hs[1])
    for layer in (0, 1):
        torch.testing.assert_close(hs[layer] + got[(layer, "attn_out")] + got[(layer, "mlp_out")],
                                   got[(layer, "resid_post")], rtol=1e-5, atol=1e-5)


def test_roberta_context_is_what_its_position_embeddings_take():
    """RoBERTa numbers positions from its padding index + 1: the context is that much shorter than its position
    embeddings, as the model itself shows (the longest input runs, one token more fails)."""
    from transformers import AutoModel

    from tasks.corpus.shards import context_length
    from tests.families import tiny_config

    config = tiny_config("roberta", max_position_embeddings=40, pad_token_id=1)
    model = AutoModel.from_config(config).eval()
    ctx = context_length(config, None)
    assert ctx == 38
    with torch.no_grad():
        model(input_ids=torch.full((1, ctx), 7))
        with pytest.raises((IndexError, RuntimeError)):  # the first position past the table
            model(input_ids=torch.full((1, ctx + 1), 7))
