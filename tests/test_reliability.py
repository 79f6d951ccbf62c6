"""Reliability: resume after failures, actor deaths, corrupt or partial shard files, non-finite activations,
and run-directory safety. Every finished run is compared with an uninterrupted reference run."""

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.errors import RunError, UserError
from tests.conftest import tiny_config
from workflows.driver import run

pytestmark = pytest.mark.slow  # each test runs the workflow under a fault, then again to resume


@pytest.fixture
def reference(tiny_run):
    """The uninterrupted run every run here must equal (the session's `tiny_run`)."""
    return tiny_run


def manifest(run_dir):
    return json.loads((Path(run_dir) / "manifest.json").read_text())


def assert_same_results(a: Path, b: Path) -> None:
    """Every table byte for byte (statistics groups make the streaming statistics deterministic too); and, as
    tables, samples and histogram counts bit for bit, floating summary numbers to 1e-12 relative."""
    from tests.test_determinism import table_bytes

    ta, tb = table_bytes(a), table_bytes(b)
    assert ta.keys() == tb.keys() and [name for name in ta if ta[name] != tb[name]] == []
    assert pq.read_table(a / "samples.parquet").equals(pq.read_table(b / "samples.parquet"))
    assert pq.read_table(a / "histograms.parquet").equals(pq.read_table(b / "histograms.parquet"))
    assert pq.read_table(a / "exemplars.parquet").equals(pq.read_table(b / "exemplars.parquet"))
    assert pq.read_table(a / "massive.parquet").equals(pq.read_table(b / "massive.parquet"))
    sa, sb = pq.read_table(a / "summary.parquet").to_pandas(), pq.read_table(b / "summary.parquet").to_pandas()
    for col in sa.columns:
        if sa[col].dtype.kind == "f":
            np.testing.assert_allclose(sa[col], sb[col], rtol=1e-12, atol=0)
        else:
            assert sa[col].equals(sb[col]), col  # equal values, and nulls in the same places


def finished(out: Path) -> set[int]:
    """Shards an interrupted run really finished: sample record written and statistics flushed."""
    records = {int(p.stem.split("-")[1]) for p in (out / "shards").glob("*.json")}
    flushed = {i for p in (out / "stats").glob("*.json") for i in json.loads(p.read_text())["shards"]}
    return records & flushed


def faults(monkeypatch, tmp_path, spec: str) -> None:
    folder = tmp_path / "faults"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("GPT_STATS_FAULTS", spec)
    monkeypatch.setenv("GPT_STATS_FAULT_DIR", str(folder))


def test_failed_shard_fails_the_run_then_resume_completes_identically(reference, tiny_gpt2, prose, tmp_path, monkeypatch):
    out = tmp_path / "run"
    faults(monkeypatch, tmp_path, "raise@2x99")
    with pytest.raises(RunError, match=r"shard 2 failed 2 times; last error: .*injected fault on shard 2"):
        run(tiny_config(tiny_gpt2, prose, out, "cluster.max_retries=1"))
    failed = manifest(out)
    assert failed["status"] == "failed" and "shard 2" in failed["reason"]
    time.sleep(1.0)  # actors are killed on failure; let a write already under way land (atomically) first
    saved = finished(out)
    assert 2 not in saved and len(saved) >= 1
    monkeypatch.delenv("GPT_STATS_FAULTS")
    run(tiny_config(tiny_gpt2, prose, out))
    done = manifest(out)
    assert done["status"] == "complete" and done["attempt"] == 2
    assert done["shards"]["reused"] == len(saved)
    assert done["shards"]["reused"] + done["shards"]["computed"] == done["shards"]["total"]
    assert_same_results(reference, out)


def test_actor_death_is_survived(reference, tiny_gpt2, prose, tmp_path, monkeypatch):
    faults(monkeypatch, tmp_path, "exit@1x1,exit@3x1")
    out = run(tiny_config(tiny_gpt2, prose, tmp_path / "run", "cluster.actors=2"))
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["retries"] >= 2
    assert len(list((tmp_path / "faults").iterdir())) == 2  # both faults fired
    assert_same_results(reference, out)


