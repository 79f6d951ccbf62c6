"""Massive activations (`tasks.stats.massive`, `tasks.analysis.massive`) against known truths: values injected on
known tokens and coordinates of synthetic states are found exactly and flagged by Sun et al.'s criterion, nothing
else is; the histogram's median is within one bin of NumPy's; and the tiny run's `massive.parquet` equals a
brute-force recomputation of the model's states over the same corpus. (Merges in any grouping: the protocol test.)"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.analysis.massive import MASSIVE_ABS, MASSIVE_OVER_MEDIAN, massive_numbers
from tasks.stats.massive import AbsHistogram, RowIdentity, TopAbs
from tasks.stats.site import SiteStatistics

D = 48


def _identity(keys, index, excluded) -> RowIdentity:
    return RowIdentity.of({k: v[index] for k, v in keys.items()}, excluded=excluded[index])


def _corpus(rng, n=6000):
    """Gaussian states of scale 0.05 (median |x| about 0.034) and distinct token identities in shuffled order."""
    x = rng.normal(0, 0.05, size=(n, D))
    order = rng.permutation(n)
    keys = {"doc": order // 300, "window": (order // 100) % 3, "pos": order % 100,
            "token_id": rng.integers(0, 5000, n)}
    return x, keys


def _feed(stats: SiteStatistics, x, keys, kept, excluded, cuts):
    """Feed the rows in batches cut at `cuts`, as the capture hooks do: excluded rows included, non-finite rows
    left out by weights."""
    for index in np.split(np.arange(len(x)), cuts):
        stats.add_massive(torch.from_numpy(x[index]), weights=torch.from_numpy(kept[index]),
                          identity=_identity(keys, index, excluded))


def test_injected_massive_values_are_found_exactly_and_flagged_alone():
    rng = np.random.default_rng(0)
    x, keys = _corpus(rng)
    n = len(x)
    # Injected: (row, coordinate, value). Three massive (|x| > 100 and thousands of times the median), one on an
    # excluded token; two decoys that fail one threshold each: 90 (> 1000 x median, not > 100) and a value tied
    # with a massive one in |x| but on a row whose state has a NaN (left out by weights).
    injected = [(17, 5, -2400.0), (4001, 31, 2100.5), (2500, 5, 350.25)]
    decoys = [(999, 7, 90.0), (3333, 9, 2400.0)]
    for r, c, v in injected + decoys:
        x[r, c] = v
    kept = np.ones(n, bool)
    kept[[3333, 50, 51]] = False
    x[[3333, 50, 51], 0] = np.nan
    excluded = np.zeros(n, bool)
    excluded[[4001, 8, 9]] = True
    stats = SiteStatistics(massive_top=6)
    _feed(stats, x, keys, kept, excluded, [700, 2501, 4000])
    numbers = massive_numbers(stats.massive, stats.abs_hist)
    e = numbers["massive_entries"]
    # the truth: brute force over every finite row, excluded included
    rows = np.flatnonzero(kept)
    a = np.abs(x[rows])
    flat = np.lexsort((np.tile(np.arange(D), len(rows)), np.repeat(keys["pos"][rows], D),
                       np.repeat(keys["window"][rows], D), np.repeat(keys["doc"][rows], D), -a.reshape(-1)))[:6]
    r, c = rows[flat // D], flat % D
    np.testing.assert_array_equal(e["value"], x[r, c])
    np.testing.assert_array_equal(e["coord"], c)
    for name in ("doc", "window", "pos", "token_id"):
        np.testing.assert_array_equal(e[name], keys[name][r])
    np.testing.assert_array_equal(e["excluded"], excluded[r])
    assert [(int(i), int(j)) for i, j in zip(r[:4], c[:4])] == [(17, 5), (4001, 31), (2500, 5), (999, 7)]
    median = np.median(np.abs(x[rows]))
    assert numbers["abs_median"] == pytest.approx(median, rel=0.07)
    assert MASSIVE_OVER_MEDIAN * numbers["abs_median"] < 90.0 < MASSIVE_ABS  # the decoy fails only the |x| test
    np.testing.assert_array_equal(e["massive"], [True, True, True, False, False, False])
    assert numbers["massive_dims"] == "5,31"
    assert numbers["abs_max"] == 2400.0 and numbers["massive_ratio"] == 2400.0 / numbers["abs_median"]
    np.testing.assert_allclose(e["over_median"], np.abs(e["value"]) / numbers["abs_median"])


def test_criterion_needs_a_thousand_times_the_median():
    """Values far above 100 on states whose median |x| is about 0.67 are not massive (under 1000 x the median)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, D))
    x[10, 3], x[20, 4] = 600.0, -640.0  # > 100 but < 1000 x median
    x[30, 5] = 700.0 * 1.5  # > 1000 x median (about 0.67): massive
    top, hist = TopAbs(5), AbsHistogram()
    top.add(torch.from_numpy(x))
    hist.add(torch.from_numpy(x))
    numbers = massive_numbers(top, hist)
    assert 600.0 < MASSIVE_OVER_MEDIAN * numbers["abs_median"] < 1050.0
    np.testing.assert_array_equal(numbers["massive_entries"]["massive"], [True, False, False, False, False])
    assert numbers["massive_dims"] == "5"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_histogram_median_within_one_bin_of_numpy(dtype):
    rng = np.random.default_rng(2)
    for scale in (1e-6, 0.2, 3.0, 4e4):
        x = torch.from_numpy(rng.standard_t(3, size=(4001, 33)) * scale).to(dtype)
        hist = AbsHistogram()
        for part in x.split(700):
            hist.add(part)
        values = np.abs(x.double().numpy()).reshape(-1)
        assert hist.counts.sum() == values.size and hist.n == len(x)
        edges = AbsHistogram.edges()
        bin_of = lambda v: int(np.searchsorted(edges, v, side="right")) - 1  # noqa: E731
        for q in (0.5, 0.1, 0.9):
            got, want = hist.quantile(q), np.quantile(values, q)
            assert abs(bin_of(got) - bin_of(want)) <= 1, (scale, q, got, want)
        # counts are exact: every value (as float32) in the bin its edges give
        bins = np.searchsorted(edges, values.astype(np.float32), side="right") - 1
        np.testing.assert_array_equal(hist.counts, np.bincount(bins, minlength=AbsHistogram.BINS))


