"""Run-directory arrays: `.npz` written through the hash, read back as views of the checked bytes; statistics
partials merged one at a time from those views."""

import hashlib
import zipfile

import numpy as np
import pytest
import torch

from tasks.merge.tree import corrupt_files, merge_statistics_files, split_statistics
from tasks.stats.site import SiteStatistics, stack_states, unstack_states
from tasks.storage import RunStore


def arrays():
    rng = np.random.default_rng(0)
    return {"vectors": rng.standard_normal((3, 50, 7)).astype(np.float32), "hash": rng.integers(0, 2**63, 50, dtype=np.uint64),
            "k": np.int64(5), "empty": np.zeros((0, 4), np.int32), "fortran": np.asfortranarray(rng.random((6, 5))),
            "s0.moments.mean": rng.random(7)}


def test_npz_round_trip_against_numpy_and_hashlib(tmp_path):
    store = RunStore(str(tmp_path))
    written = arrays()
    sha = store.write_arrays("a/x.npz", written)
    raw = (tmp_path / "a" / "x.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == sha  # the hash is of the bytes on disk
    assert zipfile.ZipFile(tmp_path / "a" / "x.npz").testzip() is None  # every member's CRC holds
    with np.load(tmp_path / "a" / "x.npz", allow_pickle=False) as z:  # an independent reader
        reference = {name: z[name] for name in z.files}
    assert list(tmp_path.joinpath("a").iterdir()) == [tmp_path / "a" / "x.npz"]  # no temporary left
    for checked in (True, False):
        got = store.read_arrays("a/x.npz", sha if checked else None)
        assert set(got) == set(written)
        for name, value in written.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape
            np.testing.assert_array_equal(got[name], reference[name])
        # checked reads are views of the file's bytes (read-only); unchecked ones are np.load's own copies
        assert all(not a.flags.writeable for a in got.values()) == checked


def test_corrupt_file_is_refused(tmp_path):
    store = RunStore(str(tmp_path))
    sha = store.write_arrays("x.npz", arrays())
    data = bytearray((tmp_path / "x.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "x.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        store.read_arrays("x.npz", sha)
    assert not store.matches("x.npz", sha) and not store.matches("missing.npz", sha)
    assert corrupt_files(str(tmp_path), [("x.npz", sha), ("missing.npz", sha)]) == ["x.npz", "missing.npz"]


def test_statistics_partials_merge_like_one_pass(tmp_path):
    """Partials written as actors flush them (d x d matrices packed as upper triangles), merged from their files
    and from merged states (the two tree levels), equal one pass over all the data; the files are left as they
    were."""
    rng = np.random.default_rng(1)
    chunks = [[rng.standard_t(df=5, size=(int(rng.integers(20, 200)), 6)) * rng.uniform(0.5, 3) + rng.normal(0, 9, 6)
               for _ in range(2)] for _ in range(5)]  # 5 partials x 2 sites
    store = RunStore(str(tmp_path))
    files = []
    for p, chunk in enumerate(chunks):
        per_site = [SiteStatistics() for _ in range(2)]
        for stat, x in zip(per_site, chunk):
            stat.add(torch.from_numpy(x))
        files.append((f"stats/p{p}.npz", store.write_arrays(f"stats/p{p}.npz", stack_states(per_site, copy=False, packed=True))))
    assert RunStore(str(tmp_path)).read_arrays(*files[0])["s1.covariance.comoment"].shape == (6 * 7 // 2,)
    level1 = [merge_statistics_files(str(tmp_path), 2, files[:3]), merge_statistics_files(str(tmp_path), 2, files[3:])]
    merged = unstack_states(merge_statistics_files(str(tmp_path), 2, [], *level1), 2)
    for site in range(2):
        single = SiteStatistics()
        single.add(torch.from_numpy(np.concatenate([c[site] for c in chunks])))
        for name in SiteStatistics.PARTS:
            mine, ref = getattr(merged[site], name).state(), getattr(single, name).state()
            for key in ref:
                np.testing.assert_allclose(mine[key], ref[key], rtol=1e-10, atol=1e-9, err_msg=f"{name}.{key}")
    assert corrupt_files(str(tmp_path), files) == []  # merging read views and never wrote to them
    split = split_statistics(stack_states(merged), 2)
    np.testing.assert_array_equal(split[1]["covariance.comoment"], merged[1].covariance.comoment)


def test_load_without_copy_shares_and_with_copy_owns():
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((40, 3)))
    s = SiteStatistics()
    s.add(x)
    state = s.state()
    before = {k: v.copy() for k, v in state.items()}
    owned = SiteStatistics.load(state)
    owned.merge(SiteStatistics.load(state, copy=False))  # in-place sums into the copy only
    for key, value in before.items():
        np.testing.assert_array_equal(state[key], value)
    np.testing.assert_allclose(owned.covariance.mean, x.numpy().mean(0), rtol=1e-12)
    assert owned.moments.n == 80
