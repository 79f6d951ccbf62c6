"""The Ray cluster a run uses: join the one named by `RAY_ADDRESS` or `cluster.address`, or start a local one."""

from __future__ import annotations

import logging
import os
import time

from tasks.errors import UserError
from workflows.config import Config

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def connect_ray(cfg: Config) -> bool:
    """Join the cluster at RAY_ADDRESS or cluster.address, or start a local one. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    # Workers import `tasks` and `workflows` from the project root, installed or not. A job submitted with
    # `ray job submit --working-dir` brings its own runtime environment (the uploaded project) instead.
    path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = None if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else {"env_vars": {"PYTHONPATH": path}}
    address = os.environ.get("RAY_ADDRESS") or cfg.cluster.address
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    log.info("starting a local Ray cluster")
    ray.init(include_dashboard=False, runtime_env=runtime_env)
    return True


def wait_for_gpus(cfg: Config) -> None:
    """Fail at once when actors ask for GPUs the cluster does not have, unless told to wait for an autoscaler."""
    import ray

    if cfg.cluster.gpus_per_actor <= 0:
        return
    deadline = time.monotonic() + cfg.cluster.gpu_wait_s
    while ray.cluster_resources().get("GPU", 0) < cfg.cluster.gpus_per_actor:
        if time.monotonic() >= deadline:
            waited = f" after waiting {cfg.cluster.gpu_wait_s:g} s" if cfg.cluster.gpu_wait_s else ""
            raise UserError(
                f"cluster.gpus_per_actor={cfg.cluster.gpus_per_actor:g} but the Ray cluster has no GPU{waited}; "
                "set cluster.gpus_per_actor=0 to run on CPU, or cluster.gpu_wait_s for an autoscaling cluster"
            )
        time.sleep(2.0)
