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
    ({}, ["cluster.gpus_per_actor=-1"], "config key 'cluster.gpus_per_actor' must be >= 0, got -1"),
    ({}, ["cluster.cpus_per_actor=-0.5"], "config key 'cluster.cpus_per_actor' must be >= 0, got -0.5"),
    ({}, ["cluster.resources={foo: -1}"], "config key 'cluster.resources.foo' must be >= 0, got -1"),
    ({}, ["cluster.max_retries=-1"], "config key 'cluster.max_retries' must be >= 0, got -1"),
    ({}, ["cluster.gpu_wait_s=-1"], "config key 'cluster.gpu_wait_s' must be >= 0, got -1"),
    ({}, ["cluster.actor_wait_s=0"], "config key 'cluster.actor_wait_s' must be positive, got 0"),
    ({}, ["run.progress_s=-1"], "config key 'run.progress_s' must be positive, got -1"),
    ({}, ["cluster.cpus_per_actor=.nan"], "config key 'cluster.cpus_per_actor' must be a finite number, got nan"),
    ({}, ["cluster.actor_wait_s=.inf"], "config key 'cluster.actor_wait_s' must be a finite number, got inf"),
    ({}, [f"cluster.gpu_wait_s={10**400}"], "config key 'cluster.gpu_wait_s' must be a finite number"),
    ({"cluster": {"resources": {"accel": float("nan")}}}, [], "'cluster.resources.accel' must be a finite number"),
    ({}, ["nokey"], "--set expects KEY=VALUE"),
    ({"sample": 3}, [], "section 'sample' must be a mapping"),
]


@pytest.mark.parametrize("data, overrides, message", BAD)
def test_bad_config_is_named(data, overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data, overrides)


def _numeric_fields() -> list[tuple[str, object]]:
    """(key, type) of every config field whose type holds a number (int or float, alone, in a list, a mapping or
    a union), found from the dataclasses themselves so that a new field is covered without listing it."""
    import dataclasses
    import typing

    def numeric(tp) -> bool:
        return tp in (int, float) or any(numeric(arg) for arg in typing.get_args(tp))

    out = []
    for name, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        out += [(f"{name}.{f.name}", hints[f.name]) for f in dataclasses.fields(cls) if numeric(hints[f.name])]
    return out


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf", "-1"])
def test_every_number_must_be_finite_and_in_range(bad):
    """NaN and the infinities are refused for every numeric key, in lists and in mappings too (e.g.
    cluster.resources), with a line naming the key (NaN passes every `<= 0` range check, so the range checks
    alone cannot refuse it); so is -1, which no key's range holds."""
    import typing

    fields = _numeric_fields()
    assert {"cluster.cpus_per_actor", "cluster.resources", "run.progress_s", "similarity.quantiles"} <= {k for k, _ in fields}
    for key, tp in fields:
        if typing.get_origin(tp) is dict or dict in map(typing.get_origin, typing.get_args(tp)):
            value, named = f"{{foo: {bad}}}", f"config key '{key}.foo' must "
        elif typing.get_origin(tp) is tuple:
            value, named = f"[{bad}]", f"config key '{key}' must "
        else:
            value, named = bad, f"config key '{key}' must "
        with pytest.raises(UserError) as refused:
            config_from_dict({}, [f"{key}={value}"])
        assert str(refused.value).startswith(named), (key, str(refused.value))


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_from_zero():
    spec = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = spec["available_node_types"]
    head = nodes[spec["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [n for name, n in nodes.items() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in gpu)
    import ray

    assert spec["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
