"""Capture sites: their names and the one key that names a (layer, site) in files, plots and manifests.

Names follow TransformerLens: `resid_post` (the block's output), `attn_out` and `mlp_out` (what attention and the
MLP add to the residual stream). Layers count from 0. `site_key` zero-pads the layer so that keys sort in
depth order (the parts of `samples.parquet` are read back in that order).
"""

from __future__ import annotations

SITES: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")


def site_key(layer: int, site: str) -> str:
    """`L003-resid_post`: the name of one (layer, site) wherever a file, plot or record needs one."""
    return f"L{layer:03d}-{site}"


def site_order(names) -> list[str]:
    """Site names in the conventional order (block output, attention, MLP), any others after, sorted."""
    present = set(names)
    return [s for s in SITES if s in present] + sorted(present - set(SITES))
