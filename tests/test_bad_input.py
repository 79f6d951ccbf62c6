"""Every user mistake gets one line naming the problem and the fix, exit status 2, and no traceback: a table of
mistakes, each run through the real command line in its own process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# (name, extra --set overrides or a callable making them from tmp_path, expected text in the one error line)
CASES = [
    ("missing config file", None, "config file 'missing.yaml' not found"),
    ("unknown key", ["modle.name=x"], "unknown config key 'modle'"),
    ("wrong type", ["sample.size=abc"], "'sample.size' must be integer"),
    ("zero size", ["sample.size=0"], "'sample.size' must be positive"),
    ("negative size", ["capture.batch_tokens=-4"], "'capture.batch_tokens' must be positive"),
    ("unknown site", ["capture.sites=[resid_pre]"], "unknown site 'resid_pre'"),
    ("layer out of range", ["capture.layers=[5]"], "capture.layers has layer 5 but the model has 2 layers"),
    ("unknown exclusion", ["capture.exclude=[bos]"], "'capture.exclude' has unknown value 'bos'"),
    ("model not found", ["model.name=/nonexistent/model"], "cannot be found or loaded"),
    ("unsupported architecture", "t5", "architecture 't5' is not supported; supported: bert, gpt2"),
    ("remote code not opted in by name", ["model.trust_remote_code=someone/else"], "must repeat model.name"),
    ("corpus file missing", ["corpus.source=files", "corpus.files=[/nope.txt]"], "does not exist"),
    ("corpus file empty", "empty", "is empty"),
    ("corpus file not text", "binary", "is not UTF-8 text"),
    ("text field missing", "jsonl", "has no column 'text'"),
    ("hub dataset unreachable", ["corpus.source=hub", "corpus.name=no-such-dataset-xyz"], "could not load dataset 'no-such-dataset-xyz'"),
    ("corpus smaller than sample", ["sample.size=10000000"], "usable tokens, fewer than sample.size=10000000"),
    ("GPU asked for, none there", ["cluster.gpus_per_actor=1"], "but the Ray cluster has no GPU"),
    ("output not writable", ["run.out=/proc/forbidden"], "cannot write to run.out"),
    ("sample of two", ["sample.size=2"], "'sample.size' must be at least 3"),
    ("negative seed", ["run.seed=-1"], "'run.seed' must be an integer from 0 to"),
    ("seed past 64 bits", [f"run.seed={2**70}"], "'run.seed' must be an integer from 0 to"),
    ("bins too coarse for the width", ["similarity.bins=1"], "similarity.bins=1 is too coarse for d_model=64"),
]


def _make(kind: str, tmp_path: Path) -> list[str]:
    if kind == "t5":
        folder = tmp_path / "t5"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
        return [f"model.name={folder}"]
    path = tmp_path / {"empty": "e.txt", "binary": "b.txt", "jsonl": "d.jsonl"}[kind]
    path.write_bytes({"empty": b"", "binary": b"\xff\xfe\x00\x81" * 64, "jsonl": b'{"body": "hello"}\n'}[kind])
    return ["corpus.source=files", f"corpus.files=[{path}]"]


@pytest.mark.parametrize("name, overrides, message", CASES, ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line(name, overrides, message, tmp_path, tiny_gpt2, wikitext):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_gpt2)},
        "corpus": {"source": "files", "files": [str(wikitext)], "max_docs": 50},
        "sample": {"size": 100},
        "run": {"out": str(tmp_path / "out")},
    }))
    if overrides is None:
        args = ["missing.yaml"]
    else:
        sets = _make(overrides, tmp_path) if isinstance(overrides, str) else overrides
        args = [str(cfg)] + [a for s in sets for a in ("--set", s)]
    res = subprocess.run([sys.executable, "-m", "workflows.run", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("gpt-stats: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    manifest = tmp_path / "out" / "manifest.json"
    if manifest.exists():  # a run that got as far as its directory says it failed, and why
        m = json.loads(manifest.read_text())
        assert m["status"] == "failed" and message.split("'")[0].strip() in m["reason"]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})


def _one_error_line(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("gpt-stats: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"[1, 2, 3]\n"], ids=["random bytes", "a JSON list"])
def test_damaged_manifest_is_named(content, tmp_path, tiny_gpt2, wikitext):
    """A manifest.json that is not a JSON object, with no config.yaml of this config beside it: the directory's
    owner cannot be told, so the run stops naming the manifest and the two ways out, and touches nothing."""
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "manifest.json").write_bytes(content)
    (out / "shards" / "shard-000000.json").write_text("{}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": str(tiny_gpt2)}, "corpus": {"source": "files", "files": [str(wikitext)]},
                                   "run": {"out": str(out)}}))
    res = _cli("run", str(cfg))
    _one_error_line(res, "manifest.json is unreadable")
    assert "--fresh" in res.stderr and "restore" in res.stderr
    assert (out / "manifest.json").read_bytes() == content and sorted(p.name for p in out.iterdir()) == ["manifest.json", "shards"]


def test_compare_out_existing_directory_is_one_line(tmp_path):
    res = _cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path))
    _one_error_line(res, "is a directory")
