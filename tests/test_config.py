"""Config loading, overrides, validation messages, and the command line's handling of user errors."""

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
    # excluding position 0 and special tokens is on by default, changes the results, and can be turned off
    assert base.capture.exclude == ("position0", "special")
    keep_all = config_from_dict({"run": {"out": "a"}}, ["capture.exclude=[]"])
    assert keep_all.capture.exclude == () and keep_all.result_hash() != base.result_hash()
    only_first = config_from_dict({"run": {"out": "a"}}, ["capture.exclude=position0"])
    assert only_first.capture.exclude == ("position0",) and only_first.result_hash() not in (
        base.result_hash(), keep_all.result_hash())


BAD = [
    ({"modle": {}}, [], "unknown config key 'modle'"),
    ({"model": {"nmae": "x"}}, [], "unknown config key 'model.nmae'"),
    ({}, ["sample.size=abc"], "'sample.size' must be integer"),
    ({}, ["sample.size=0"], "'sample.size' must be positive"),
    ({}, ["sample.size=-5"], "'sample.size' must be positive"),
    ({}, ["similarity.bins=0"], "'similarity.bins' must be positive"),
    ({}, ["sample.size=2"], "'sample.size' must be at least 3"),
    ({}, ["run.seed=-1"], "'run.seed' must be an integer from 0 to"),
    ({}, [f"run.seed={2**70}"], "'run.seed' must be an integer from 0 to"),
    ({}, ["capture.batch_tokens=-1"], "'capture.batch_tokens' must be positive"),
    ({}, ["capture.sites=[resid_pre]"], "unknown site 'resid_pre'"),
    ({}, ["capture.layers=[-1]"], "layer indices from 0"),
    ({}, ["capture.exclude=[bos]"], "'capture.exclude' has unknown value 'bos'; choose from position0, special"),
    ({}, ["capture.exclude=[special, special]"], "'capture.exclude' lists a value twice"),
    ({}, ["capture.exclude=false"], "'capture.exclude' is a list, not false: give [] to keep every token"),
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


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_from_zero():
    spec = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = spec["available_node_types"]
    head = nodes[spec["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [n for name, n in nodes.items() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in gpu)
    import ray

    assert spec["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
