"""A model replica over several GPUs (`cluster.gpus_per_actor` > 1): the device plan as a pure function of the
module tree built without weights, and the actor's capture through a device map against the whole model."""

import sys
from pathlib import Path

import pytest
import torch

from tasks.checkpoint.loading import empty_model
from tasks.checkpoint.split import device_plan
from tasks.errors import UserError
from tasks.capture.architectures import ARCHITECTURES
from tests.families import CASES, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def _device_of(plan, name: str):
    """The device of a module or parameter: that of the longest plan entry that is its prefix."""
    owners = [k for k in plan if k == "" or name == k or name.startswith(k + ".")]
    assert owners, name
    return plan[max(owners, key=len)]


@pytest.mark.parametrize("case", ["llama", "gpt_neox", "gemma2"])
def test_plan_keeps_blocks_whole_in_order_within_budgets(case):
    table = ARCHITECTURES[CASES[case][0]]
    skeleton = empty_model(tiny_config(case, num_hidden_layers=4, vocab_size=256))
    weights = sum(p.numel() for p in skeleton.parameters()) * 4
    budgets = {0: int(0.75 * weights), 1: int(0.75 * weights)}
    plan = device_plan(skeleton, budgets, torch.float32)
    used: dict = {}
    for name, p in skeleton.named_parameters():  # brute force: every parameter's bytes on its device
        device = _device_of(plan, name)
        used[device] = used.get(device, 0) + p.numel() * 4
    assert set(used) == {0, 1} and all(used[d] <= budgets[d] for d in used), (used, budgets)
    # blocks are never split (no plan entry inside a block), in order: the first on GPU 0, the last on GPU 1
    assert not [k for k in plan if k.startswith(f"{table.blocks}.") and k.count(".") > table.blocks.count(".") + 1]
    layer_devices = [_device_of(plan, f"{table.blocks}.{i}") for i in range(4)]
    assert layer_devices == sorted(layer_devices) and layer_devices[0] == 0 and layer_devices[-1] == 1, plan
    embedding = next(n for n, m in skeleton.named_modules() if m is skeleton.get_input_embeddings())
    assert _device_of(plan, embedding) == 0 and _device_of(plan, table.final_norm) == 1, plan


def test_plan_refuses_a_model_larger_than_its_gpus():
    skeleton = empty_model(tiny_config("llama", num_hidden_layers=4, vocab_size=256))
    weights = sum(p.numel() for p in skeleton.parameters()) * 4
    with pytest.raises(UserError, match=r"does not fit in 2 GPU\(s\) .* raise cluster.gpus_per_actor"):
        device_plan(skeleton, {0: int(0.3 * weights), 1: int(0.3 * weights)}, torch.float32)


def test_actor_through_a_device_map_records_what_the_whole_model_does():
    """The split path on a CPU: the model loaded with the plan as its device map and dispatched with accelerate's
    device hooks (both "devices" the CPU: no second device exists here), the actor's hooks and statistics on it;
    sampled states and statistics equal the whole model's. bench/gpu.py runs it over two real devices."""
    from split_check import compare_split

    r = compare_split(tiny_config("llama", num_hidden_layers=4, vocab_size=256), "cpu", n_seq=3, seq=32)
    assert set(r["plan"].values()) == {0, 1} and r["dispatched"]  # accelerate's device hooks wrap the blocks
    assert r["state_diff"] <= 1e-5 and r["stats_diff"] <= 1e-5, r
