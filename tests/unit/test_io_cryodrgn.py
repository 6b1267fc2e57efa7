"""cryoDRGN pickles: safe loading, poses, CTF, z.pkl, index files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from cryonoo.io import (
    ParticleFileError,
    UnsafePickleError,
    load_ctf_pkl,
    load_indices,
    load_poses,
    load_split,
    load_z_pkl,
    safe_load_pickle,
    save_ctf_pkl,
    save_poses,
    save_z_pkl,
)
from cryonoo.physics.rotations import random_rotations


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class _EvalGadget:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.fixture
def poses() -> tuple[np.ndarray, np.ndarray]:
    rots = random_rotations(20, torch.Generator().manual_seed(0)).numpy()  # float32
    trans = np.random.default_rng(0).uniform(-0.2, 0.2, (20, 2))  # float64
    return rots, trans


def test_malicious_pickle_rejected(tmp_path, poses):
    target = tmp_path / "PWNED"
    payloads = {
        "bare.pkl": _Evil(str(target)),
        "nested.pkl": (poses[0], [{"x": _Evil(str(target))}]),
        "eval.pkl": _EvalGadget(),
    }
    for name, obj in payloads.items():
        (tmp_path / name).write_bytes(pickle.dumps(obj, protocol=4))
        with pytest.raises(
            UnsafePickleError, match=r"refusing to load global (posix|os|nt)\.system|builtins\.eval"
        ):
            safe_load_pickle(tmp_path / name)
        with pytest.raises(UnsafePickleError):
            load_poses(tmp_path / name)
    with pytest.raises(UnsafePickleError, match=r"bare\.pkl"):
        load_z_pkl(tmp_path / "bare.pkl")
    with pytest.raises(UnsafePickleError):
        load_indices(tmp_path / "bare.pkl")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_load_for_all_protocols(tmp_path, protocol):
    obj = (
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.float64(2.5),
        {"a": [1, 2.0, None, "s", b"b"], "c": np.zeros(2, dtype=[("x", "<f4"), ("y", "S3")])},
        np.ones((3, 2), order="F"),
    )
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    got = safe_load_pickle(tmp_path / "ok.pkl")
    assert np.array_equal(got[0], obj[0]) and got[1] == 2.5
    assert got[2]["a"] == obj[2]["a"] and np.array_equal(got[2]["c"], obj[2]["c"])
    assert np.array_equal(got[3], obj[3])


def test_poses_round_trip_and_formats(tmp_path, poses):
    rots, trans = poses
    save_poses(tmp_path / "pose.pkl", rots, trans)
    assert (tmp_path / "pose.pkl").read_bytes()[:2] == b"\x80\x04"  # protocol 4
    with open(tmp_path / "pose.pkl", "rb") as f:
        plain = pickle.load(f)
    assert isinstance(plain, tuple) and plain[0].dtype == np.float32
    r, t = load_poses(tmp_path / "pose.pkl", n=20)
    assert r.dtype == np.float32 and t.dtype == np.float64
    assert np.array_equal(r, rots) and np.array_equal(t, trans)
    save_poses(tmp_path / "rot.pkl", torch.from_numpy(rots))  # bare rotation array
    save_ctf_pkl(tmp_path / "junk.pkl", np.zeros((20, 9)))
    r, t = load_poses(tmp_path / "rot.pkl")
    assert t is None and np.array_equal(r, rots)
    (tmp_path / "trans.pkl").write_bytes(pickle.dumps(trans))
    r, t = load_poses([tmp_path / "rot.pkl", tmp_path / "trans.pkl"])
    assert np.array_equal(r, rots) and np.array_equal(t, trans)
    with pytest.raises(ParticleFileError, match=r"\(N, 3, 3\)"):
        load_poses(tmp_path / "junk.pkl")


def test_pose_validation(tmp_path, poses):
    rots, trans = poses
    save_poses(tmp_path / "pose.pkl", rots, trans)
    with pytest.raises(ParticleFileError, match=r"20 rotations but 25 particles"):
        load_poses(tmp_path / "pose.pkl", n=25)
    (tmp_path / "old.pkl").write_bytes(pickle.dumps((rots, trans * 64)))
    with pytest.raises(ParticleFileError, match="old pose format"):
        load_poses(tmp_path / "old.pkl")
    (tmp_path / "short.pkl").write_bytes(pickle.dumps((rots, trans[:5])))
    with pytest.raises(ParticleFileError, match=r"\(20, 2\)"):
        load_poses(tmp_path / "short.pkl")
    (tmp_path / "skew.pkl").write_bytes(pickle.dumps(rots * 2))
    with pytest.raises(ParticleFileError, match="orthonormal"):
        load_poses(tmp_path / "skew.pkl")
    with pytest.raises(ParticleFileError, match="old pose format"):
        save_poses(tmp_path / "bad.pkl", rots, trans * 10)
    assert not (tmp_path / "bad.pkl").exists()


def test_ctf_pkl_round_trip(tmp_path):
    ctf = np.random.default_rng(0).uniform(0, 1, (7, 9))
    save_ctf_pkl(tmp_path / "ctf.pkl", ctf)
    got = load_ctf_pkl(tmp_path / "ctf.pkl", n=7)
    assert got.dtype == np.float32 and np.array_equal(got, ctf.astype(np.float32))
    with pytest.raises(ParticleFileError, match=r"7 CTF rows but 8 particles"):
        load_ctf_pkl(tmp_path / "ctf.pkl", n=8)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(np.zeros((7, 8))))
    with pytest.raises(ParticleFileError, match=r"\(N, 9\).*\(7, 8\)"):
        load_ctf_pkl(tmp_path / "bad.pkl")


def test_z_pkl_two_pickle_layout(tmp_path):
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    save_z_pkl(tmp_path / "z.pkl", mu, torch.from_numpy(logvar))
    with open(tmp_path / "z.pkl", "rb") as f:  # cryoDRGN's reader sees mu first
        first = pickle.load(f)
        second = pickle.load(f)
        assert f.read() == b""
    assert first.dtype == np.float32 and np.array_equal(first, mu.astype(np.float32))
    assert np.array_equal(second, logvar.astype(np.float32))
    m, lv = load_z_pkl(tmp_path / "z.pkl")
    assert np.array_equal(m, first) and np.array_equal(lv, second)
    save_z_pkl(tmp_path / "mu.pkl", mu)
    m, lv = load_z_pkl(tmp_path / "mu.pkl")
    assert lv is None and m.shape == (10, 4)
    with pytest.raises(ValueError, match="differs"):
        save_z_pkl(tmp_path / "x.pkl", mu, logvar[:3])


def test_indices_and_splits(tmp_path):
    ind = np.array([5, 0, 3], dtype=np.int32)
    (tmp_path / "ind.pkl").write_bytes(pickle.dumps(ind))
    np.save(tmp_path / "ind.npy", ind)
    np.savetxt(tmp_path / "ind.txt", ind, fmt="%d")
    np.savez(tmp_path / "split.npz", train=ind, test=np.array([1, 2]))
    for name in ("ind.pkl", "ind.npy", "ind.txt", "split.npz:train"):
        got = load_indices(tmp_path / name if ":" not in name else f"{tmp_path}/{name}", n=6)
        assert got.dtype == np.int64 and got.tolist() == [5, 0, 3]
    assert load_split(f"{tmp_path}/split.npz:test").tolist() == [1, 2]
    with pytest.raises(KeyError, match=r"'val'.*train"):
        load_split(f"{tmp_path}/split.npz:val")
    with pytest.raises(ParticleFileError, match=r"index 5 out of range for 5"):
        load_indices(tmp_path / "ind.pkl", n=5)
    (tmp_path / "neg.pkl").write_bytes(pickle.dumps(np.array([1, -1])))
    with pytest.raises(ParticleFileError, match="negative"):
        load_indices(tmp_path / "neg.pkl")
    (tmp_path / "flt.pkl").write_bytes(pickle.dumps(np.array([1.0, 2.0])))
    with pytest.raises(ParticleFileError, match="integer"):
        load_indices(tmp_path / "flt.pkl")
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"train": ind}))
    assert load_split(f"{tmp_path}/d.pkl:train").tolist() == [5, 0, 3]