def test_corrupt_and_partial_shards_are_recomputed(reference, tiny_gpt2, prose, tmp_path):
    out = _copy(reference, tmp_path)  # a finished run of the config
    total = manifest(out)["shards"]["total"]
    npz = sorted((out / "shards").glob("*.npz"))
    data = bytearray(npz[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz[0].write_bytes(bytes(data))  # corrupt: checksum mismatch
    (out / "shards" / npz[1].name.replace(".npz", ".json")).unlink()  # partial: sample without record
    npz[2].unlink()  # record without sample
    run(tiny_config(tiny_gpt2, prose, out))
    m = manifest(out)
    assert m["shards"]["computed"] == 3 and m["shards"]["reused"] == total - 3
    assert_same_results(reference, out)
    # all shards finished: a rerun only merges and analyses again
    run(tiny_config(tiny_gpt2, prose, out))
    assert manifest(out)["shards"]["reused"] == total and "capture" not in manifest(out)["timings"]
    assert_same_results(reference, out)


def test_other_config_is_refused_and_fresh_replaces(reference, tiny_gpt2, prose, tmp_path):
    out = _copy(reference, tmp_path)  # a finished run of the config
    with pytest.raises(UserError, match="holds results of another config .* pass --fresh"):
        run(tiny_config(tiny_gpt2, prose, out, "run.seed=7"))
    assert manifest(out)["status"] == "complete"  # untouched
    run(tiny_config(tiny_gpt2, prose, out, "run.seed=7"), fresh=True)
    m = manifest(out)
    assert m["config"]["run"]["seed"] == 7 and m["shards"]["reused"] == 0 and m["attempt"] == 1


def test_nonfinite_states_are_counted_and_kept_out(ray_cluster, tiny_gpt2, prose, tmp_path):
    """A token whose embedding is infinite poisons its own and later positions: the run must count those
    states per site (checked against a direct forward pass), keep them out of the sample, and stay finite."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tasks.corpus.documents import load_texts, tokenize
    from tasks.corpus.shards import make_sequences

    model = AutoModel.from_pretrained(tiny_gpt2)
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    docs = tokenize(load_texts("files", files=[str(prose)]), tok, max_docs=40)
    counts = np.bincount(np.concatenate(docs))
    poison = int(np.flatnonzero(counts == 3)[0])  # a token that occurs three times
    with torch.no_grad():
        model.wte.weight[poison] = float("inf")
    folder = tmp_path / "poisoned"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    total = sum(len(d) for d in docs)
    cfg = tiny_config(folder, prose, tmp_path / "run", "corpus.max_docs=40", f"sample.size={total // 4}")
    out = run(cfg)
    m = manifest(out)
    assert m["nonfinite"]["tokens_examined"] == total  # every batch ran, so every token was examined
    # brute force: non-finite block outputs per layer, sequence by sequence (ln_f keeps inf/nan non-finite)
    expected = np.zeros(2, dtype=int)
    with torch.no_grad():
        for _, _, seq in make_sequences(docs, tok, 128, "window"):
            hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            expected += [int((~torch.isfinite(hs[layer + 1]).all(-1)).sum()) for layer in (0, 1)]
    per_site = m["nonfinite"]["per_site"]
    assert [per_site["L000-resid_post"], per_site["L001-resid_post"]] == expected.tolist() and expected.min() > 0
    summary = pq.read_table(out / "summary.parquet").to_pandas()
    assert (summary.n_nonfinite > 0).all()
    assert np.isfinite(summary[["cos_mean", "cos_std", "d_fit"]].to_numpy()).all()
    samples = pq.read_table(out / "samples.parquet").to_pandas()
    assert np.isfinite(np.stack(samples.vector)).all()
    assert (samples.token_id != poison).all()


def test_killed_driver_resumes(reference, tiny_gpt2, prose, tmp_path):
    """SIGKILL a driver connected to the running cluster mid-capture (Ray then ends its job and actors); the
    same command resumes."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    out = tmp_path / "run"
    cfg = tiny_config(tiny_gpt2, prose, out)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    root = Path(__file__).resolve().parent.parent
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "workflows.run", str(path), "--set", "cluster.actors=1"],
                              cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (out / "stats").exists() and len(finished(out)) < 2 or not (out / "stats").exists():
            assert driver.poll() is None, f"driver ended before it could be killed: {driver.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert manifest(out)["status"] == "running"  # what a script sees after a crash: not complete
    time.sleep(1.0)
    saved = len(finished(out))
    run(cfg)
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["reused"] == saved >= 2
    assert_same_results(reference, out)


def test_shard_failing_mid_way_is_not_counted_twice(reference, tiny_gpt2, prose, tmp_path, monkeypatch):
    """A shard that fails after its first forward pass has fed the actor's statistics (a GPU out of memory mid-shard)
    and then runs again must count once: the statistics match the uninterrupted run."""
    faults(monkeypatch, tmp_path, "late@2x1")
    out = run(tiny_config(tiny_gpt2, prose, tmp_path / "run"))  # 3 forward passes per shard
    assert len(list((tmp_path / "faults").iterdir())) == 1 and manifest(out)["shards"]["retries"] == 1
    assert_same_results(reference, out)


def _driver(cfg, tmp_path, name: str, *args: str):
    """A driver process (`python -m workflows.run`) joined to the session's cluster; stderr to a file."""
    import os
    import subprocess
    import sys

    import ray
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    err = open(tmp_path / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "workflows.run", str(path), *args], cwd=root, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=err, text=True)


