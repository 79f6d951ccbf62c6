"""Every user mistake gets one line naming the problem and the fix, exit status 2, and no traceback: a table of
mistakes, each through the command line's entry point (`workflows.cli.main`) on the session's Ray cluster, and
a few (`IN_A_PROCESS`: one stopped before Ray starts, one stopped in a Ray task; the unsafe weights below, in an
actor) also through the real command line in a process of its own, which starts its own cluster and shows
whatever Ray prints. The processes that start Ray are marked slow (`make test-all` and CI run them)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
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
    ("unsupported architecture", "t5", "architecture 't5' is not supported out of the box (built in: bert, "),
    ("unsupported architecture points to model.sites", "t5", "give its module paths in model.sites"),
    ("model.sites path wrong", ["model.sites={blocks: h, resid_post: '', attn_out: atn, mlp_out: mlp}"],
     "model.sites: attn_out path 'h.0.atn' is not a module of GPT2Model; nearest: h.0.attn"),
    ("model.sites blocks wrong", ["model.sites={blocks: model.layers, resid_post: '', attn_out: attn, mlp_out: mlp}"],
     "model.sites: blocks path 'model.layers' is not a module of GPT2Model; nearest: "),
    ("model.sites without blocks", ["model.sites={resid_post: ''}"], "'model.sites' needs 'blocks'"),
    ("model.sites unknown key", ["model.sites={blocks: h, resid_pre: ''}"], "'model.sites' has unknown key 'resid_pre'"),
    ("GPUs per actor not whole", ["cluster.gpus_per_actor=1.5"], "'cluster.gpus_per_actor' above 1 splits a model"),
    ("remote code not opted in by name", ["model.trust_remote_code=someone/else"], "must repeat model.name"),
    ("model needs remote code", "remote", "needs remote code"),
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
    ("jsonl of strings, not objects", "jsonl_strings", 'line 1: a JSON string ("hello"), not an object; give each document'),
    ("jsonl text field of numbers", "jsonl_numbers", "line 1: 'text' is a JSON number (5), not text"),
    ("hub dataset unreachable", ["corpus.source=hub", "corpus.name=no-such-dataset-xyz"], "could not load dataset 'no-such-dataset-xyz'"),
    ("corpus smaller than sample", ["sample.size=10000000"], "usable tokens, fewer than sample.size=10000000"),
    ("GPU asked for, none there", ["cluster.gpus_per_actor=1"], "but the Ray cluster has no GPU"),
    ("output not writable", ["run.out=/proc/forbidden"], "cannot write to run.out"),
    ("sample of two", ["sample.size=2"], "'sample.size' must be at least 3"),
    ("negative seed", ["run.seed=-1"], "'run.seed' must be an integer from 0 to"),
    ("seed past 64 bits", [f"run.seed={2**70}"], "'run.seed' must be an integer from 0 to"),
    ("bins too coarse for the width", ["similarity.bins=1"], "similarity.bins=1 is too coarse for d_model=64"),
    ("CPUs per actor not a number", ["cluster.cpus_per_actor=.nan"],
     "config key 'cluster.cpus_per_actor' must be a finite number, got nan"),
    ("CPUs per actor infinite", ["cluster.cpus_per_actor=.inf"],
     "config key 'cluster.cpus_per_actor' must be a finite number, got inf"),
    ("GPUs per actor not a number", ["cluster.gpus_per_actor=.nan"],
     "config key 'cluster.gpus_per_actor' must be a finite number, got nan"),
    ("negative custom resource", ["cluster.resources={foo: -1}"], "config key 'cluster.resources.foo' must be >= 0, got -1"),
    ("actor wait not a number", ["cluster.actor_wait_s=.nan"], "config key 'cluster.actor_wait_s' must be a finite number"),
    ("progress interval not a number", ["run.progress_s=.nan"], "config key 'run.progress_s' must be a finite number"),
]


def _make(kind: str, tmp_path: Path) -> list[str]:
    if kind == "t5":
        folder = tmp_path / "t5"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
        return [f"model.name={folder}"]
    if kind == "remote":  # a config whose model_type only its own code knows
        folder = tmp_path / "custom"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "model_type": "my-custom", "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyModel"}}))
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
                       "surrogate": "s.jsonl", "jsonl_strings": "d.jsonl", "jsonl_numbers": "d.jsonl"}[kind]
    path.write_bytes({"empty": b"", "binary": b"\xff\xfe\x00\x81" * 64, "jsonl": b'{"body": "hello"}\n',
                      "jsonl_strings": b'"hello"\n"world"\n', "jsonl_numbers": b'{"text": 5}\n{"text": 6}\n',
                      "late_binary": b"a" * 60000 + b"\n" + b"b" * 9000 + b"\n" + b"c" * 998 + b"\xff rest\n",
                      "surrogate": b'{"text": "fine"}\n{"text": "broken \\ud800 here"}\n'}[kind])
    return ["corpus.source=files", f"corpus.files=[{path}]"]


# cases also run as a process of their own: the real command line, its exit status and everything it prints
IN_A_PROCESS = ("missing config file", "corpus file invalid past 64 KiB")
# A process that starts its own Ray cluster and reader and capture actors before it stops: marked slow (`make test`
# keeps the same case through the entry point, and the process that stops before Ray starts).
SLOW_PROCESSES = ("corpus file invalid past 64 KiB",)
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _case_args(case: tuple, folder: Path, model: Path, text: Path) -> list[str]:
    """The command line (after `run`) of one case of CASES, its files made in `folder`."""
    _name, overrides, _message = case
    cfg = folder / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": str(model)},
        "corpus": {"source": "files", "files": [str(text)], "max_docs": 50},
        "sample": {"size": 100},
        "run": {"out": str(folder / "out")},
    }))
    if overrides is None:
        return ["missing.yaml"]
    sets = _make(overrides, folder) if isinstance(overrides, str) else overrides
    return [str(cfg)] + [a for s in sets for a in ("--set", s)]


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """`gpt-stats ARGV` through the CLI's entry point in this process, run from the project root; an exception
    that escapes it is a failure of the contract, kept as its traceback on stderr with no exit status."""
    from workflows.cli import main as cli_main

    err, cwd = io.StringIO(), os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stderr(err):
            try:
                code = cli_main(argv)
            except BaseException:  # noqa: BLE001 - SystemExit included: the entry point returns its status
                code = None
                err.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["gpt-stats", *argv], code, "", err.getvalue())


def _process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV})


@pytest.fixture(scope="module")
def outcomes(ray_cluster, tmp_path_factory, tiny_gpt2, prose) -> dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess]]:
    """(case, "entry point") -> the case's folder and finished command, every case run in this process."""
    done = {}
    saved = {key: os.environ.get(key) for key in ENV}
    os.environ.update(ENV)
    try:
        for case in CASES:
            folder = tmp_path_factory.mktemp("case")
            done[case[0], "entry point"] = folder, _in_process(["run", *_case_args(case, folder, tiny_gpt2, prose)])
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return done


