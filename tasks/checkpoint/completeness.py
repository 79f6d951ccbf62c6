"""Does the checkpoint hold every weight of the model the actors capture? Told from tensor names alone.

The capture actors load the base model and refuse any parameter `transformers` reports missing (`load_model`);
that check is authoritative, but it runs in the actors, after the run directory is taken over. This one runs in
the driver before anything heavy starts, and reads only the names of the tensors in the checkpoint's
safetensors headers (no weights): each parameter of the base model, built without weights, must appear under its
own name or under the base-model prefix (`model.`, `transformer.`, ...), as `transformers` loads it from a base
or a language-model checkpoint. A tied head is no base-model parameter, so a checkpoint that leaves it out passes.

It decides only when it can read every name: when the checkpoint holds a tensor name that is neither a base-model
nor a language-model name (old or foreign names that `transformers` renames while loading, fused experts, another
task's head), it says nothing and leaves the decision to the actors' load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tasks.checkpoint.loading import empty_model, refuse_missing, resolve_name

log = logging.getLogger(__name__)


def checkpoint_keys(folder: Path) -> set[str] | None:
    """The tensor names of a model folder's safetensors weights (headers only), or None without any."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return set(f.keys())


def missing_weights(base, lm, keys: set[str]) -> list[str] | None:
    """The parameters of `base` (a model built without weights) that no name of `keys` provides, or None when
    `keys` holds names this check cannot place (see the module's doc). `lm` is the language model built without
    weights, whose head's names are expected in a checkpoint, or None."""
    prefix = getattr(base, "base_model_prefix", "") or ""
    own = set(base.state_dict().keys())
    known = own | {f"{prefix}.{k}" for k in own if prefix}
    if lm is not None:
        known |= set(lm.state_dict().keys())
    if keys - known:
        return None
    params = [name for name, _ in base.named_parameters()]
    return sorted(p for p in params if p not in keys and f"{prefix}.{p}" not in keys)


def check_weights(name: str, model_config, revision: str | None = None, trust_remote_code: bool = False,
                  causal: bool = False) -> None:
    """A UserError naming the base model's parameters that the local checkpoint folder `name` stands for does
    not hold; nothing when it holds them all, or when its names cannot tell (a hub name, pickled weights, names
    `transformers` renames): the actors' load decides then. `causal`: the model has a language-model head."""
    folder = Path(resolve_name(name))
    if revision is not None or not folder.is_dir():
        return
    keys = checkpoint_keys(folder)
    if keys is None:
        return
    try:
        base = empty_model(model_config, trust_remote_code)
        lm = empty_model(model_config, trust_remote_code, causal_lm=True) if causal else None
    except Exception as exc:  # a model that cannot be built without weights: the actors' load checks it
        log.debug("weights check skipped for %s: %s: %s", name, type(exc).__name__, exc)
        return
    missing = missing_weights(base, lm, keys)
    if missing:
        refuse_missing(name, type(base).__name__, missing)
