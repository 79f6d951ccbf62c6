"""`run.out` on an object store: the tiny workflow against a local S3-compatible server (moto, on loopback),
including resume, compared with the same run on a local disk."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tasks.storage import RunStore
from tests.conftest import tiny_config
from workflows.cli import main as cli_main
from workflows.driver import run

pytestmark = pytest.mark.slow  # a run, a resume and a report on a local S3 server


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto server did not start"
                time.sleep(0.3)
        fs, _ = pafs.FileSystem.from_uri(f"s3://bucket?endpoint_override={endpoint}&scheme=http&region=us-east-1"
                                         "&allow_bucket_creation=true")
        fs.create_dir("bucket")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_resume_and_report_on_s3(s3_endpoint, tiny_run, tiny_gpt2, prose, tmp_path):
    uri = f"s3://bucket/tiny?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    local = tiny_run  # the same config's run into a local directory
    assert run(tiny_config(tiny_gpt2, prose, uri)) == uri
    store = RunStore(uri)
    m = store.read_json("manifest.json")
    assert m["status"] == "complete" and m["shards"]["reused"] == 0
    for name in ("summary.parquet", "histograms.parquet", "exemplars.parquet"):
        assert store.read_parquet(name).equals(RunStore(str(local)).read_parquet(name)), name
    assert store.read_parquet("samples.parquet").sort_by([("layer", "ascending"), ("site", "ascending"),
                                                          ("index", "ascending")]).num_rows == 6 * 300
    assert "overview.png" in store.list("plots")
    # resume on the object store: drop one shard's record, rerun
    records = [n for n in store.list("shards") if n.endswith(".json")]
    store.delete(f"shards/{records[1]}")
    run(tiny_config(tiny_gpt2, prose, uri))
    m = store.read_json("manifest.json")
    assert (m["shards"]["reused"], m["shards"]["computed"]) == (len(records) - 1, 1)
    assert store.read_parquet("histograms.parquet").equals(RunStore(str(local)).read_parquet("histograms.parquet"))
    # report from the object store alone
    store.delete("plots")
    assert cli_main(["report", uri]) == 0 and "overview.png" in store.list("plots")


def test_gguf_model_from_s3(s3_endpoint, tmp_path, monkeypatch):
    """`model.name` as an `s3://` URI of a GGUF file: downloaded once into the cache, it loads the same weights as
    the local file, and its digest (what the config hash covers) is the file's SHA-256."""
    import hashlib

    import torch

    from tasks.checkpoint.gguf import checkpoint_digest
    from tasks.checkpoint.loading import load_model
    from tests.gguf_files import write_tiny_llama

    monkeypatch.setenv("GPT_STATS_CACHE", str(tmp_path / "cache"))
    local = write_tiny_llama(tmp_path / "tiny.gguf")
    options = f"endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://bucket?{options}")
    with fs.open_output_stream("bucket/models/tiny.gguf") as f:
        f.write(local.read_bytes())
    uri = f"s3://bucket/models/tiny.gguf?{options}"
    assert checkpoint_digest(uri) == hashlib.sha256(local.read_bytes()).hexdigest() == checkpoint_digest(str(local))
    remote = load_model(uri, "float32", torch.device("cpu")).state_dict()
    mine = load_model(str(local), "float32", torch.device("cpu")).state_dict()
    assert remote.keys() == mine.keys() and all(torch.equal(remote[k], mine[k]) for k in remote)
    assert len(list((tmp_path / "cache" / "downloads").glob("*.gguf"))) == 1
