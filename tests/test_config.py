"""Config loading, overrides, validation messages, and the command line's handling of user errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.errors import UserError
from workflows.config import Config, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.cluster.actors == 2 and demo.corpus.source == "embedded" and demo.capture.layers == "all"
    xl = load_config(ROOT / "configs" / "gpt2-xl-wikitext103.yaml")
    assert xl.model.name == "gpt2-xl" and xl.corpus.config == "wikitext-103-raw-v1"
    assert xl.capture.sites == ("resid_post", "attn_out", "mlp_out")


def test_overrides_and_hash():
    base = config_from_dict({"run": {"out": "a"}})
    cfg = config_from_dict({"run": {"out": "a"}}, ["sample.size=500", "capture.layers=[0, 2]", "model.dtype=float32"])
    assert cfg.sample.size == 500 and cfg.capture.layers == (0, 2) and cfg.model.dtype == "float32"
    assert cfg.result_hash() != base.result_hash()
    # where results go and how they are scheduled do not change them
    moved = config_from_dict({"run": {"out": "elsewhere"}, "cluster": {"actors": 7}})
    assert moved.result_hash() == base.result_hash()
    assert Config().to_dict() == config_from_dict(Config().to_dict()).to_dict()


BAD = [
    ({"modle": {}}, [], "unknown config key 'modle'"),
    ({"model": {"nmae": "x"}}, [], "unknown config key 'model.nmae'"),
    ({}, ["sample.size=abc"], "'sample.size' must be integer"),
    ({}, ["sample.size=0"], "'sample.size' must be positive"),
    ({}, ["sample.size=-5"], "'sample.size' must be positive"),
    ({}, ["similarity.bins=0"], "'similarity.bins' must be positive"),
    ({}, ["capture.batch_tokens=-1"], "'capture.batch_tokens' must be positive"),
    ({}, ["capture.sites=[resid_pre]"], "unknown site 'resid_pre'"),
    ({}, ["capture.layers=[-1]"], "layer indices from 0"),
    ({}, ["corpus.source=web"], "'corpus.source' must be"),
    ({}, ["corpus.source=hub"], "needs 'corpus.name'"),
    ({}, ["corpus.source=files"], "needs 'corpus.files'"),
    ({}, ["model.dtype=float8"], "'model.dtype' must be one of"),
    ({}, ["cluster.gpus_per_actor=-1"], "must be >= 0"),
    ({}, ["nokey"], "--set expects KEY=VALUE"),
    ({"sample": 3}, [], "section 'sample' must be a mapping"),
]


@pytest.mark.parametrize("data, overrides, message", BAD)
def test_bad_config_is_named(data, overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data, overrides)


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "workflows.run", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_user_errors_are_one_line_without_traceback(tmp_path, tiny_gpt2):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": str(tiny_gpt2)}, "run": {"out": str(tmp_path / "out")}}))
    cases = [
        (["missing.yaml"], "config file 'missing.yaml' not found"),
        ([str(cfg), "--set", "sample.size=0"], "'sample.size' must be positive"),
        ([str(cfg), "--set", "capture.layers=[5]"], "capture.layers has layer 5 but the model has 2 layers"),
        ([str(cfg), "--set", "model.name=/nonexistent/model"], "cannot be found or loaded"),
        ([str(cfg), "--set", "corpus.source=files", "--set", "corpus.files=[/nope.txt]"], "does not exist"),
        ([str(cfg), "--set", "run.out=/proc/forbidden"], "cannot write to run.out"),
    ]
    for args, message in cases:
        res = _cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = [l for l in res.stderr.splitlines() if l.startswith("gpt-stats: error:")]
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_from_zero():
    spec = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = spec["available_node_types"]
    head = nodes[spec["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [n for name, n in nodes.items() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in gpu)
    import ray

    assert spec["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
