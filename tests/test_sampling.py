"""Bottom-k hash sampling: uniform, deterministic, and merge-invariant (any grouping = one pass)."""

import numpy as np
import pytest
from scipy import stats

from tasks.merge.tree import merge_states
from tasks.capture.sampling import candidate_threshold, context_ids, token_hash
from tasks.stats.bottom_k import BottomKSample


def _tokens(n_docs=40, per_doc=50):
    doc = np.repeat(np.arange(n_docs), per_doc)
    pos = np.tile(np.arange(per_doc), n_docs)
    window = np.zeros_like(doc)
    return doc, window, pos


def _keys(seed, doc, window, pos):
    n = len(doc)
    return {
        "hash": token_hash(seed, doc, window, pos),
        "doc": doc, "window": window, "pos": pos,
        "token_id": (pos % 7).astype(np.int32),
        "context": np.zeros((n, 11), np.int32),
    }


def test_hash_is_uniform_and_seeded():
    doc, window, pos = _tokens(200, 100)
    h = token_hash(0, doc, window, pos)
    assert len(np.unique(h)) == len(h)
    u = h.astype(np.float64) / 2.0**64
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert np.array_equal(h, token_hash(0, doc, window, pos))
    assert not np.array_equal(h, token_hash(1, doc, window, pos))
    # a key's hash does not depend on which other keys are hashed with it
    assert np.array_equal(token_hash(0, doc[5:9], window[5:9], pos[5:9]), h[5:9])


def test_bottom_k_equals_global_smallest_hashes_in_any_grouping():
    doc, window, pos = _tokens()
    keys = _keys(11, doc, window, pos)
    vectors = np.stack([np.stack([doc, pos], 1), np.stack([pos, doc], 1)]).astype(np.float32)  # (2 sites, n, 2)
    k = 100
    truth = np.sort(keys["hash"])[:k]

    rng = np.random.default_rng(0)
    for trial in range(5):
        perm = rng.permutation(len(doc))
        cuts = np.sort(rng.choice(np.arange(1, len(doc)), size=rng.integers(1, 12), replace=False))
        states = []
        for part in np.split(perm, cuts):
            s = BottomKSample(k)
            s.add(vectors[:, part], keys={name: v[part] for name, v in keys.items()})
            states.append(s.state())
        rng.shuffle(states)
        # merge in a random tree: groups of random size, then their merges
        mid = len(states) // 2
        merged = merge_states(k, merge_states(k, *states[:mid]), merge_states(k, *states[mid:]))
        assert np.array_equal(merged["hash"], truth), trial
        # vectors travel with their tokens
        assert np.array_equal(merged["vectors"][0][:, 0], merged["doc"].astype(np.float32))
        assert np.array_equal(merged["vectors"][1][:, 0], merged["pos"].astype(np.float32))


def test_threshold_keeps_shard_samples_small_but_exact():
    doc, window, pos = _tokens(400, 50)  # 20,000 tokens
    keys = _keys(3, doc, window, pos)
    vectors = np.zeros((1, len(doc), 1), np.float32)
    k = 200
    threshold = candidate_threshold(k, len(doc))
    states = []
    for part in np.array_split(np.arange(len(doc)), 50):
        s = BottomKSample(k, threshold)
        s.add(vectors[:, part], keys={name: v[part] for name, v in keys.items()})
        states.append(s)
    kept = sum(s.n for s in states)
    assert k <= kept < 2 * k  # in proportion to the corpus share, not k per shard (50 k)
    merged = merge_states(k, *[s.state() for s in states if not s.is_empty])
    assert np.array_equal(merged["hash"], np.sort(keys["hash"])[:k])


def test_context_ids():
    ids = np.arange(100, 130, dtype=np.int32)  # two sequences: 100..111 (12 tokens), 112..129 (18 tokens)
    ctx = context_ids(ids, np.array([0, 12, 12]), np.array([12, 18, 18]), np.array([3, 0, 17]))
    assert ctx[0].tolist() == [-1] * 6 + [100, 101, 102, 103] + [104]
    assert ctx[1].tolist() == [-1] * 9 + [112] + [113]
    assert ctx[2].tolist() == list(range(120, 130)) + [-1]