@pytest.mark.parametrize("name, overrides, message, how", [
    pytest.param(*case, how, id=f"{case[0]}-{how}", marks=[pytest.mark.slow] if case[0] in SLOW_PROCESSES else [])
    for case in CASES for how in ("entry point", "process") if how == "entry point" or case[0] in IN_A_PROCESS])
def test_user_mistake_is_one_line(name, overrides, message, how, outcomes, tmp_path, tiny_gpt2, prose):
    if how == "process":
        folder = tmp_path
        res = _process(_case_args((name, overrides, message), folder, tiny_gpt2, prose))
    else:
        folder, res = outcomes[name, how]
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("gpt-stats: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    manifest = folder / "out" / "manifest.json"
    if manifest.exists():  # a run that got as far as its directory says it failed, and why
        m = json.loads(manifest.read_text())
        assert m["status"] == "failed" and message.split("'")[0].strip() in m["reason"]


def test_remote_code_line_names_the_key(tmp_path, tiny_gpt2, prose):
    """The line for a model that needs remote code names the key that allows it, and that it repeats model.name."""
    folder = _make("remote", tmp_path)[0].split("=", 1)[1]
    res = subprocess.run([sys.executable, "-m", "workflows.run", "configs/demo.yaml", "--set", f"model.name={folder}",
                          "--set", f"run.out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("gpt-stats: error:")][0]
    assert f"model.trust_remote_code={folder}" in line and "model.name" in line, line


class _Payload:
    """Pickles as a call of os.system: what an unsafe loader would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.marker}",))


@pytest.mark.slow  # a process of its own: its own Ray cluster, two actors refusing the weights
def test_unsafe_model_weights_stop_the_run_at_once(tmp_path, tiny_gpt2, prose):
    """A pytorch_model.bin whose pickle carries code is refused by the weights-only loader (the code never runs);
    the run stops on the first refusal with one line, exit 2, and no actor restarts."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "unsafe"
    shutil.copytree(tiny_gpt2, folder)
    marker = tmp_path / "payload-ran"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": str(folder)},
        "corpus": {"source": "files", "files": [str(prose)], "max_docs": 20},
        "capture": {"layers": [0]},
        "sample": {"size": 50},
        "cluster": {"actors": 2, "max_retries": 3},
        "run": {"out": str(tmp_path / "out")},
    }))
    res = subprocess.run([sys.executable, "-m", "workflows.run", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "retrying" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gpt-stats: error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    assert f"model weights in {folder} cannot be loaded safely" in lines[0] and "use safetensors weights" in lines[0]
    assert not marker.exists()


def _one_error_line(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("gpt-stats: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"[1, 2, 3]\n"], ids=["random bytes", "a JSON list"])
def test_damaged_manifest_is_named(content, tmp_path, tiny_gpt2, prose):
    """A manifest.json that is not a JSON object, with no config.yaml of this config beside it: the directory's
    owner cannot be told, so the run stops naming the manifest and the two ways out, and touches nothing."""
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "manifest.json").write_bytes(content)
    (out / "shards" / "shard-000000.json").write_text("{}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": str(tiny_gpt2)}, "corpus": {"source": "files", "files": [str(prose)]},
                                   "run": {"out": str(out)}}))
    res = _in_process(["run", str(cfg)])
    _one_error_line(res, "manifest.json is unreadable")
    assert "--fresh" in res.stderr and "restore" in res.stderr
    assert (out / "manifest.json").read_bytes() == content and sorted(p.name for p in out.iterdir()) == ["manifest.json", "shards"]


def test_compare_out_existing_directory_is_one_line(tmp_path):
    res = _in_process(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)])
    _one_error_line(res, "is a directory")