def _wait_for_shards(driver, out: Path, n: int, err: Path) -> None:
    deadline = time.monotonic() + 120
    while not (out / "stats").exists() or len(finished(out)) < n:
        assert driver.poll() is None, f"driver ended early: {err.read_text()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _error_lines(text: str) -> list[str]:
    assert "Traceback" not in text and "***" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("gpt-stats:")]


def test_second_driver_on_the_same_run_directory_is_refused(reference, tiny_gpt2, prose, tmp_path):
    """Two drivers on one run.out: the second refuses with one line naming the holder (exit 2) and touches
    nothing; the first completes with the results of a lone run and releases the lock."""
    import os
    import signal
    import socket

    out = tmp_path / "run"
    cfg = tiny_config(tiny_gpt2, prose, out)
    first = second = _driver(cfg, tmp_path, "first")
    try:
        _wait_for_shards(first, out, 1, tmp_path / "first.err")
        second = _driver(cfg, tmp_path, "second")
        assert second.wait(timeout=120) == 2
        lines = _error_lines((tmp_path / "second.err").read_text())
        assert len(lines) == 1 and "is in use by another driver" in lines[0], lines
        assert f"host {socket.gethostname()}, pid {first.pid}, started " in lines[0]
        assert manifest(out)["status"] == "running" and manifest(out)["attempt"] == 1
        assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()[-3000:]
    finally:
        for driver in {first, second}:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
    assert manifest(out)["status"] == "complete" and manifest(out)["shards"]["reused"] == 0
    assert not (out / ".run.lock").exists()
    assert_same_results(reference, out)


