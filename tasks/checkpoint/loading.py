"""Loading a checkpoint: the model name resolved to a path, its config, its tokenizer and its weights.

Every stage that needs the model goes through here (the corpus readers for the tokenizer, the capture actors and
the sanity check for the weights, the driver for the config), so that each loads the same thing the same way. A
GGUF file (`model.name` ending in `.gguf`) stands for the model folder `tasks.checkpoint.gguf` converts it into.
Weights the checkpoint does not hold are refused, never initialised at random (`load_model`).
"""

from __future__ import annotations

import logging

import torch

from tasks.checkpoint.gguf import converted_folder, is_gguf, package_path
from tasks.errors import UserError

log = logging.getLogger(__name__)


def _auto_class(causal_lm: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if causal_lm else AutoModel


def empty_model(model_config, trust_remote_code: bool = False, causal_lm: bool = False) -> torch.nn.Module:
    """The base model's (with `causal_lm`, the language model's) module tree with no weights (every tensor on the
    `meta` device): checks module paths and plans a device split before any weight is read, whatever its size."""
    with torch.device("meta"):
        return _auto_class(causal_lm).from_config(model_config, trust_remote_code=trust_remote_code)


def resolve_name(name: str) -> str:
    """Turn `package:MODULE/SUBDIR` into the folder inside that installed package, and a GGUF file (a path, URI or
    `package:MODULE/FILE.gguf`) into its converted model folder; pass other names through."""
    if is_gguf(name):
        return str(converted_folder(name))
    if not name.startswith("package:"):
        return name
    folder = package_path(name)
    if not folder.is_dir():
        module, _, sub = name[len("package:"):].partition("/")
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
    `gpus` > 1 split over that many GPUs (`tasks.checkpoint.split`); remote code only when opted in by name.

    A parameter the checkpoint does not provide (`transformers`' `missing_keys`, which accounts for tied weights:
    a tied head is no missing key) is a UserError naming it: `transformers` would initialise it at random and the
    run would measure noise. The "Loading weights" progress bar is off (one per actor in a cluster's logs)."""
    path = resolve_name(name)
    torch_type = torch_dtype(dtype, device)
    placement = {}
    if gpus > 1:
        from tasks.checkpoint.split import device_plan, gpu_budgets

        skeleton = empty_model(load_model_config(name, revision, trust_remote_code), trust_remote_code, causal_lm)
        placement = {"device_map": device_plan(skeleton, gpu_budgets(gpus), torch_type)}
        log.info("model %s split over %d GPUs: %s", name, gpus, placement["device_map"])
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, info = _auto_class(causal_lm).from_pretrained(
            path, revision=revision, dtype=torch_type, trust_remote_code=trust_remote_code, output_loading_info=True,
            **placement
        )
    except Exception as exc:
        if (unsafe := _unsafe_weights(exc)) is not None:
            raise UserError(
                f"model weights in {path} cannot be loaded safely: {unsafe}; use safetensors weights "
                "(model.safetensors: load the model where its source is trusted and save_pretrained it)"
            ) from None
        raise UserError(f"model {name!r} cannot be loaded ({type(exc).__name__}: {exc}); check model.name") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    refuse_missing(name, type(model).__name__, info.get("missing_keys") or ())
    return (model if placement else model.to(device)).eval()


def refuse_missing(name: str, model_class: str, missing) -> None:
    """One line naming the parameters of `model_class` that checkpoint `name` does not hold, if any."""
    missing = sorted(missing)
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise UserError(f"model {name!r}: the checkpoint does not hold {len(missing)} weight(s) of {model_class}: "
                        f"{shown}; they would be random. Use a checkpoint that holds them (a base model's "
                        "weights saved under the names its class expects)")


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
