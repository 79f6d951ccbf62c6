"""Determinism: the same config and seed write the same bytes into every table (and plot) whatever the number of
actors, the order in which shards finish and killed actors, at the default settings (no `stats.flush_every`
override) and with many statistics groups. The truth each run is held to is the uninterrupted one-actor run of the
same config. Resume and a killed driver: tests/test_reliability.py, held to the same bytes."""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from workflows.driver import run

pytestmark = pytest.mark.slow  # whole workflow runs beyond the session's shared one

TABLES = ("summary", "moments", "histograms", "exemplars", "samples", "massive", "sanity")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d|\d+(\.\d+)? ?(s|seconds|min)\b")


def table_bytes(out: Path) -> dict[str, bytes]:
    """Every Parquet file of a run's tables (a table may be a folder of parts), by path in the run directory."""
    files = {str(p.relative_to(out)): p.read_bytes() for name in TABLES
             for p in sorted([out / f"{name}.parquet", *(out / f"{name}.parquet").glob("**/*.parquet")]) if p.is_file()}
    assert {f.split("/")[0] for f in files} >= {f"{name}.parquet" for name in TABLES if name != "sanity"}
    return files


def plot_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "plots").glob("*.png"))}


def page(out: Path) -> tuple[list[str], dict]:
    """report.html as (its lines but the data's and those that state a time, its data without the run's identity:
    where and when it ran, on how many actors)."""
    text = (out / "report.html").read_text().replace(str(out), "RUN")
    data = json.loads(re.search(r'<script type="application/json" id="gs-data">(.*?)</script>', text, re.S).group(1))
    identity = data.pop("identity")
    data["identity"] = {k: identity[k] for k in ("status", "config_hash")}
    return [line for line in text.splitlines() if not TIME.search(line) and 'id="gs-data"' not in line], _timeless(data)


def _timeless(value):
    """`value` without the entries that state a time (`seconds`: how long a step took)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def assert_same_bytes(reference: Path, out: Path, plots: bool = False) -> None:
    """Every table's files byte for byte; with `plots`, every plot too, and the page but for times and where."""
    a, b = table_bytes(reference), table_bytes(out)
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []
    if plots:
        assert plot_bytes(reference) == plot_bytes(out) and len(plot_bytes(out)) >= 18
        assert page(reference) == page(out)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def faults(monkeypatch, tmp_path, spec: str) -> None:
    (tmp_path / "faults").mkdir(exist_ok=True)
    monkeypatch.setenv("GPT_STATS_FAULTS", spec)
    monkeypatch.setenv("GPT_STATS_FAULT_DIR", str(tmp_path / "faults"))


@pytest.fixture(scope="module")
def default_run(ray_cluster, tiny_gpt2, prose, tmp_path_factory) -> Path:
    """The uninterrupted one-actor run at the default settings."""
    return run(tiny_config(tiny_gpt2, prose, tmp_path_factory.mktemp("det") / "run", defaults=True))


def test_default_settings_same_bytes_with_two_actors_a_late_shard_and_a_killed_actor(
        default_run, tiny_gpt2, prose, tmp_path, monkeypatch):
    faults(monkeypatch, tmp_path, "delay@0x1,exit@3x1")
    out = run(tiny_config(tiny_gpt2, prose, tmp_path / "run", "cluster.actors=2", defaults=True))
    assert manifest(out)["shards"]["retries"] >= 1
    assert_same_bytes(default_run, out, plots=True)


def test_statistics_groups_same_bytes_with_three_actors_late_shards_and_a_killed_actor(
        tiny_run, tiny_gpt2, prose, tmp_path, monkeypatch):
    """Many statistics groups (the session's run: one shard each) on 3 actors, the first shards finishing last
    and an actor killed: the one-actor run's bytes."""
    faults(monkeypatch, tmp_path, "delay@0x2,delay@1x1,exit@4x1")
    out = run(tiny_config(tiny_gpt2, prose, tmp_path / "run", "cluster.actors=3", "cluster.cpus_per_actor=0.5",
                          "cluster.shards_in_flight=2"))
    assert manifest(out)["shards"]["retries"] >= 1 and len(list((out / "stats").glob("*.json"))) >= 10
    assert_same_bytes(tiny_run, out)
