"""Models: load a Hugging Face transformer and find the modules behind each capture site.

Sites follow TransformerLens names. For a block with input x:
  `attn_out`   what attention adds to the residual stream (after its output projection),
  `mlp_out`    what the MLP adds to the residual stream (after its down projection),
  `resid_post` the block's output.
One small table per architecture says which submodule's output is each site. BERT is post-LayerNorm: its
`resid_post` is the block output after the second LayerNorm, and its `attn_out`/`mlp_out` are the dense
projections' outputs before their residual add and LayerNorm.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteTable:
    """Module paths relative to the base model: `blocks` is the list of layers; each site is a path inside one
    block ('' is the block itself)."""

    blocks: str
    resid_post: str
    attn_out: str
    mlp_out: str

    def path(self, layer: int, site: str) -> str:
        inner = getattr(self, site)
        return f"{self.blocks}.{layer}" + (f".{inner}" if inner else "")


ARCHITECTURES: dict[str, SiteTable] = {
    # GPT2Block: attn -> (c_proj, resid_dropout) added to x; mlp -> (c_proj, dropout) added to x.
    "gpt2": SiteTable(blocks="h", resid_post="", attn_out="attn", mlp_out="mlp"),
    # BertLayer: attention.output.dense then LayerNorm(x + .); output.dense then LayerNorm(x + .).
    "bert": SiteTable(blocks="encoder.layer", resid_post="", attn_out="attention.output.dense", mlp_out="output.dense"),
}


def site_table(model_type: str) -> SiteTable:
    """The site table for a `config.model_type`, or a UserError naming the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UserError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def resolve_name(name: str) -> str:
    """Turn `package:MODULE/SUBDIR` into the folder inside that installed package; pass other names through."""
    if not name.startswith("package:"):
        return name
    module, _, sub = name[len("package:") :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {name!r}: Python package {module!r} is not installed; pip install it")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise UserError(f"model {name!r}: package {module!r} has no folder {sub!r}")
    return str(folder)


def load_model_config(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's `transformers` config (small, no weights): enough to validate layers and sites early."""
    from transformers import AutoConfig

    path = resolve_name(name)
    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise UserError(
                f"model {name!r} needs remote code (its config maps its model_type to code shipped with the model); "
                f"to run that code, set model.trust_remote_code={name} (it must repeat model.name exactly), or use a "
                "model whose architecture transformers has built in"
            ) from None
        raise UserError(
            f"model {name!r} cannot be found or loaded ({type(exc).__name__}); give a hub name that is cached or "
            "reachable, or a local model folder"
        ) from None


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer, with its length warning silenced (long documents are windowed by the corpus)."""
    from transformers import AutoTokenizer

    path = resolve_name(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UserError(f"tokenizer of model {name!r} cannot be loaded ({type(exc).__name__}); check model.name") from None
    tok.model_max_length = int(1e12)
    return tok


def torch_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (bf16 matmul is much slower there) and bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(
    name: str, dtype: str, device: torch.device, revision: str | None = None, trust_remote_code: bool = False
) -> torch.nn.Module:
    """The base transformer (no task head) in eval mode on `device`; remote code only when opted in by name."""
    from transformers import AutoModel

    path = resolve_name(name)
    try:
        model = AutoModel.from_pretrained(
            path, revision=revision, dtype=torch_dtype(dtype, device), trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        if (unsafe := _unsafe_weights(exc)) is not None:
            raise UserError(
                f"model weights in {path} cannot be loaded safely: {unsafe}; use safetensors weights "
                "(model.safetensors: load the model where its source is trusted and save_pretrained it)"
            ) from None
        raise UserError(f"model {name!r} cannot be loaded ({type(exc).__name__}: {exc}); check model.name") from None
    return model.to(device).eval()


def _unsafe_weights(exc: BaseException) -> str | None:
    """The reason, on one line, when `exc` (or its cause) is torch's weights-only loader refusing a pickled
    checkpoint (`pytorch_model.bin` holding more than tensors: possibly code, which was never run). Retrying
    cannot change that, so it is the user's to fix, not a crash to retry."""
    import pickle

    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError):
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = next((line for line in lines if "GLOBAL" in line or "unsupported" in line.lower()), None)
            return "the weights-only loader refused the pickle" + (f" ({detail.rstrip('.')})" if detail else "")
        exc = exc.__cause__ or exc.__context__
    return None


def n_layers(model_config) -> int:
    return int(getattr(model_config, "n_layer", None) or model_config.num_hidden_layers)


def d_model(model_config) -> int:
    return int(getattr(model_config, "n_embd", None) or model_config.hidden_size)


def resolve_layers(layers, model_config) -> tuple[int, ...]:
    """`all` or a list of 0-based indices, checked against the model's depth."""
    total = n_layers(model_config)
    if layers == "all":
        return tuple(range(total))
    bad = [i for i in layers if i >= total]
    if bad:
        raise UserError(f"capture.layers has layer {bad[0]} but the model has {total} layers (0..{total - 1})")
    return tuple(sorted(layers))