def test_gpu_histc_bin_counts_are_exact():
    """The GPU's `histc` path gives exact counts (run here on the CPU), across its 2^24-entry chunks."""
    from tasks.stats.massive import histc_counts

    rng = np.random.default_rng(3)
    idx = rng.choice([0, 5, 4095, 1016], size=(1 << 24) + 1000, p=[0.97, 0.01, 0.01, 0.01]).astype(np.int32)
    np.testing.assert_array_equal(histc_counts(torch.from_numpy(idx), 4096).numpy(), np.bincount(idx, minlength=4096))


def test_tiny_run_massive_columns_and_entries_equal_brute_force(tiny_run, tiny_gpt2, prose):
    """Every site has the new columns, finite, on its raw row; layer 0's `massive.parquet` entries are the
    largest |x| of the model's layer-0 block output over every token of the corpus, recomputed here."""
    from transformers import AutoModel, AutoTokenizer

    from tasks.corpus.documents import load_texts, tokenize
    from tasks.corpus.shards import make_sequences

    s = pq.read_table(tiny_run / "summary.parquet").to_pandas()
    raw = s[s.variant == "raw"]
    assert len(raw) == 6
    for col in ("abs_max", "abs_median", "massive_ratio"):
        assert np.isfinite(raw[col].to_numpy(float)).all() and (raw[col] > 0).all(), col
    assert raw.massive_dims.notna().all()
    assert s[s.variant != "raw"][["abs_max", "massive_ratio"]].isna().all().all()
    m = pq.read_table(tiny_run / "massive.parquet").to_pandas()
    assert len(m) == 6 * 20 and np.isfinite(m.value).all()
    np.testing.assert_allclose(raw.massive_ratio, raw.abs_max / raw.abs_median)

    model = AutoModel.from_pretrained(tiny_gpt2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    docs = tokenize(load_texts("files", files=[str(prose)]), tok, max_docs=300)
    states, ident = [], []
    with torch.no_grad():
        for doc, window, seq in make_sequences(docs, tok, 128, "window"):
            states.append(model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[1][0])
            ident.append(np.stack([np.full(len(seq), doc), np.full(len(seq), window), np.arange(len(seq)), seq], 1))
    x, ident = torch.cat(states).double().numpy(), np.concatenate(ident)
    a = np.abs(x)
    top = np.argsort(-a.reshape(-1), kind="stable")[:20]
    r, c = top // x.shape[1], top % x.shape[1]
    got = m[(m.layer == 0) & (m.site == "resid_post")].sort_values("rank")
    np.testing.assert_array_equal(got.coord, c)
    np.testing.assert_array_equal(got[["doc", "window", "pos", "token_id"]].to_numpy(), ident[r])
    np.testing.assert_allclose(got.value, x[r, c], rtol=1e-5)
    row = raw[(raw.layer == 0) & (raw.site == "resid_post")].iloc[0]
    assert row.abs_max == pytest.approx(a.max(), rel=1e-5)
    assert row.abs_median == pytest.approx(np.median(a), rel=0.07)
    assert got.token.tolist() == [tok.decode([int(t)]) for t in ident[r, 3]]
    assert got.text.str.len().gt(0).all()
