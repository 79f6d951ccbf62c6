"""Run the tiny workflow on a simulated multi-node Ray cluster (`ray.cluster_utils.Cluster`): a head and two
worker nodes, each worker with one unit of a custom resource `accel` standing in for a GPU; capture actors ask
for it, so they can only live on the workers. Once the first shard is done, one worker node is removed.

    python tests/multinode_run.py MODEL_DIR TEXT_FILE OUT_DIR TEMP_DIR

Used by tests/test_multinode.py (in its own process: one Ray cluster per process).
"""

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(model: str, text: str, out: str, temp: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from tests.conftest import tiny_config
    from workflows.driver import run

    Path(temp, "ray").mkdir(parents=True, exist_ok=True)  # RAY_TMPDIR=temp: Ray's address file goes here
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": str(Path(temp, "ray")),
                                                           "object_store_memory": 200 * 1024 * 1024})
    workers = [cluster.add_node(num_cpus=1, resources={"accel": 1}) for _ in range(2)]
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}},
             logging_level="WARNING", log_to_driver=False)
    head_id = cluster.head_node.node_id
    removed = {}

    def remove_a_worker() -> None:
        shards = Path(out) / "shards"
        while not list(shards.glob("*.json")):
            time.sleep(0.2)
        removed["node"] = workers[0].node_id
        cluster.remove_node(workers[0])

    watcher = threading.Thread(target=remove_a_worker, daemon=True)
    watcher.start()
    try:
        cfg = tiny_config(Path(model), Path(text), Path(out), "cluster.actors=2", "cluster.resources={accel: 1}",
                          "corpus.shard_tokens=3000", "cluster.actor_wait_s=60",
                          "cluster.shards_in_flight=2", "stats.flush_every=4")
        run(cfg)
        watcher.join(timeout=5)
        print(json.dumps({"head": head_id, "workers": [w.node_id for w in workers], "removed": removed.get("node")}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
