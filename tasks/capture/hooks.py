"""Capture: run batches through the model with forward hooks at every chosen (layer, site), and gather the
states of selected tokens.

Stage 2 of the data flow. Hooks keep only the selected token positions (gathered on the model's device), so
memory is proportional to the selection, not to batch x sequence x width x sites.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from tasks.capture.models import SiteTable
from tasks.stats.massive import RowIdentity
from tasks.stats.reductions import one_thread, row_norms


def _module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise RuntimeError(f"module {path!r} not found in {type(model).__name__}; the site table is wrong") from None


@dataclass(frozen=True)
class StatsFeed:
    """Which tokens of a (B, T) batch feed the streaming statistics, as indices into its flattened B x T positions,
    in (b, t) order: `rows` feed them (the batch's real tokens less the excluded ones), `second` (positions in
    `rows`; None: all) the d x d ones, `excluded` only the excluded norms (None: no token excluded); `identity`
    and `real` (see `of`) the massive-activation statistics, over every position of the batch (None: not fed).

    The host knows all of this before the forward pass, so the hooks gather with indices and never wait for the
    device (a mask or a `nonzero` there would make the host wait for the card at every site). The hooks still
    leave out the rows whose state is NaN or Inf, which only the device knows: by weights, counted there."""

    rows: torch.Tensor
    second: torch.Tensor | None
    excluded: torch.Tensor | None
    identity: RowIdentity | None = None
    real: torch.Tensor | None = None

    @classmethod
    def of(cls, flat: np.ndarray, excluded: np.ndarray | None, chosen: np.ndarray | None,
           device: torch.device, keys: dict[str, np.ndarray] | None = None, context=None,
           size: int = 0) -> "StatsFeed":
        """From every real token's flat position (`flat`, (b, t) order), which of them are excluded and which
        feed the d x d statistics (bool arrays of the same length, or None for none and all). With `keys` (doc,
        window, pos, token_id of every real token), `context` (indices into them -> context ids) and `size` (B x
        T), also `identity`, the tokens of all B x T positions (padding: -1), and `real` (a bool mask of the real
        positions on the device; None: no padding) for the massive-activation statistics, which read the whole
        batch."""
        fed = slice(None) if excluded is None else ~excluded
        second = None if chosen is None else np.flatnonzero(chosen[fed])
        out = None if excluded is None or not excluded.any() else flat[excluded]
        identity = real = None
        if keys is not None:
            identity = RowIdentity.at(flat, size, keys, excluded, device, context)
            if len(flat) < size:
                mask = np.zeros(size, bool)
                mask[flat] = True
                real = torch.as_tensor(mask, device=device)
        return cls(rows=torch.as_tensor(flat[fed], device=device),
                   second=None if second is None else torch.as_tensor(second, device=device),
                   excluded=None if out is None else torch.as_tensor(out, device=device),
                   identity=identity, real=real)


def _fed(finite: torch.Tensor) -> torch.Tensor | None:
    """The weights that keep a batch's non-finite rows out of the statistics: None (all rows) when a CPU sees that
    all are finite, which costs it nothing; the mask itself on a GPU, where looking would synchronise."""
    return None if finite.device.type == "cpu" and bool(finite.all()) else finite


class SiteRecorder:
    """Forward hooks on every (layer, site); each keeps the output rows at the currently selected positions.

    Set `select` to (batch_index, position) tensors before a forward pass; after it, `gathered()` returns a
    tensor of shape (sites, n_selected, d), in the order of `sites`.
    """

    def __init__(self, model: torch.nn.Module, table: SiteTable, sites: Sequence[tuple[int, str]]):
        self.model = model
        self.sites = list(sites)
        self.paths = [table.path(layer, site) for layer, site in self.sites]
        self.select: tuple[torch.Tensor, torch.Tensor] | None = None
        self.valid: torch.Tensor | None = None  # (B, T) bool: real tokens of the current batch
        self.feed: StatsFeed | None = None  # the tokens of the current batch that feed the statistics
        self._out: list[torch.Tensor | None] = [None] * len(self.sites)
        self.nonfinite: torch.Tensor | None = None  # per site: real tokens whose state has a NaN or Inf
        self.stats: list | None = None  # per site: a SiteStatistics fed every real, finite, not excluded token
        self._moved: dict = {}  # per other device: this batch's selection, mask and feed there (`_on`)

    def _on(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, StatsFeed | None]:
        """The current batch's selection, real-token mask and feed on `device`: the recorder's own where the model
        is on one device; copies, made once per batch and device, where it is split over several."""
        if self.valid is None or device == self.valid.device:
            return self.select, self.valid, self.feed
        if device not in self._moved:
            f = self.feed
            feed = None if f is None else StatsFeed(*(None if x is None else x.to(device) for x in
                                                      (f.rows, f.second, f.excluded)))
            self._moved[device] = (tuple(x.to(device) for x in self.select), self.valid.to(device), feed)
        return self._moved[device]

    def _hook(self, slot: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            (b, t), valid, feed = self._on(hidden.device)
            if hidden.dim() == 2:  # a module that sees the batch's tokens flattened (OPT's fc2)
                hidden = hidden.view(*valid.shape, -1)
            self._out[slot] = hidden[b, t]
            with one_thread(hidden.device):  # the O(n d) work on one thread of two (`one_thread`)
                # One float64 norm per row: it tells the finite rows (a NaN or Inf anywhere makes it non-finite;
                # squares of finite bf16/fp16/fp32 values cannot overflow a float64 sum) and feeds the statistics.
                norms = row_norms(hidden)
                finite = torch.isfinite(norms)
                self.nonfinite[slot] += ((~finite) & valid).sum().to(self.nonfinite.device)
                if self.stats is not None:
                    self._feed(self.stats[slot], hidden, norms, finite, feed)

        return hook

    @staticmethod
    def _feed(stats, hidden: torch.Tensor, norms: torch.Tensor, finite: torch.Tensor, feed: StatsFeed) -> None:
        """Feed a site's statistics (a `SiteStatistics`) the batch's states `hidden` with their row `norms`: the
        tokens the feed names, gathered by index; those with a NaN or Inf (not `finite`) left out by weights. On a
        model split over devices, each site's statistics live on its layer's device."""
        flat, flat_norms, ok = hidden.reshape(-1, hidden.shape[-1]), norms.reshape(-1), finite.reshape(-1)
        if feed.excluded is not None:
            out = feed.excluded
            stats.add_excluded(flat.index_select(0, out), norms=flat_norms.index_select(0, out),
                               weights=_fed(ok.index_select(0, out)))
        rows = feed.rows
        stats.add(flat.index_select(0, rows), second_order_rows=feed.second,
                  norms=flat_norms.index_select(0, rows), weights=_fed(ok.index_select(0, rows)))
        if feed.identity is not None:  # the whole batch, excluded tokens included, padding left out
            fed = _fed(ok)
            stats.add_massive(flat, weights=feed.real if fed is None else fed if feed.real is None else fed & feed.real,
                              identity=feed.identity)

    def reset_counts(self, device: torch.device) -> None:
        self.nonfinite = torch.zeros(len(self.sites), dtype=torch.int64, device=device)

    @contextmanager
    def attached(self) -> Iterator["SiteRecorder"]:
        handles = [_module(self.model, p).register_forward_hook(self._hook(i)) for i, p in enumerate(self.paths)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def gathered(self) -> torch.Tensor:
        """The selected states of the last forward pass, (sites, n, d), on the model's (first) device and in its
        dtype."""
        home = self.select[0].device
        stacked = torch.stack([out.to(home) for out in self._out])
        self._out = [None] * len(self.sites)
        return stacked


def pad_batch(ids: np.ndarray, offsets: np.ndarray, seq_index: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (B, T) input ids and attention mask for the given sequences of a flat id array."""
    starts = offsets[seq_index]
    lengths = offsets[seq_index + 1] - starts
    width = int(lengths.max())
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    flat = np.where(mask, starts[:, None] + cols[None, :], 0)
    input_ids = np.where(mask, ids[flat], pad_id).astype(np.int64)
    return input_ids, mask.astype(np.int64)


@torch.inference_mode()
def forward_and_gather(
    model: torch.nn.Module,
    recorder: SiteRecorder,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> torch.Tensor:
    """One forward pass; returns the states at (rows, cols) for every recorded site, shape (sites, n, d), left
    on the model's device so that a sample can stay there until its shard is done. With statistics on, the
    recorder's `feed` names the tokens that feed them."""
    device = next(model.parameters()).device
    if recorder.nonfinite is None:
        recorder.reset_counts(device)
    recorder._moved = {}
    recorder.select = (torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device))
    recorder.valid = torch.as_tensor(attention_mask, device=device).bool()
    # Without padding, no mask: lets SDPA take its fused causal (flash) path.
    mask = None if attention_mask.all() else torch.as_tensor(attention_mask, device=device)
    model(input_ids=torch.as_tensor(input_ids, device=device), attention_mask=mask)
    return recorder.gathered()
