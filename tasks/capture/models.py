"""Models: find the modules behind each capture site of a Hugging Face transformer.

The site tables of the built-in architectures, and what each site means, are in `tasks/capture/architectures.py`;
`model.sites` gives the paths of any other architecture. Paths are checked against the model's module tree,
built without weights, before anything heavy starts.
"""

from __future__ import annotations

import difflib
import logging
from typing import Mapping, Sequence

import torch

from tasks.capture.architectures import ARCHITECTURES, SiteTable
from tasks.checkpoint.loading import empty_model
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