def test_state_round_trip():
    doc, window, pos = _tokens(3, 5)
    s = BottomKSample(4)
    s.add(np.ones((1, 15, 3), np.float32), keys=_keys(0, doc, window, pos))
    again = BottomKSample.load(s.state())
    for name, v in s.state().items():
        assert np.array_equal(np.asarray(v), np.asarray(again.state()[name]))
    with pytest.raises(ValueError):
        BottomKSample(3).state()


def _stream_capture(hashes: np.ndarray, k: int, shard: int, in_flight: int, rng) -> tuple[np.ndarray, int, int]:
    """The capture pool's use of `StreamingThreshold`, simulated: shards dispatched in order with the threshold
    of the moment, `in_flight` of them running at once, finishing in a random order. Returns the merged bottom-k,
    the candidates kept in all, and the shards dispatched before k candidates were known."""
    from tasks.capture.sampling import StreamingThreshold

    keeper = StreamingThreshold(k)
    starts = list(range(0, len(hashes), shard))
    running, kept, blind = [], [], 0
    for i, start in enumerate(starts + [None] * in_flight):
        if start is not None:
            t = keeper.threshold()
            blind += int(t == np.uint64(2**64 - 1))
            running.append((hashes[start : start + shard], t))
        if len(running) >= in_flight or start is None and running:
            h, t = running.pop(int(rng.integers(len(running))))
            mine = np.sort(h[h < t])[:k]  # a shard keeps at most k candidates under its threshold
            keeper.add(mine)
            kept.append(mine)
    every = np.concatenate(kept)
    return np.sort(every)[:k], len(every), blind


@pytest.mark.parametrize("shard, in_flight", [(1000, 1), (1000, 4), (777, 2), (5000, 3)])
def test_streaming_threshold_keeps_the_exact_bottom_k_with_few_candidates(shard, in_flight):
    """Whatever the shard size, the number of shards in flight and the order they finish in, the merged sample is
    the brute-force global bottom-k; the candidates kept stay within the bound k (S0 + 1 + ln(N / m)) (S0 the
    shards dispatched before k candidates were known, m the tokens of a shard), with a margin for chance."""
    rng = np.random.default_rng(shard + in_flight)
    doc, window, pos = _tokens(2000, 100)  # 200,000 tokens
    hashes = token_hash(5, doc, window, pos)
    k = 300
    truth = np.sort(hashes)[:k]
    sample, kept, blind = _stream_capture(hashes, k, shard, in_flight, rng)
    assert np.array_equal(sample, truth)
    bound = k * (blind + 1 + np.log(len(hashes) / shard))
    assert kept <= 1.1 * bound, (kept, bound)
    assert kept < len(hashes) // shard * k / 4  # far fewer than k per shard
    # a second simulation with another finishing order gives the same sample
    assert np.array_equal(_stream_capture(hashes, k, shard, in_flight, np.random.default_rng(99))[0], truth)


def test_streaming_threshold_counts_a_retried_shard_once():
    """A shard run again (its actor died before its statistics were written) returns the same candidates twice:
    the threshold stays one above the k-th smallest distinct hash (brute force), never below it, so the run again
    and every later shard keep every token of the true bottom-k."""
    from tasks.capture.sampling import StreamingThreshold

    doc, window, pos = _tokens(40, 100)
    hashes = token_hash(9, doc, window, pos)
    shards = np.array_split(hashes, 8)
    k = 300
    keeper = StreamingThreshold(k)
    for i, shard in enumerate(shards):
        keeper.add(np.sort(shard)[:k])
        if i in (1, 2, 5):  # retried: the same tokens again, some before and some after others finished
            keeper.add(np.sort(shard)[: k // 2])
            keeper.add(np.sort(shard)[:k])
    kth = np.sort(np.unique(np.concatenate([np.sort(s)[:k] for s in shards])))[k - 1]
    assert keeper.threshold() == np.uint64(int(kth) + 1)
    assert np.all(np.sort(hashes)[:k] < keeper.threshold())
