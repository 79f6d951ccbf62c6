"""`ray job submit` for real: a Ray head started on loopback by this test, the tiny workflow submitted with
`--working-dir` (nothing installed on the 'cluster'), its outputs checked, and the head stopped by its own id."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow  # a Ray head and `ray job submit`

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_on_loopback(tiny_gpt2, prose, tmp_path):
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="gs-job-", dir="/tmp")
    dash = _free_port()
    ports = {flag: _free_port() for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")}
    head = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", "--num-cpus=2", "--object-store-memory=300000000",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
         "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([str(bindir / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, "ray head exited"
            assert time.monotonic() < deadline, "ray head did not come up in 90 s"
            time.sleep(2)
        cfg = tmp_path / "tiny.yaml"
        out = tmp_path / "out"
        cfg.write_text(yaml.safe_dump({
            "model": {"name": str(tiny_gpt2), "dtype": "float32"},
            "corpus": {"source": "files", "files": [str(prose)], "max_docs": 200, "shard_tokens": 3000},
            "sample": {"size": 200}, "similarity": {"bins": 50, "tile": 128},
            "cluster": {"actors": 2}, "run": {"out": str(out)},
        }))
        res = subprocess.run(
            [str(bindir / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
             "python", "-m", "workflows.run", str(cfg)],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0 and "succeeded" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete" and len(manifest["actors"]) == 2
        summary = pq.read_table(out / "summary.parquet")
        assert summary.num_rows == 18 and set(summary.column("n_sample").to_pylist()) == {200}  # 6 sites x 3 variants
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head we started, and only it
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