def test_lock_of_a_driver_that_is_gone_is_taken_over(tmp_path, caplog):
    import socket
    import subprocess

    from tasks.storage import RunStore
    from workflows.run_lock import LOCK, run_lock

    store = RunStore(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    lock = tmp_path / "run" / LOCK
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": "then", "token": "x"}))
    with caplog.at_level("WARNING"), run_lock(store) as me:
        assert json.loads(lock.read_text())["token"] == me["token"]
        assert f"pid {gone.pid}, started then" in caplog.text
        with pytest.raises(UserError, match=rf"in use by another driver \(host .*, pid {me['pid']}, started "):
            with run_lock(store):
                pass
    assert not lock.exists()  # released
    lock.write_text(json.dumps({"host": "elsewhere", "pid": gone.pid, "started": "then", "token": "x"}))
    with pytest.raises(UserError, match=r"host elsewhere, pid \d+, started then\); .* delete .*\.run\.lock"):
        with run_lock(store):
            pass


def test_disk_full_after_capture_is_one_line_and_resumes(reference, tiny_gpt2, prose, tmp_path, monkeypatch, capsys):
    """A write failing after capture, in the driver (disk full writing the tables) or in a site task on the cluster
    (an OSError inside Ray), ends in one line, exit status 1, manifest `failed` with the reason; the rerun reuses
    every shard and gives the results of an uninterrupted run."""
    import errno

    import yaml

    from tasks.storage import RunStore
    from workflows.cli import main

    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_gpt2, prose, out).to_dict()))
    write_parquet = RunStore.write_parquet

    def full(self, rel, table):
        if rel == "summary.parquet":
            raise OSError(errno.ENOSPC, "No space left on device", self.path(rel))
        return write_parquet(self, rel, table)

    monkeypatch.setattr(RunStore, "write_parquet", full)
    capsys.readouterr()
    assert main(["run", str(path)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "run failed: OSError: [Errno 28] No space left on device" in lines[0], lines
    m = manifest(out)
    assert m["status"] == "failed" and "No space left on device" in m["reason"] and m["failed"]
    assert not (out / ".run.lock").exists()
    monkeypatch.undo()
    # the same in a site task: its statistics file cannot be written (a directory squats on its name)
    squat = out / "statistics" / "L001-mlp_out.npz"
    squat.unlink()  # written by the attempt above
    (squat / "x").mkdir(parents=True)
    assert main(["run", str(path)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "run failed: IsADirectoryError: [Errno 21]" in lines[0], lines
    assert manifest(out)["status"] == "failed" and "IsADirectoryError" in manifest(out)["reason"]
    (squat / "x").rmdir()
    squat.rmdir()
    run(tiny_config(tiny_gpt2, prose, out))
    m = manifest(out)
    assert m["status"] == "complete" and m["attempt"] == 3 and m["shards"]["reused"] == m["shards"]["total"]
    assert_same_results(reference, out)


def test_sigterm_interrupts_like_ctrl_c_and_resumes(reference, tiny_gpt2, prose, tmp_path):
    """SIGTERM (`ray job stop`, a batch scheduler) mid-capture: one line, exit status 143, manifest `interrupted`
    with the time, lock released; the same command resumes to the results of an uninterrupted run."""
    import os
    import signal

    out = tmp_path / "run"
    cfg = tiny_config(tiny_gpt2, prose, out)
    driver = _driver(cfg, tmp_path, "driver")
    try:
        _wait_for_shards(driver, out, 2, tmp_path / "driver.err")
        os.kill(driver.pid, signal.SIGTERM)
        assert driver.wait(timeout=120) == 143
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    lines = _error_lines((tmp_path / "driver.err").read_text())
    assert lines == ["gpt-stats: interrupted (SIGTERM); rerun the same command to resume"]
    m = manifest(out)
    assert m["status"] == "interrupted" and m["interrupted"] and m["reason"].startswith("SIGTERM")
    assert not (out / ".run.lock").exists()
    time.sleep(1.0)
    saved = len(finished(out))
    run(cfg)
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["reused"] == saved >= 2
    assert_same_results(reference, out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(reference: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def test_input_mistake_leaves_a_finished_run_untouched(reference, tiny_gpt2, prose, tmp_path):
    """A rerun into a complete run directory that stops on an input mistake found late (GPUs asked for, none in
    the cluster) leaves every file of the finished run byte for byte, its manifest `complete` included."""
    out = _copy(reference, tmp_path)
    before = _snapshot(out)
    with pytest.raises(UserError, match="but the Ray cluster has no GPU"):
        run(tiny_config(tiny_gpt2, prose, out, "cluster.gpus_per_actor=1"))
    after = _snapshot(out)
    assert sorted(after) == sorted(before)
    assert [name for name in before if before[name] != after[name]] == []


def test_tampered_records_are_recomputed(reference, tiny_gpt2, prose, tmp_path):
    """Records are checked against their own checksum: a shard record whose `n_kept` or `nonfinite` was edited, and a
    statistics partial whose `shards` list was edited, are not trusted; those shards run again and the results equal
    an uninterrupted run's (no dropped sample, no changed non-finite count, no statistics counted twice)."""
    out = _copy(reference, tmp_path)
    total = manifest(out)["shards"]["total"]
    assert total >= 4
    shard0, shard1 = out / "shards" / "shard-000000.json", out / "shards" / "shard-000001.json"
    rec = json.loads(shard0.read_text())
    rec["n_kept"] = 0
    shard0.write_text(json.dumps(rec))
    rec = json.loads(shard1.read_text())
    rec["nonfinite"] = [5] * len(rec["nonfinite"])
    shard1.write_text(json.dumps(rec))
    partials = {json.loads(p.read_text())["shards"][0]: p for p in (out / "stats").glob("*.json")}
    rec = json.loads(partials[2].read_text())
    rec["shards"] = [3]  # the partial of shard 2 now claims shard 3: shard 2 would run again and count twice
    partials[2].write_text(json.dumps(rec))
    run(tiny_config(tiny_gpt2, prose, out))
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["computed"] == 3 and m["shards"]["reused"] == total - 3
    assert sum(m["nonfinite"]["per_site"].values()) == 0
    summary = pq.read_table(out / "summary.parquet").to_pandas()
    assert (summary.n_tokens_stats + summary.n_excluded + summary.n_nonfinite == summary.n_tokens).all()
    assert_same_results(reference, out)


def test_results_breaking_the_token_count_are_refused():
    from tasks.report.results import check_counts

    result = {"layer": 0, "site": "resid_post", "n_tokens_stats": 90, "n_excluded": 10}
    check_counts([result], 100, np.array([0]))
    with pytest.raises(RunError, match="L000-resid_post: 90 tokens in the statistics"):
        check_counts([result], 100, np.array([3]))
    check_counts([{"layer": 0, "site": "resid_post"}], 100, np.array([3]))  # statistics off: nothing to check


def test_damaged_manifest_resumes_from_config_yaml(reference, tmp_path):
    """A manifest.json of random bytes beside the run's own config.yaml: the directory is this config's, and the
    finished shards vouch for themselves (records with their checksums and config hash), so the rerun resumes them
    all through the real command line and completes with identical results."""
    import os
    import subprocess
    import sys

    import ray

    out = _copy(reference, tmp_path)
    total = manifest(out)["shards"]["total"]
    (out / "manifest.json").write_bytes(bytes(range(256)) * 4)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    res = subprocess.run([sys.executable, "-m", "workflows.run", str(out / "config.yaml"), "--set", f"run.out={out}"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "manifest.json is unreadable" in res.stderr and "Traceback" not in res.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["reused"] == total and m["attempt"] >= 2
    assert_same_results(reference, out)


def test_touched_corpus_resumes_a_complete_run(reference, tiny_gpt2, prose, tmp_path, monkeypatch):
    """A corpus file with a new modification time over the same bytes (`touch`, restored from a copy) is the same
    corpus: the rerun compares the bytes with the saved plan's checksums, reuses every shard and completes with
    the same results."""
    from tests.test_workflow import _listed_as_changed

    out = _copy(reference, tmp_path)
    total = manifest(out)["shards"]["total"]
    _listed_as_changed(monkeypatch, mtime="1")
    run(tiny_config(tiny_gpt2, prose, out))
    m = manifest(out)
    assert m["status"] == "complete" and m["shards"]["reused"] == total and m["shards"]["computed"] == 0
    assert_same_results(reference, out)
