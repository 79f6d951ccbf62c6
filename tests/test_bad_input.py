"""Every user mistake gets one line naming the problem and the fix, exit status 2, and no traceback: a table of
mistakes, each run through the real command line in its own process."""

import json
import os
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
    ("corpus file invalid past 64 KiB", "late_binary", "is not UTF-8 text: invalid byte 0xff at byte 70000 (line 3)"),
    ("corpus file is a directory", "directory", "is a directory"),
    ("corpus file is a FIFO", "fifo", "is not a regular file"),
    ("jsonl lone surrogate", "surrogate", "line 2: lone surrogate"),
    ("config not a mapping", "config_list", "the config must be a mapping of sections"),
    ("config not a mapping, with --set", "config_list_set", "the config must be a mapping of sections"),
    ("text field missing", "jsonl", "has no column 'text'"),
    ("hub dataset unreachable", ["corpus.source=hub", "corpus.name=no-such-dataset-xyz"], "could not load dataset 'no-such-dataset-xyz'"),
    ("corpus smaller than sample", ["sample.size=10000000"], "usable tokens, fewer than sample.size=10000000"),
    ("GPU asked for, none there", ["cluster.gpus_per_actor=1"], "but the Ray cluster has no GPU"),
    ("output not writable", ["run.out=/proc/forbidden"], "cannot write to run.out"),
]


def _make(kind: str, tmp_path: Path) -> list[str]:
    if kind == "t5":
        folder = tmp_path / "t5"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
        return [f"model.name={folder}"]
    if kind.startswith("config_list"):  # a YAML list where the mapping of sections belongs
        (tmp_path / "c.yaml").write_text("- model\n- corpus\n")
        return ["sample.size=5"] if kind.endswith("set") else []
    if kind == "directory":
        (tmp_path / "dir.txt").mkdir()
        return ["corpus.source=files", f"corpus.files=[{tmp_path / 'dir.txt'}]"]
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.txt")
        return ["corpus.source=files", f"corpus.files=[{tmp_path / 'pipe.txt'}]"]
    path = tmp_path / {"empty": "e.txt", "binary": "b.txt", "jsonl": "d.jsonl", "late_binary": "late.txt",
                       "surrogate": "s.jsonl"}[kind]
    path.write_bytes({"empty": b"", "binary": b"\xff\xfe\x00\x81" * 64, "jsonl": b'{"body": "hello"}\n',
                      "late_binary": b"a" * 60000 + b"\n" + b"b" * 9000 + b"\n" + b"c" * 998 + b"\xff rest\n",
                      "surrogate": b'{"text": "fine"}\n{"text": "broken \\ud800 here"}\n'}[kind])
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
                         timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("gpt-stats: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    manifest = tmp_path / "out" / "manifest.json"
    if manifest.exists():  # a run that got as far as its directory says it failed, and why
        m = json.loads(manifest.read_text())
        assert m["status"] == "failed" and message.split("'")[0].strip() in m["reason"]
