"""Hooked sites against a manual forward pass, and the capture actor's shard sample against a direct computation."""

import time

import numpy as np
import pytest
import torch

from tasks.capture.actor import ShardCapturer
from tasks.capture.hooks import SiteRecorder, forward_and_gather, pad_batch
from tasks.corpus.shards import Shard
from tasks.errors import UserError
from tasks.capture.models import ARCHITECTURES, site_table
from tasks.capture.sampling import token_hash

from tasks.sites import SITES


def _batch(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=int(sum(lengths))).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    input_ids, mask = pad_batch(ids, offsets, np.arange(len(lengths)), 0)
    rows, cols = np.nonzero(mask)
    return input_ids, mask, rows, cols


@pytest.fixture(params=["cpu-path", "gpu-path"])
def stats_path(request, monkeypatch):
    """The statistics hooks as a CPU runs them, and as a GPU does: a GPU never asks whether a batch's states are
    all finite (that would wait for the card), so its hooks always feed the statistics weights (device counts);
    it takes its row norms in one float64 reduction, and counts the |x| bins with `histc`."""
    if request.param == "gpu-path":
        import tasks.capture.hooks
        import tasks.stats.massive

        monkeypatch.setattr(tasks.capture.hooks, "_fed", lambda finite: finite)
        monkeypatch.setattr(tasks.capture.hooks, "row_norms",
                            lambda x: torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64))
        monkeypatch.setattr(tasks.stats.massive, "_count_into",  # a GPU counts |x| bins with histc, not bincount
                            lambda counts, idx: counts.add_(tasks.stats.massive.histc_counts(idx, len(counts))))
    return request.param


def _record(model, model_type, layers, input_ids, mask, rows, cols):
    sites = [(layer, s) for layer in layers for s in SITES]
    rec = SiteRecorder(model, site_table(model_type), sites)
    with rec.attached():
        got = forward_and_gather(model, rec, input_ids, mask, rows, cols).numpy()
    return {site: torch.from_numpy(got[i]) for i, site in enumerate(sites)}


def test_gpt2_sites_match_manual_forward(tiny_gpt2):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    input_ids, mask, rows, cols = _batch(2048, [17, 9, 30])
    got = _record(model, "gpt2", [0, 1], input_ids, mask, rows, cols)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    hs = [h[rows, cols] for h in out.hidden_states]
    # resid_post of block 0 is hidden_states[1]; the last block's output goes through ln_f first.
    torch.testing.assert_close(got[(0, "resid_post")], hs[1])
    torch.testing.assert_close(model.ln_f(got[(1, "resid_post")]), hs[2])
    # GPT-2 is pre-LN: block output = input + attn_out + mlp_out.
    for layer in (0, 1):
        torch.testing.assert_close(
            got[(layer, "resid_post")], hs[layer] + got[(layer, "attn_out")] + got[(layer, "mlp_out")], rtol=1e-5, atol=1e-5
        )


def test_padding_does_not_change_real_tokens(tiny_gpt2):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    lengths = [25, 6]
    input_ids, mask, rows, cols = _batch(2048, lengths, seed=4)
    batched = _record(model, "gpt2", [1], input_ids, mask, rows, cols)[(1, "resid_post")]
    alone = _record(model, "gpt2", [1], input_ids[1:2, :6], mask[1:2, :6], np.zeros(6, int), np.arange(6))
    torch.testing.assert_close(batched[25:], alone[(1, "resid_post")], rtol=1e-4, atol=1e-5)


