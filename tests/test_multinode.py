"""Multi-node placement and node loss, on a simulated cluster in its own process (tests/multinode_run.py)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # a simulated cluster of several nodes

from tests.test_workflow import expected_sample

ROOT = Path(__file__).resolve().parent.parent


def test_actors_on_workers_and_a_node_removed_mid_run(tiny_gpt2, prose, tmp_path):
    temp = tempfile.mkdtemp(prefix="gs-mn-", dir="/tmp")
    out = tmp_path / "run"
    faults = tmp_path / "faults"  # every shard takes a second longer, so both actors have work in flight
    faults.mkdir()
    try:
        res = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_run.py"), str(tiny_gpt2), str(prose),
                              str(out), temp], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "RAY_TMPDIR": temp, "GPT_STATS_FAULTS": "delay@*x1",
                                  "GPT_STATS_FAULT_DIR": str(faults)})
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-4000:]
    nodes = json.loads(res.stdout.strip().splitlines()[-1])
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete"
    assert nodes["removed"] in nodes["workers"]
    placed = {a["node"] for a in m["actors"]}
    assert placed and placed <= set(nodes["workers"]) and nodes["head"] not in placed  # actors only on workers
    assert m["shards"]["retries"] >= 1  # the removed node's actor had shards in flight: they were retried
    assert m["shards"]["computed"] == m["shards"]["total"]
    # nothing lost: the sample is the bottom-k of the whole corpus, as on one node
    samples = pq.read_table(out / "samples.parquet").to_pandas()
    one = samples[(samples.layer == 0) & (samples.site == "resid_post")].sort_values("index")
    doc, pos, token = expected_sample(tiny_gpt2, prose, max_docs=300, k=300, seed=1)
    assert np.array_equal(one.doc.to_numpy(), doc) and np.array_equal(one.pos.to_numpy(), pos)
    assert np.array_equal(one.token_id.to_numpy(), token)
