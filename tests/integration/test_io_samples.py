"""Reading the real cryoDRGN / RELION / cryoSPARC sample files in ../shared/samples."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cryonoo.io import (
    ParticleFileError,
    check_finite,
    cs_ctf,
    cs_poses,
    load_ctf_pkl,
    load_poses,
    open_images,
    pose_columns,
    read_cs,
    read_mrc,
    read_star,
    star_ctf,
    star_poses,
    write_star,
)
from cryonoo.physics.rotations import matrix_to_relion_euler, relion_euler_to_matrix

pytestmark = pytest.mark.samples


def _orthonormal(rots: np.ndarray, atol: float = 1e-5) -> bool:
    eye = np.abs(rots.transpose(0, 2, 1) @ rots - np.eye(3)).max()
    return eye < atol and np.allclose(np.linalg.det(rots), 1, atol=atol)


@pytest.mark.parametrize(
    ("name", "shape", "apix"),
    [
        ("hand-vol.mrc", (64, 64, 64), 1.0),
        # The README calls these volumes (50S "64³, float16"), but both headers say mode 2 (float32)
        # with nz = 128 sections of 32 × 32 / 16 × 16 and cella = 128, 128, 512 / 1024 Å.
        ("50S-vol.mrc", (128, 32, 32), 4.0),
        ("spike-vol.mrc", (128, 16, 16), 8.0),
        ("hand.mrcs", (100, 64, 64), 1.0),
    ],
)
def test_sample_mrc_headers(samples, name, shape, apix):
    data, info = read_mrc(samples / name)
    assert isinstance(data, np.memmap)
    assert data.shape == shape and info.voxel_size == pytest.approx(apix)
    assert data.dtype == np.float32 and np.isfinite(data[:4]).all()


def test_truncated_sample_stack(samples, tmp_path):
    raw = (samples / "hand.mrcs").read_bytes()
    (tmp_path / "hand_cut.mrcs").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ParticleFileError) as err:
        open_images(tmp_path / "hand_cut.mrcs")
    msg = str(err.value)
    assert "hand_cut.mrcs" in msg and str(len(raw)) in msg and str(len(raw) // 2) in msg


def test_toy_file_types_give_identical_images(samples):
    mrcs = open_images(samples / "toy_projections.mrcs")
    txt = open_images(samples / "toy_projections.txt")
    star = open_images(samples / "toy_projections.star")
    assert len(mrcs) == len(txt) == len(star) == 1000 and mrcs.box == 30
    idx = np.array([0, 999, 17, 18, 19, 500, 17])
    ref = mrcs.images(idx)
    assert np.array_equal(txt.images(idx), ref) and np.array_equal(star.images(idx), ref)
    assert np.array_equal(star.images(slice(100, 164)), mrcs.images(slice(100, 164)))
    assert check_finite(mrcs, batch_size=256).size == 0


@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_relion31_star(samples, name):
    src = open_images(samples / name)
    assert len(src) == 5 and src.box == 256
    direct, _ = read_mrc(samples / "relion31.mrcs")
    assert np.array_equal(src.images([4, 0, 2]), direct[[4, 0, 2]])
    star = read_star(samples / name)
    assert star.relion31 and len(star.optics) == 1
    rots, trans = star_poses(star)
    assert _orthonormal(rots, 1e-12)
    apix, d = 2.806, 256
    x = star.floats("_rlnOriginXAngst")
    assert np.allclose(trans[:, 0], x / apix / d)  # Å → px → box fraction, no sign change
    ctf = star_ctf(star)
    assert ctf.shape == (5, 9) and ctf.dtype == np.float32
    assert ctf[0].tolist() == pytest.approx(
        [256, 2.806, 13108.082418, 12845.582418, -160.39, 300, 0.01, 0.1, 0], rel=1e-6
    )
    # Euler round trip: matrix → RELION angles → matrix
    r = torch.from_numpy(rots)
    assert torch.allclose(relion_euler_to_matrix(*matrix_to_relion_euler(r)), r, atol=1e-10)


def test_relion31_layouts_agree(samples):
    a, b = read_star(samples / "relion31.star"), read_star(samples / "relion31.v2.star")
    assert np.array_equal(star_ctf(a), star_ctf(b))
    for x, y in zip(star_poses(a), star_poses(b), strict=True):
        assert np.array_equal(x, y)


def test_star_missing_image_file(samples, tmp_path):
    shutil.copy(samples / "relion31.star", tmp_path / "moved.star")  # stack left behind
    with pytest.raises(ParticleFileError, match=r"moved\.star, row 1: .*relion31\.mrcs"):
        open_images(tmp_path / "moved.star")
    assert len(open_images(tmp_path / "moved.star", datadir=samples)) == 5


def test_toy_poses(samples, tmp_path):
    rot_trans = load_poses(samples / "toy_rot_trans.pkl", n=1000)
    angles, no_trans = load_poses(samples / "toy_angles.pkl", n=1000)
    split = load_poses([samples / "toy_angles.pkl", samples / "toy_trans.pkl"], n=1000)
    assert no_trans is None and _orthonormal(angles)
    # toy_rot_trans.pkl = (toy_angles.pkl, toy_trans.pkl) exactly
    assert np.array_equal(rot_trans[0], angles) and np.array_equal(rot_trans[1], split[1])
    assert rot_trans[0].dtype == np.float32 and rot_trans[1].dtype == np.float64
    # The toy .star carries CTF columns only: no poses to compare with the pickles.
    star = read_star(samples / "toy_projections.star")
    assert "_rlnAngleRot" not in star.particles and star.values("_rlnOriginX") is None
    with pytest.raises(ParticleFileError, match=r"toy_projections\.star.*_rlnAngleRot"):
        star_poses(star, box=30)
    # Writing the pickled poses to a star and reading them back reproduces them.
    cols = pose_columns(angles, rot_trans[1], box=30)
    names = star.particles.column("_rlnImageName")
    write_star(tmp_path / "toy_poses.star", {"_rlnImageName": names, **cols})
    r, t = star_poses(tmp_path / "toy_poses.star", box=30)
    # (float32 matrices are orthonormal to ~4e-7; Euler extraction near tilt 180° amplifies it)
    assert np.allclose(r, angles, atol=1e-5) and np.allclose(t, rot_trans[1], atol=1e-10)
    hand, _ = load_poses(samples / "hand_rot.pkl", n=100)
    assert hand.shape == (100, 3, 3) and _orthonormal(hand)


def test_toy_ctf(samples):
    ref = load_ctf_pkl(samples / "test_ctf.pkl", n=1000)
    assert ref.shape == (1000, 9) and ref.dtype == np.float32
    assert np.allclose(ref, [30, 1, 0, 0, 0, 300, 0.001, 0.1, 90])
    with pytest.raises(ParticleFileError, match="_rlnImageSize"):
        star_ctf(samples / "toy_projections.star")  # a 3.0 star without box/pixel size
    assert np.array_equal(star_ctf(samples / "toy_projections.star", box=30, apix=1.0), ref)


def test_cryosparc_sample(samples):
    cs = read_cs(samples / "cryosparc_P12_J24_001_particles.cs")
    n = len(cs)
    rots, trans = cs_poses(cs)
    assert rots.shape == (n, 3, 3) and _orthonormal(rots, 1e-10)
    assert np.allclose(trans, cs["alignments3D/shift"] / 180) and np.abs(trans).max() < 0.5
    ctf = cs_ctf(samples / "cryosparc_P12_J24_001_particles.cs")
    assert ctf.shape == (n, 9) and ctf.dtype == np.float32
    assert np.all(ctf[:, 0] == 180) and np.allclose(ctf[:, 1], 2.95)
    assert np.allclose(ctf[:, 2], cs["ctf/df1_A"]) and np.allclose(ctf[:, 5:8], [200, 2, 0.07])
    # the stacks named in blob/path are not part of the samples
    with pytest.raises(ParticleFileError, match=r"_particles\.cs, row \d+: image stack .*J19"):
        open_images(samples / "cryosparc_P12_J24_001_particles.cs")