def test_bert_sites_match_manual_forward():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)).eval()
    input_ids, mask, rows, cols = _batch(300, [12, 20])
    got = _record(model, "bert", [0, 1], input_ids, mask, rows, cols)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    hs = [h[rows, cols] for h in out.hidden_states]
    for layer in (0, 1):
        block = model.encoder.layer[layer]
        torch.testing.assert_close(got[(layer, "resid_post")], hs[layer + 1])
        # BERT is post-LN: attention sublayer = LN(x + attn_out); block output = LN(that + mlp_out).
        after_attn = block.attention.output.LayerNorm(hs[layer] + got[(layer, "attn_out")])
        torch.testing.assert_close(block.output.LayerNorm(after_attn + got[(layer, "mlp_out")]), hs[layer + 1],
                                   rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_is_named():
    """An architecture without a table is named, with the built-in ones and the key that covers it."""
    with pytest.raises(UserError, match=r"'t5' is not supported out of the box \(built in: "
                       + ", ".join(sorted(ARCHITECTURES)) + r"\); give its module paths in model.sites"):
        site_table("t5")


def test_actor_sample_is_the_bottom_k_of_all_tokens(tiny_gpt2):
    from transformers import AutoModel

    rng = np.random.default_rng(2)
    lengths = np.array([40, 3, 17, 64, 25])
    ids = rng.integers(5, 2048, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    shard = Shard(0, ids, offsets, np.array([0, 1, 2, 2, 3]), np.array([0, 0, 0, 1, 0]))
    sites = [(0, "resid_post"), (1, "mlp_out")]
    cap = ShardCapturer(str(tiny_gpt2), "float32", sites)
    meta = cap.process(shard, k=30, threshold=np.uint64(2**64 - 1), seed=5, batch_tokens=64)
    state = meta["state"]
    assert meta["n_tokens"] == lengths.sum() and meta["n_kept"] == 30 and meta["nonfinite"] == [0, 0]
    # brute force: hash every token, take the 30 smallest, run each sequence alone through the model
    seq = np.repeat(np.arange(5), lengths)
    pos = np.arange(lengths.sum()) - offsets[seq]
    h = token_hash(5, shard.doc[seq], shard.window[seq], pos)
    best = np.argsort(h)[:30]
    assert np.array_equal(state["hash"], h[best])
    assert np.array_equal(state["token_id"], ids[best])
    assert np.array_equal(state["pos"], pos[best])
    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    for n, t in enumerate(best):
        s = seq[t]
        with torch.no_grad():
            out = model(input_ids=torch.tensor(ids[offsets[s] : offsets[s + 1]][None].astype(np.int64)),
                        output_hidden_states=True)
        np.testing.assert_allclose(state["vectors"][0][n], out.hidden_states[1][0, pos[t]].numpy(), rtol=1e-4, atol=1e-5)


def test_actor_statistics_every_token_and_second_order_fraction(tiny_gpt2, stats_path):
    """First-order statistics see every token; the d x d ones the tokens that the second hash picks (about the
    configured fraction): each equals a direct computation over those tokens' states from separate forward passes."""
    from scipy import stats
    from transformers import AutoModel

    from tasks.capture.actor import second_order_tokens

    rng = np.random.default_rng(3)
    lengths = np.array([60, 9, 120, 33, 80, 47])
    ids = rng.integers(5, 2048, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    shard = Shard(0, ids, offsets, np.arange(6), np.zeros(6, np.int64))
    cap = ShardCapturer(str(tiny_gpt2), "float32", [(0, "resid_post")])  # layer 1 would meet ln_f
    cap.process(shard, k=10, threshold=np.uint64(2**64 - 1), seed=7, batch_tokens=150, stats_fraction=0.3)
    st = cap.stats[0]
    seq = np.repeat(np.arange(6), lengths)
    pos = np.arange(lengths.sum()) - offsets[seq]
    chosen = second_order_tokens(7, shard.doc[seq], shard.window[seq], pos, 0.3)
    assert 0.2 < chosen.mean() < 0.4
    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    with torch.no_grad():
        x = np.concatenate([model(input_ids=torch.tensor(ids[offsets[s] : offsets[s + 1]][None].astype(np.int64)),
                                  output_hidden_states=True).hidden_states[1][0].double().numpy() for s in range(6)])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert st.moments.n == st.units.n == len(x) and st.covariance.n == st.unit_second.n == chosen.sum()
    np.testing.assert_allclose(st.moments.mean, x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.moments.excess_kurtosis, stats.kurtosis(x, axis=0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(st.units.sum, u.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.covariance.covariance, np.cov(x[chosen], rowvar=False), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(st.unit_second.second, u[chosen].T @ u[chosen], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exclude", [True, False], ids=["exclusion-on", "exclusion-off"])
def test_excluded_tokens_stay_out_of_sample_and_statistics(tiny_gpt2, exclude, stats_path):
    """Position 0 and the special id (0, GPT-2's <|endoftext|>) never enter the sample or the main statistics;
    they feed only the excluded norms. Without exclusion every token is in, as before."""
    from transformers import AutoModel

    from tasks.corpus.shards import Exclusion

    rng = np.random.default_rng(3)
    lengths = np.array([40, 3, 17, 64, 25, 1])
    ids = rng.integers(5, 2048, size=int(lengths.sum())).astype(np.int32)
    ids[[5, 41, 60, 70, 148]] = 0  # <|endoftext|> inside the text (and once at a position 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    shard = Shard(0, ids, offsets, np.array([0, 1, 2, 2, 3, 4]), np.array([0, 0, 0, 1, 0, 0]))
    sites = [(0, "resid_post"), (1, "mlp_out")]
    cap = ShardCapturer(str(tiny_gpt2), "float32", sites)
    exclusion = Exclusion(position0=True, special_ids=(0,)) if exclude else None
    meta = cap.process(shard, k=30, threshold=np.uint64(2**64 - 1), seed=5, batch_tokens=64, stats_fraction=1.0,
                       exclusion=exclusion)
    state = meta["state"]
    # brute force: every token's position, id and hash; the excluded ones named directly
    seq = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(lengths.sum()) - offsets[seq]
    out = (pos == 0) | (ids == 0) if exclude else np.zeros(len(ids), bool)
    assert meta["n_excluded"] == out.sum() and out.sum() == (6 + 4 if exclude else 0)  # pos 0 of 6, 4 more 0s
    h = token_hash(5, shard.doc[seq], shard.window[seq], pos)
    eligible = np.flatnonzero(~out)
    best = eligible[np.argsort(h[eligible])[:30]]
    assert np.array_equal(state["hash"], h[best]) and np.array_equal(state["pos"], pos[best])
    if exclude:
        assert (state["pos"] > 0).all() and (state["token_id"] != 0).all()
    else:
        assert best.tolist() == np.argsort(h)[:30].tolist()
    # the streaming statistics against each sequence run alone through the model (layer 0 block output)
    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    with torch.no_grad():
        x = torch.cat([model(input_ids=torch.tensor(ids[offsets[s] : offsets[s + 1]][None].astype(np.int64)),
                             output_hidden_states=True).hidden_states[1][0] for s in range(len(lengths))])
    x = x.double().numpy()
    kept, dropped = x[~out], x[out]
    st = cap.stats[0]
    assert st.moments.n == st.norms.moments.n == st.covariance.n == st.units.n == len(ids) - out.sum()
    np.testing.assert_allclose(st.moments.mean, kept.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.moments.variance, kept.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st.covariance.covariance, np.cov(kept, rowvar=False), rtol=1e-4, atol=1e-6)
    norms = np.linalg.norm(kept, axis=1)
    np.testing.assert_allclose(st.norms.moments.mean, [norms.mean()], rtol=1e-5)
    assert st.excluded_norms.moments.n == st.excluded_norms.counts.sum() == out.sum()
    assert cap.stats[1].moments.n == len(ids) - out.sum() and cap.stats[1].excluded_norms.moments.n == out.sum()
    if exclude:
        ex_norms = np.linalg.norm(dropped, axis=1)
        np.testing.assert_allclose(st.excluded_norms.moments.mean, [ex_norms.mean()], rtol=1e-5)
        np.testing.assert_allclose(st.excluded_norms.moments.variance, [ex_norms.var()], rtol=1e-4)


def random_shards(n: int, sequences: int, longest: int, seed: int) -> list[Shard]:
    """`n` shards of `sequences` random sequences of 20 to `longest` tokens, each document its own."""
    rng = np.random.default_rng(seed)
    shards = []
    for index in range(n):
        lengths = rng.integers(20, longest, size=sequences)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        shards.append(Shard(index, rng.integers(5, 2048, int(lengths.sum())).astype(np.int32), offsets,
                            np.arange(sequences) + 10 * index, np.zeros(sequences, np.int64)))
    return shards


def test_flush_from_another_thread_while_shards_run(tiny_gpt2, tmp_path):
    """`flush` in a second thread (the actor's `io` concurrency group) while `process` runs shard after shard: the
    partials cover every shard once, and merged they equal the statistics of the same shards with no flush."""
    import threading

    from tasks.merge.tree import merge_statistics_files
    from tasks.stats.site import unstack_states

    shards = random_shards(8, 5, 100, seed=8)
    sites = [(0, "resid_post"), (1, "mlp_out")]
    cap, single = ShardCapturer(str(tiny_gpt2), "float32", sites), ShardCapturer(str(tiny_gpt2), "float32", sites)
    done = threading.Event()

    def run_shards():
        for shard in shards:
            cap.process(shard, 10, np.uint64(2**64 - 1), 3, 128, stats_fraction=0.5)
        done.set()

    worker = threading.Thread(target=run_shards)
    worker.start()
    written = []
    while not done.is_set():  # flush as fast as the shards allow: many partials, each sealed between two shards
        written += cap.flush(str(tmp_path), "h", f"p{len(written):03d}")
    worker.join()
    written += cap.flush(str(tmp_path), "h", f"p{len(written):03d}")
    covered = sorted(i for r in written for i in r["shards"])
    assert covered == list(range(8)) and len(written) >= 2
    merged = unstack_states(merge_statistics_files(
        str(tmp_path), 2, [(f"stats/{r['name']}.npz", r["sha256"]) for r in written]), 2)
    for shard in shards:
        single.process(shard, 10, np.uint64(2**64 - 1), 3, 128, stats_fraction=0.5)
    for mine, ref in zip(merged, single.stats):
        state, expected = mine.state(), ref.state()
        for key in expected:
            np.testing.assert_allclose(state[key], expected[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_partials_hold_flush_every_shards_whenever_the_flush_comes(tiny_gpt2, tmp_path):
    """With `flush_every` 2, the partials hold shards (0, 1), (2, 3), (4, 5), (6), bit for bit the same whether the
    flushes run in another thread while shards run, at random moments, or in line after every second shard."""
    import threading

    from tasks.storage import RunStore

    rng = np.random.default_rng(9)
    shards = random_shards(7, 4, 90, seed=9)
    sites = [(0, "resid_post"), (1, "attn_out")]

    def capturer():
        cap = ShardCapturer(str(tiny_gpt2), "float32", sites)
        cap.ready(64, 128, 10, True, flush_every=2)
        return cap

    def run(cap):
        for shard in shards:
            cap.process(shard, 10, np.uint64(2**64 - 1), 3, None, stats_fraction=1.0)

    threaded, inline = capturer(), capturer()
    worker = threading.Thread(target=run, args=(threaded,))
    worker.start()
    a = []
    while worker.is_alive():
        a += threaded.flush(str(tmp_path / "a"), "h", f"p{len(a):03d}", final=False)
        time.sleep(float(rng.uniform(0, 0.05)))
    a += threaded.flush(str(tmp_path / "a"), "h", "last")
    b = []
    for i, shard in enumerate(shards):
        inline.process(shard, 10, np.uint64(2**64 - 1), 3, None, stats_fraction=1.0)
        if i % 2:
            b += inline.flush(str(tmp_path / "b"), "h", f"p{i}", final=False)
    b += inline.flush(str(tmp_path / "b"), "h", "last")
    assert [r["shards"] for r in a] == [r["shards"] for r in b] == [[0, 1], [2, 3], [4, 5], [6]]
    for ra, rb in zip(a, b):
        xa = RunStore(str(tmp_path / "a")).read_arrays(f"stats/{ra['name']}.npz", ra["sha256"])
        xb = RunStore(str(tmp_path / "b")).read_arrays(f"stats/{rb['name']}.npz", rb["sha256"])
        assert xa.keys() == xb.keys() and all(np.array_equal(xa[k], xb[k]) for k in xa)


def test_statistics_hooks_never_synchronise(tiny_gpt2, stats_path):
    """On a GPU every data-dependent shape (a nonzero, a boolean-mask gather) and every value read back (`item`,
    `bincount`, whose CUDA kernel reads its input's min and max) makes the host wait for the card, and then the
    hundreds of small statistics kernels of each site are launched while the card idles. The hooks take none:
    the tokens fed come as indices from the host, NaN or Inf rows are left out by weights counted on the device
    (they took five per site and forward pass, then two, plus two in each norm histogram's `bincount`). Counted
    at torch's dispatcher on a CPU, along the GPU's path; the counter is shown to see each kind first."""
    from tasks.corpus.shards import Exclusion
    from tasks.capture.dispatch_counts import DispatchCounter

    t = torch.arange(6.0)
    with DispatchCounter() as seen:
        torch.nonzero(t), t[t > 2], torch.bincount(t.long()), float(t.sum()), t.masked_select(t > 1)
    assert seen.synchronising() == 5, seen.count
    sites = [(layer, s) for layer in range(2) for s in SITES]
    cap = ShardCapturer(str(tiny_gpt2), "float32", sites)
    shard = random_shards(1, 8, 100, seed=4)[0]
    cap.recorder.reset_counts(cap.device)
    for fraction in (0.05, 1.0):
        cap.stats = None
        with DispatchCounter() as ops:
            # no sample (threshold 0): the hooks alone; position 0 and a special id excluded, as by default
            meta = cap.process(shard, 10, np.uint64(0), 0, 300, stats_fraction=fraction,
                               exclusion=Exclusion(position0=True, special_ids=(5,)))
        # a CPU's all() check and its bincount of the |x| bins (massive activations), per site and forward pass
        expected = 0 if stats_path == "gpu-path" else 2 * len(sites) * meta["forward_batches"]
        assert meta["forward_batches"] >= 2 and ops.synchronising() == expected, ops.count
        assert cap.stats[0].moments.n == shard.n_tokens - meta["n_excluded"]


def test_nonfinite_states_stay_out_of_the_statistics(tiny_gpt2, stats_path):
    """States with a NaN or Inf are counted and kept out of every statistic, which then equals a direct
    computation over the finite states of the same forward pass. (A token whose embedding is NaN makes its own
    and its sequence's later states NaN at every site.)"""
    from transformers import AutoModel

    from tasks.corpus.shards import Exclusion, batches

    bad = 7
    cap = ShardCapturer(str(tiny_gpt2), "float32", [(0, "resid_post"), (1, "mlp_out")])
    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    for m in (cap.model, model):
        m.get_input_embeddings().weight.data[bad] = float("nan")
    rng = np.random.default_rng(8)
    ids = rng.integers(10, 2048, size=6 * 50).astype(np.int32)
    ids[[1 * 50 + 30, 4 * 50 + 45]] = bad
    offsets = np.arange(7, dtype=np.int64) * 50
    shard = Shard(0, ids, offsets, np.arange(6), np.zeros(6, np.int64))
    meta = cap.process(shard, k=20, threshold=np.uint64(2**64 - 1), seed=1, batch_tokens=4096, stats_fraction=1.0,
                       exclusion=Exclusion(position0=True, special_ids=()))
    (seq_index,) = list(batches(shard, 4096))  # the one batch the actor ran, as it ran it
    input_ids, _mask = pad_batch(ids, offsets, seq_index, 0)
    with torch.no_grad():
        x = model(input_ids=torch.tensor(input_ids), output_hidden_states=True).hidden_states[1]
    x = x.double().numpy().reshape(-1, x.shape[-1])
    pos = np.tile(np.arange(50), 6)
    finite = np.isfinite(x).all(axis=1)
    assert 2 <= (~finite).sum() < len(x) // 2 and meta["nonfinite"][0] == (~finite).sum()
    # the sample is the bottom 20 of the finite, eligible states (NaN ones among a batch's best make room)
    seq = np.repeat(seq_index, 50)
    h = token_hash(1, shard.doc[seq], shard.window[seq], pos)
    usable = np.flatnonzero(finite & (pos > 0))
    assert np.isin(h[~finite], np.sort(h[pos > 0])[:20]).any()  # the case at hand: a NaN state among the best
    assert meta["n_kept"] == 20 and np.isfinite(meta["state"]["vectors"]).all()
    np.testing.assert_array_equal(meta["state"]["hash"], np.sort(h[usable])[:20])
    kept, excluded = x[finite & (pos > 0)], x[finite & (pos == 0)]
    st = cap.stats[0]
    assert st.moments.n == st.units.n == st.covariance.n == st.unit_second.n == st.norms.moments.n == len(kept)
    assert st.norms.counts.sum() == len(kept) and st.excluded_norms.moments.n == len(excluded)
    state = st.state()
    assert all(np.isfinite(v).all() for v in state.values())
    np.testing.assert_allclose(st.moments.mean, kept.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.moments.variance, kept.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st.covariance.covariance, np.cov(kept, rowvar=False), rtol=1e-4, atol=1e-6)
    u = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    np.testing.assert_allclose(st.units.sum, u.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.unit_second.second, u.T @ u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.norms.moments.mean, [np.linalg.norm(kept, axis=1).mean()], rtol=1e-5)
    np.testing.assert_allclose(st.excluded_norms.moments.mean, [np.linalg.norm(excluded, axis=1).mean()], rtol=1e-5)


def test_only_whole_statistics_groups_are_reused():
    """A resumed run reuses a partial only if it is one statistics group (so that it merges to the bits of every
    other run): `flush_every` consecutive shards from a multiple of it, or the corpus's last, shorter group."""
    from workflows.run_dir import whole_group

    assert whole_group([4, 5, 6, 7], 4, None) and whole_group([7, 5, 4, 6], 4, 12)
    assert whole_group([12], 4, 12) and whole_group([8, 9, 10], 4, 10)
    assert not whole_group([8, 9, 10], 4, None)  # the plan is unfinished: more shards of group 2 may come
    assert not whole_group([8, 9, 10], 4, 11)  # shard 11 is missing
    assert not whole_group([5, 6, 7, 8], 4, 12) and not whole_group([4, 6], 4, 6) and not whole_group([], 4, 3)
    assert all(whole_group([i], 1, None) for i in range(5))
