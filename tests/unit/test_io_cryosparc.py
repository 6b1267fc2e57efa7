"""cryoSPARC .cs files: poses, CTF, image sources (synthetic files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryonoo.io import (
    CsSource,
    ParticleFileError,
    cs_ctf,
    cs_poses,
    open_images,
    read_cs,
    write_mrc,
)
from cryonoo.physics.rotations import axis_angle_to_matrix

N, BOX = 6, 10


def _cs_array(paths: list[bytes], idx: list[int]) -> np.ndarray:
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S40"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
    ]
    rng = np.random.default_rng(0)
    cs = np.zeros(len(paths), dtype=dtype)
    cs["uid"] = np.arange(len(paths))
    cs["blob/path"], cs["blob/idx"] = paths, idx
    cs["blob/shape"] = BOX
    cs["blob/psize_A"] = 1.5
    cs["ctf/accel_kv"], cs["ctf/cs_mm"], cs["ctf/amp_contrast"] = 300, 2.7, 0.1
    cs["ctf/df1_A"] = rng.uniform(10000, 20000, len(paths))
    cs["ctf/df2_A"] = cs["ctf/df1_A"] - 300
    cs["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, len(paths))
    cs["ctf/phase_shift_rad"] = np.pi / 2
    cs["alignments3D/shift"] = rng.uniform(-3, 3, (len(paths), 2))
    cs["alignments3D/pose"] = rng.uniform(-2, 2, (len(paths), 3))
    return cs


@pytest.fixture
def cs_file(tmp_path):
    cs = _cs_array([b">J7/imgs/a.mrcs"] * 3 + [b"J7/imgs/b.mrcs"] * 3, [2, 0, 1, 0, 1, 2])
    with open(tmp_path / "p.cs", "wb") as f:  # cryoSPARC writes .cs files through np.save
        np.save(f, cs)
    return tmp_path / "p.cs", cs


def test_cs_poses(cs_file):
    path, cs = cs_file
    rots, trans = cs_poses(path)
    assert rots.shape == (N, 3, 3) and trans.shape == (N, 2)
    assert np.allclose(rots.transpose(0, 2, 1) @ rots, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1)
    vec = torch.from_numpy(cs["alignments3D/pose"].astype(np.float64))
    assert np.allclose(rots, axis_angle_to_matrix(vec).transpose(-1, -2).numpy())  # transpose
    assert np.allclose(trans, cs["alignments3D/shift"] / BOX)
    _, t2 = cs_poses(cs, box=20, hetrefine=True)
    assert np.allclose(t2, cs["alignments3D/shift"] / 20 * 2)


def test_cs_ctf(cs_file):
    path, cs = cs_file
    ctf = cs_ctf(path)
    assert ctf.dtype == np.float32 and ctf.shape == (N, 9)
    assert np.all(ctf[:, 0] == BOX) and np.allclose(ctf[:, 1], 1.5)
    assert np.allclose(ctf[:, 4], np.rad2deg(cs["ctf/df_angle_rad"]), atol=1e-4)
    assert np.allclose(ctf[:, 8], 90)
    assert np.allclose(ctf[:, 5:8], [300, 2.7, 0.1])


def test_missing_field_named(tmp_path, cs_file):
    _, cs = cs_file
    names = [n for n in cs.dtype.names if not n.startswith("alignments3D")]
    np.save(tmp_path / "noalign.npy", cs[names])
    (tmp_path / "noalign.npy").rename(tmp_path / "noalign.cs")
    with pytest.raises(ParticleFileError, match=r"noalign\.cs.*'alignments3D/pose'"):
        cs_poses(tmp_path / "noalign.cs")
    with pytest.raises(ParticleFileError, match="alignments_class_0/pose"):
        cs_poses(cs, abinit=True)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ParticleFileError, match="structured array"):
        read_cs(tmp_path / "plain.npy")


def test_cs_source(tmp_path, cs_file):
    path, _ = cs_file
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, BOX, BOX)).astype(np.float32)
    b = rng.normal(size=(3, BOX, BOX)).astype(np.float32)
    write_mrc(tmp_path / "imgs" / "a.mrcs", a)
    write_mrc(tmp_path / "imgs" / "b.mrcs", b)
    with pytest.raises(ParticleFileError, match=r"p\.cs, row 1: .*a\.mrcs.*datadir"):
        open_images(path)  # neither J7/imgs/a.mrcs nor a.mrcs next to the .cs file
    src = open_images(path, datadir=tmp_path / "imgs")  # found as datadir/basename
    assert isinstance(src, CsSource)
    expect = np.stack([a[2], a[0], a[1], b[0], b[1], b[2]])
    assert np.array_equal(src.images(np.arange(N)), expect)
