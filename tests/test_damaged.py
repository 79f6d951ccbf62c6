"""Damaged run directories, unloadable models, oversized settings: one clear line, exit status 2, no traceback.

The session's tiny finished run (tests/conftest.py `tiny_run`) is copied and one of the files the report reads is
damaged; `gpt-stats report` and `gpt-stats compare` must name the file, say what is wrong and which command
rebuilds it, and a rerun of the same config (the documented recovery) must give the clean run's results again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import tiny_config
from workflows.cli import main as cli_main
from workflows.driver import run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from same_results import differences  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def clean_run(tiny_run) -> Path:
    return Path(tiny_run)  # read only here: the tests damage and rerun copies of it


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(512))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_column(column: str):
    def damage(path: Path) -> None:
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([column]), path)
    return damage


# (file, damage, what the line says is wrong)
DAMAGE = [
    ("summary.parquet", _garbage, "not a readable Parquet file"),
    ("histograms.parquet", _truncate, "not a readable Parquet file"),
    ("histograms.parquet", _drop_column("density"), "has no column 'density'"),
    ("exemplars.parquet", _garbage, "not a readable Parquet file"),
    ("sanity.parquet", _garbage, "not a readable Parquet file"),
    ("manifest.json", _garbage, "not readable JSON"),
    ("manifest.json", lambda p: p.write_text("[1, 2]"), "not a JSON object"),
]


def _damaged_copy(clean: Path, dst: Path, name: str, damage) -> Path:
    shutil.copytree(clean, dst, ignore=shutil.ignore_patterns("samples.parquet", "plots", "shards", "stats", "report.html"))
    damage(dst / name)
    return dst


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("name, damage, what", DAMAGE, ids=[f"{d[0]}-{d[1].__name__}" for d in DAMAGE])
def test_report_and_compare_name_the_damaged_file(clean_run, tmp_path, capsys, name, damage, what):
    bad = _damaged_copy(clean_run, tmp_path / "bad", name, damage)
    capsys.readouterr()
    assert cli_main(["report", str(bad)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("gpt-stats: error: ") and f"{bad / name}" in line and what in line, line
    assert "rerun the same config" in line and f"gpt-stats run {bad / 'config.yaml'}" in line, line
    assert not (bad / "report.html").exists() and not (bad / "plots").exists()  # refused before drawing anything
    out = tmp_path / "cmp.html"
    assert cli_main(["compare", str(clean_run), str(bad), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{bad / name}" in line and what in line, line
    assert not out.exists()


def test_report_of_a_damaged_table_through_the_command_line(clean_run, tmp_path):
    bad = _damaged_copy(clean_run, tmp_path / "bad", "summary.parquet", _garbage)
    res = subprocess.run([sys.executable, "-m", "workflows.report", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gpt-stats:")]
    assert len(lines) == 1 and "summary.parquet is damaged" in lines[0], res.stderr[-3000:]


def test_rerun_of_the_same_config_repairs_a_damaged_directory(clean_run, tiny_gpt2, prose, tmp_path):
    bad = tmp_path / "repaired"
    shutil.copytree(clean_run, bad)
    for name in ("summary.parquet", "exemplars.parquet", "sanity.parquet"):
        _garbage(bad / name)
    _truncate(bad / "histograms.parquet")
    assert cli_main(["report", str(bad)]) == 2
    run(tiny_config(tiny_gpt2, prose, bad))  # the documented recovery: the same config, into the same directory
    assert json.loads((bad / "manifest.json").read_text())["status"] == "complete"
    for name in ("summary", "histograms", "exemplars", "moments", "sanity"):
        a, b = pq.read_table(clean_run / f"{name}.parquet"), pq.read_table(bad / f"{name}.parquet")
        assert differences(a, b) == [], name
    assert cli_main(["report", str(bad)]) == 0
