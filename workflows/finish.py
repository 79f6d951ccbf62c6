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

from tasks.capture import sanity
from tasks.report.page import write_report
from tasks.storage import RunStore
from workflows.config import Config

log = logging.getLogger(__name__)


def sanity_check(cfg: Config, store: RunStore, model_type: str) -> dict:
    """Write `sanity.parquet` for causal LMs (and remove a stale one otherwise); returns the manifest entry."""
    if not sanity.applies(model_type) or not cfg.report.prompts:
        store.delete("sanity.parquet")
        reason = sanity.not_applicable_reason(model_type) if cfg.report.prompts else "no report.prompts configured"
        log.info("sanity check skipped: %s", reason)
        return {"applies": False, "reason": reason}
    import ray

    args = (cfg.model.name, cfg.model.dtype, list(cfg.report.prompts), cfg.report.top_k, cfg.model.revision)
    use_gpu, gpus = cfg.cluster.gpus_per_actor > 0, max(1, int(cfg.cluster.gpus_per_actor))
    if ray.is_initialized():
        task = ray.remote(sanity.next_token_predictions).options(num_cpus=1, num_gpus=cfg.cluster.gpus_per_actor)
        table, where = ray.get(task.remote(*args, use_gpu=use_gpu, gpus=gpus)), "ray task"
    else:
        table, where = sanity.next_token_predictions(*args, use_gpu=use_gpu, gpus=gpus), "driver"
    store.write_parquet("sanity.parquet", table)
    return {"applies": True, "prompts": list(cfg.report.prompts), "top_k": cfg.report.top_k, "ran_in": where}


def finish_run(cfg: Config, store: RunStore, manifest: dict, model_type: str, timings: dict, t_start: float) -> None:
    """Sanity check, then the manifest with its entry and final timings, then report.html (which reads them)."""
    t0 = time.perf_counter()
    manifest["sanity"] = sanity_check(cfg, store, model_type)
    timings["sanity"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    manifest["timings"] = timings
    store.write_json("manifest.json", manifest)
    write_report(store)
