"""`capture.batch_tokens: auto`: the budget arithmetic against brute force, and the probe's two-point memory model
against a third, measured batch size (the memory here: bytes of every module output, a count that a CPU can take
exactly; on a GPU the same probe reads torch's peak allocation)."""

import numpy as np
import pytest

from tasks.capture import batch_budget
from tasks.capture.actor import ShardCapturer
from tasks.capture.batch_budget import MemoryModel, OutputBytes, fit_sequences
from tasks.corpus.shards import Shard


def test_fit_sequences_is_the_largest_power_of_two_that_fits():
    rng = np.random.default_rng(0)
    for _ in range(500):
        model = MemoryModel(fixed=int(rng.integers(0, 10**6)), per_sequence=int(rng.integers(1, 10**4)),
                            available=int(rng.integers(1, 2 * 10**6)))
        fill, cap = float(rng.uniform(0.5, 1.0)), int(rng.integers(1, 4096))
        fitting = [2**e for e in range(20) if 2**e <= cap and model.peak(2**e) <= fill * model.available]
        assert fit_sequences(model, fill, cap) == (max(fitting) if fitting else 1)


def _shard(n: int, seq_len: int, seed: int) -> Shard:
    rng = np.random.default_rng(seed)
    return Shard(0, rng.integers(5, 2048, n * seq_len, dtype=np.int32), np.arange(n + 1, dtype=np.int64) * seq_len,
                 np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


def test_probe_predicts_a_third_batch_and_leaves_no_statistics(tiny_gpt2, tmp_path):
    sites = [(0, "resid_post"), (1, "attn_out"), (1, "mlp_out")]
    cap = ShardCapturer(str(tiny_gpt2), "float32", sites)
    cap.flush_every = 1  # as `ready` may have set it: the probes' statistics must not be sealed for a flush
    meter = OutputBytes(cap.model, available=10**9)
    seq_len, k = 32, 40
    model = cap.memory_model(seq_len, k, stats=True, meter=meter)
    assert cap.stats is None and cap.stats_shards == [] and cap.flush(str(tmp_path), "h", "p") == []
    assert cap.flush_every == 1
    cap.flush_every = None
    margin = 2 * k * len(sites) * 64 * 4  # the sample rows the probes do not hold (float32, width 64)
    for n in (5, 9):  # out of sample: the probes ran 2 and 4 sequences
        meter.reset()
        cap.stats = None
        cap.process(_shard(n, seq_len, n), k, np.uint64(2**64 - 1), 0, n * seq_len, stats_fraction=1.0)
        assert model.peak(n) - margin == meter.peak()
    # the probe's forwards fed nothing that stays: statistics after it equal a fresh capturer's
    shard = _shard(6, seq_len, 1)
    fresh = ShardCapturer(str(tiny_gpt2), "float32", sites)
    for c in (cap, fresh):
        c.stats, c.stats_shards = None, []
        c.process(shard, k, np.uint64(2**64 - 1), 3, 64, stats_fraction=1.0)
    for a, b in zip(cap.stats, fresh.stats):
        for name, value in a.state().items():
            np.testing.assert_array_equal(value, b.state()[name])


def test_resolve_on_a_cpu(tiny_gpt2):
    cap = ShardCapturer(str(tiny_gpt2), "float32", [(0, "resid_post")])
    assert batch_budget.resolve("auto", 128, None) == batch_budget.CPU_BATCH_TOKENS
    assert batch_budget.resolve(512, 128, None) == 512
    model = MemoryModel(fixed=100, per_sequence=10, available=1000)
    assert batch_budget.resolve("auto", 128, lambda: model) == fit_sequences(model) * 128
    info = cap.ready("auto", 128, 10, True)
    assert info["batch_tokens"] == cap.batch_tokens == batch_budget.CPU_BATCH_TOKENS


@pytest.mark.parametrize("value, ok", [("auto", True), (2048, True), (0, False), ("big", False)])
def test_config_batch_tokens(value, ok):
    from tasks.errors import UserError
    from workflows.config import config_from_dict

    if ok:
        assert config_from_dict({}, [f"capture.batch_tokens={value}"]).capture.batch_tokens == value
    else:
        with pytest.raises(UserError, match="capture.batch_tokens"):
            config_from_dict({}, [f"capture.batch_tokens={value}"])
