"""Models: load a Hugging Face transformer and find the modules behind each capture site.

The site tables of the built-in architectures, and what each site means, are in `tasks/capture/architectures.py`;
`model.sites` gives the paths of any other architecture. Paths are checked against the model's module tree,
built without weights, before anything heavy starts.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch

from tasks.capture.architectures import ARCHITECTURES, SiteTable
from tasks.errors import UserError

log = logging.getLogger(__name__)


def site_table(model_type: str, custom: Mapping[str, str] | None = None) -> SiteTable:
    """The site table for a `config.model_type`, or the one `model.sites` gives (`custom`: blocks and site paths,
    which take precedence); a UserError for an architecture with neither."""
    if custom:
        return SiteTable(blocks=custom["blocks"], resid_post=custom.get("resid_post"), attn_out=custom.get("attn_out"),
                         mlp_out=custom.get("mlp_out"), residual="custom", causal=False)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UserError(
            f"architecture {model_type!r} is not supported out of the box (built in: {', '.join(sorted(ARCHITECTURES))}); "
            "give its module paths in model.sites, e.g. {blocks: model.layers, resid_post: '', attn_out: self_attn, "
            "mlp_out: mlp}"
        ) from None


def _auto_class(causal_lm: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if causal_lm else AutoModel


def empty_model(model_config, trust_remote_code: bool = False, causal_lm: bool = False) -> torch.nn.Module:
    """The base model's (with `causal_lm`, the language model's) module tree with no weights (every tensor on the
    `meta` device): checks module paths and plans a device split before any weight is read, whatever its size."""
    with torch.device("meta"):
        return _auto_class(causal_lm).from_config(model_config, trust_remote_code=trust_remote_code)


def check_sites(model: torch.nn.Module, table: SiteTable, sites: Sequence[tuple[int, str]], source: str) -> None:
    """Every (layer, site) names a module of `model`; else a UserError naming the first missing path and the
    nearest existing module names. `source` says where the paths came from (`model.sites`, or a site table)."""
    names = [name for name, _ in model.named_modules()]
    known = set(names)
    paths = [(table.blocks, "blocks")] + [(_path_or_none(table, layer, site), site) for layer, site in sites]
    for path, what in paths:
        if path is None:
            raise UserError(f"{source} has no path for site {what!r}; add {what}: PATH (relative to a block) or drop "
                            "the site from capture.sites")
        if path not in known:
            near = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
            raise UserError(f"{source}: {what} path {path!r} is not a module of {type(model).__name__}; nearest: "
                            f"{', '.join(near) or '(none)'}")


def validated_table(model_config, custom: Mapping[str, str] | None, sites: Sequence[tuple[int, str]],
                    trust_remote_code: bool = False) -> SiteTable:
    """The site table of this model (`site_table`), its paths checked against the module tree built without
    weights (`empty_model`), so that a wrong path stops the run before any actor loads weights."""
    table = site_table(model_config.model_type, custom)
    try:
        skeleton = empty_model(model_config, trust_remote_code)
    except Exception as exc:  # the actors' hooks check the paths again against the loaded model
        log.warning("cannot build %s without weights to check its site paths (%s: %s); the actors will check them",
                    model_config.model_type, type(exc).__name__, exc)
        return table
    check_sites(skeleton, table, sites, "model.sites" if custom else f"the site table of {model_config.model_type!r}")
    return table


def _path_or_none(table: SiteTable, layer: int, site: str) -> str | None:
    try:
        return table.path(layer, site)
    except KeyError:
        return None


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
    name: str, dtype: str, device: torch.device, revision: str | None = None, trust_remote_code: bool = False,
    gpus: int = 1, causal_lm: bool = False,
) -> torch.nn.Module:
    """The base transformer (no task head; with `causal_lm` the language model) in eval mode on `device`, or with
    `gpus` > 1 split over that many GPUs (`tasks.capture.split`); remote code only when opted in by name."""
    path = resolve_name(name)
    torch_type = torch_dtype(dtype, device)
    placement = {}
    if gpus > 1:
        from tasks.capture.split import device_plan, gpu_budgets

        skeleton = empty_model(load_model_config(name, revision, trust_remote_code), trust_remote_code, causal_lm)
        placement = {"device_map": device_plan(skeleton, gpu_budgets(gpus), torch_type)}
        log.info("model %s split over %d GPUs: %s", name, gpus, placement["device_map"])
    try:
        model = _auto_class(causal_lm).from_pretrained(
            path, revision=revision, dtype=torch_type, trust_remote_code=trust_remote_code, **placement
        )
    except Exception as exc:
        if (unsafe := _unsafe_weights(exc)) is not None:
            raise UserError(
                f"model weights in {path} cannot be loaded safely: {unsafe}; use safetensors weights "
                "(model.safetensors: load the model where its source is trusted and save_pretrained it)"
            ) from None
        raise UserError(f"model {name!r} cannot be loaded ({type(exc).__name__}: {exc}); check model.name") from None
    return (model if placement else model.to(device)).eval()


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
