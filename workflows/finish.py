"""The end of a run, after the statistics are written: the model sanity check, the final manifest, report.html.

Kept apart from `workflows/driver.py` so the driver calls it in one line. The sanity check runs where the
model fits best: on a cluster the driver joined (Ray still connected), as a Ray task asking for the capture
actors' GPUs (`cluster.gpus_per_actor`), since GPT-2-XL in float32 would need 6 GB of the head's memory;
after a local cluster the driver started (and has shut down), in the driver process, on its GPU if
`cluster.gpus_per_actor` > 0 and one is present.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from tasks.capture import sanity
from tasks.capture.next_token import RULE
from tasks.corpus.sources import Unit
from tasks.corpus.tokenized import Framing
from tasks.report.page import write_report
from tasks.storage import RunStore
from workflows.config import Config

log = logging.getLogger(__name__)


def sanity_check(cfg: Config, store: RunStore, model_type: str, units: Sequence[Unit] = (),
                 framing: Framing | None = None) -> dict:
    """For causal LMs: the corpus measures and their verdict (the manifest entry) and the prompts' top tokens
    (`sanity.parquet`, removed when stale or when no prompt is configured); for other models, why it does not
    apply. `units` and `framing` are the run's corpus and how it frames documents."""
    measure = cfg.report.sanity_tokens > 0 and framing is not None
    if not sanity.applies(model_type) or not (cfg.report.prompts or measure):
        store.delete("sanity.parquet")
        reason = (sanity.not_applicable_reason(model_type) if not sanity.applies(model_type)
                  else "no report.prompts and report.sanity_tokens 0")
        log.info("sanity check skipped: %s", reason)
        return {"applies": False, "reason": reason}
    import ray

    args = (cfg.model.name, cfg.model.dtype, list(cfg.report.prompts), cfg.report.top_k,
            list(units) if measure else [], framing)
    kwargs = dict(revision=cfg.model.revision, use_gpu=cfg.cluster.gpus_per_actor > 0,
                  gpus=max(1, int(cfg.cluster.gpus_per_actor)), n_tokens=cfg.report.sanity_tokens,
                  max_docs=cfg.corpus.max_docs, max_tokens=cfg.corpus.max_tokens)
    if ray.is_initialized():
        task = ray.remote(sanity.check_model).options(num_cpus=1, num_gpus=cfg.cluster.gpus_per_actor)
        (table, figures), where = ray.get(task.remote(*args, **kwargs)), "ray task"
    else:
        (table, figures), where = sanity.check_model(*args, **kwargs), "driver"
    if cfg.report.prompts:
        store.write_parquet("sanity.parquet", table)
    else:
        store.delete("sanity.parquet")
    return {"applies": True, "prompts": list(cfg.report.prompts), "top_k": cfg.report.top_k, "ran_in": where,
            **figures, "rule": RULE}


def finish_run(cfg: Config, store: RunStore, manifest: dict, model_type: str, timings: dict, t_start: float,
               units: Sequence[Unit] = (), framing: Framing | None = None) -> None:
    """Sanity check, then the manifest with its entry and final timings, then report.html (which reads them)."""
    t0 = time.perf_counter()
    manifest["sanity"] = sanity_check(cfg, store, model_type, units, framing)
    timings["sanity"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    manifest["timings"] = timings
    store.write_json("manifest.json", manifest)
    write_report(store)
