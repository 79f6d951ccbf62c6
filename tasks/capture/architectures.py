"""Site tables: which module of each architecture is each capture site, and how its residual stream is built.

One meaning for every family. For a block with input `resid_pre`:
  `resid_post` the block's output (what the next block reads);
  `attn_out`   what attention adds to the residual stream: after its output projection, and after a norm the block
               applies to the attention output before adding it (Gemma 2 and 3, OLMo 2);
  `mlp_out`    the same for the MLP (for a mixture of experts, the routed, weighted sum of the experts).
How `resid_post` follows from `resid_pre` and the two sites (`Residual`):
  `sequential` pre-norm: resid_post = resid_pre + attn_out + mlp_out, the MLP reading resid_pre + attn_out;
  `parallel`   the same sum, but attention and MLP both read resid_pre;
  `post-norm`  resid_post = N2(N1(resid_pre + attn_out) + mlp_out), N1 and N2 the block's `norms`.
Dropout between a sublayer and the residual add is the identity in eval mode, so the module before it is the site.
Some families switch residual kind with a config flag (`switch`): GPT-NeoX's `use_parallel_residual`, Falcon's
`parallel_attn`, OPT's `do_layer_norm_before` (OPT-350m is post-norm).

The architecture table in docs/design.md is `markdown_table()` (tests/test_architectures.py keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Residual = Literal["sequential", "parallel", "post-norm", "custom"]


@dataclass(frozen=True)
class SiteTable:
    """Module paths relative to the base model (`AutoModel`): `blocks` is the list of layers; each site is a path
    inside one block ('' is the block itself). `residual` is the block's residual kind; `switch` = (config
    attribute, kind when it is false) where a flag changes it; `norms` the post-norm block's two norms (inside
    the block); `final_norm` the norm the base model applies after the last block (its last hidden state), if
    any; `causal` whether the family is a causal language model (the next-token sanity check applies)."""

    blocks: str
    resid_post: str | None
    attn_out: str | None
    mlp_out: str | None
    residual: Residual = "sequential"
    switch: tuple[str, Residual] | None = None
    norms: tuple[str, str] | None = None
    final_norm: str | None = None
    causal: bool = True

    def path(self, layer: int, site: str) -> str:
        inner = getattr(self, site)
        if inner is None:
            raise KeyError(site)
        return f"{self.blocks}.{layer}" + (f".{inner}" if inner else "")

    def residual_kind(self, model_config) -> Residual:
        """The residual kind of a model with this config (a `switch` flag set false changes it)."""
        if self.switch is not None and not getattr(model_config, self.switch[0], True):
            return self.switch[1]
        return self.residual


def _decoder(attn: str = "self_attn", mlp: str = "mlp", final_norm: str = "norm", **kw) -> SiteTable:
    """A Llama-style decoder: `layers` of pre-norm blocks, a final `norm`."""
    return SiteTable(blocks="layers", resid_post="", attn_out=attn, mlp_out=mlp, final_norm=final_norm, **kw)


_BERT = SiteTable(blocks="encoder.layer", resid_post="", attn_out="attention.output.dense", mlp_out="output.dense",
                  residual="post-norm", norms=("attention.output.LayerNorm", "output.LayerNorm"), causal=False)
_POST_NORMED = _decoder(attn="post_attention_layernorm", mlp="post_feedforward_layernorm")

ARCHITECTURES: dict[str, SiteTable] = {
    "gpt2": SiteTable(blocks="h", resid_post="", attn_out="attn", mlp_out="mlp", final_norm="ln_f"),
    "llama": _decoder(),
    "mistral": _decoder(),
    "mixtral": _decoder(),  # `mlp` is the sparse mixture-of-experts block: its output is the routed sum
    "qwen2": _decoder(),
    "qwen3": _decoder(),
    "gemma": _decoder(),
    "gemma2": _POST_NORMED,  # attention and MLP outputs are normed before their residual add
    "gemma3_text": _POST_NORMED,
    "olmo2": _POST_NORMED,
    "phi3": _decoder(),
    "phi": _decoder(residual="parallel", final_norm="final_layernorm"),
    "gpt_neox": SiteTable(blocks="layers", resid_post="", attn_out="attention", mlp_out="mlp", residual="parallel",
                          switch=("use_parallel_residual", "sequential"), final_norm="final_layer_norm"),
    "gptj": SiteTable(blocks="h", resid_post="", attn_out="attn", mlp_out="mlp", residual="parallel", final_norm="ln_f"),
    "falcon": SiteTable(blocks="h", resid_post="", attn_out="self_attention", mlp_out="mlp", residual="parallel",
                        switch=("parallel_attn", "sequential"), final_norm="ln_f"),
    "gpt_bigcode": SiteTable(blocks="h", resid_post="", attn_out="attn", mlp_out="mlp", final_norm="ln_f"),
    # OPT's MLP is two Linear layers inside the block: `fc2` (its output flattened to tokens x width) is what it adds.
    "opt": SiteTable(blocks="decoder.layers", resid_post="", attn_out="self_attn", mlp_out="fc2",
                     switch=("do_layer_norm_before", "post-norm"), norms=("self_attn_layer_norm", "final_layer_norm"),
                     final_norm="decoder.final_layer_norm"),
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": SiteTable(blocks="transformer.layer", resid_post="", attn_out="attention", mlp_out="ffn",
                            residual="post-norm", norms=("sa_layer_norm", "output_layer_norm"), causal=False),
}


def _cell(path: str | None) -> str:
    return "(block)" if path == "" else f"`{path}`"


def markdown_table() -> str:
    """The documented architecture table: one row per `model_type`, its module paths and residual kind."""
    rows = ["| model_type | blocks | attn_out | mlp_out | residual |", "|---|---|---|---|---|"]
    for name, t in ARCHITECTURES.items():
        kind = t.residual + (f" (`{t.switch[0]}: false`: {t.switch[1]})" if t.switch else "")
        rows.append(f"| `{name}` | `{t.blocks}` | {_cell(t.attn_out)} | {_cell(t.mlp_out)} | {kind} |")
    return "\n".join(rows)
