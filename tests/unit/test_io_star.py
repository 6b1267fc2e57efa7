"""RELION .star parsing, poses/CTF extraction, writing, and .star image sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryonoo.io import (
    ParticleFileError,
    StarSource,
    open_images,
    pose_columns,
    read_star,
    star_ctf,
    star_poses,
    write_mrc,
    write_star,
)
from cryonoo.physics.rotations import random_rotations

STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
1 "group one" 2.0 16 300 2.7 0.1
2 opticsGroup2 4.0 32 200 2.0 0.07

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnOpticsGroup #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
1@a.mrcs 10000 9000 45 1 10 20 30 2.0 -4.0   # a comment
2@a.mrcs 11000 9500 -30 2 -170 90 0 0.0 8.0
3@a.mrcs
  12000 12000 0 1 0 0 0 1 1
"""


@pytest.fixture
def star31(tmp_path):
    path = tmp_path / "p.star"
    path.write_text(STAR31)
    return path


def test_parse_relion31(star31):
    star = read_star(star31)
    assert list(star.blocks) == ["optics", "particles"] and star.relion31
    assert len(star) == 3 and len(star.optics) == 2
    assert star.optics.column("_rlnOpticsGroupName").tolist() == ["group one", "opticsGroup2"]
    assert star.particles.column("_rlnImageName").tolist() == ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]
    assert star.floats("_rlnVoltage").tolist() == [300, 200, 300]  # via optics groups
    assert star.floats("_rlnDefocusU").tolist() == [10000, 11000, 12000]


def test_poses_and_ctf_from_relion31(star31):
    rots, trans = star_poses(star31)
    assert rots.shape == (3, 3, 3) and rots.dtype == np.float64
    assert np.allclose(rots.transpose(0, 2, 1) @ rots, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1)
    # Å / Apix (per optics group) / box (per optics group), no sign change
    expect = [[2.0 / 2 / 16, -4.0 / 2 / 16], [0, 8.0 / 4 / 32], [1 / 2 / 16, 1 / 2 / 16]]
    assert np.allclose(trans, expect)
    ctf = star_ctf(star31)
    assert ctf.dtype == np.float32 and ctf.shape == (3, 9)
    assert ctf[1].tolist() == pytest.approx([32, 4, 11000, 9500, -30, 200, 2.0, 0.07, 0])
    over = star_ctf(star31, box=64, apix=1.5, kv=100, cs=0.01, w=0.2, ps=90)
    assert over[0].tolist() == pytest.approx([64, 1.5, 10000, 9000, 45, 100, 0.01, 0.2, 90])


def test_pose_round_trip_through_written_star(tmp_path):
    rots = random_rotations(50, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    trans = np.random.default_rng(0).uniform(-0.1, 0.1, size=(50, 2))
    for apix in (None, 1.3):
        cols = pose_columns(rots, trans, box=64, apix=apix)
        names = np.array([f"{i + 1}@x.mrcs" for i in range(50)])
        optics = {"_rlnImageSize": [64], "_rlnImagePixelSize": [apix or 1.0]}
        write_star(tmp_path / "w.star", {"_rlnImageName": names, **cols}, optics=optics)
        r, t = star_poses(tmp_path / "w.star")
        assert np.allclose(r, rots, atol=1e-8) and np.allclose(t, trans, atol=1e-10)
    # RELION 3.0 layout (single table), box given explicitly
    write_star(tmp_path / "w30.star", pose_columns(rots, trans, box=64))
    star = read_star(tmp_path / "w30.star")
    assert not star.relion31
    r, t = star_poses(star, box=64)
    assert np.allclose(r, rots, atol=1e-8) and np.allclose(t, trans, atol=1e-10)


def test_missing_columns_name_column_and_file(tmp_path, star31):
    path = tmp_path / "noang.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 100\n")
    with pytest.raises(ParticleFileError, match=r"noang\.star.*_rlnAngleRot"):
        star_poses(path, box=16)
    with pytest.raises(ParticleFileError, match=r"_rlnDefocusV"):
        star_ctf(path, box=16, apix=1)
    with pytest.raises(ParticleFileError, match=r"_rlnImageSize.*box="):
        star_ctf(path)
    # missing origins: zeros with a warning
    path.write_text("data_\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n0 0 0\n")
    with pytest.warns(UserWarning, match="translations set to 0"):
        _, trans = star_poses(path, box=16)
    assert np.array_equal(trans, np.zeros((1, 2)))


def test_unknown_optics_group_names_row(tmp_path):
    text = STAR31.replace("3@a.mrcs\n  12000 12000 0 1", "3@a.mrcs\n  12000 12000 0 7")
    (tmp_path / "bad.star").write_text(text)
    with pytest.raises(ParticleFileError, match=r"bad\.star, row 3: unknown optics group 7"):
        star_ctf(tmp_path / "bad.star")


def test_parser_errors_name_line(tmp_path):
    p = tmp_path / "e.star"
    p.write_text("data_x\nloop_\n_a\n_b\n1 2 3\n")
    with pytest.raises(ParticleFileError, match=r"e\.star, line 5: 3 values for 2 columns"):
        read_star(p)
    p.write_text("data_x\nloop_\n_a\n_b\n1\n")
    with pytest.raises(ParticleFileError, match="incomplete row"):
        read_star(p)
    p.write_text("loop_\n_a\n")
    with pytest.raises(ParticleFileError, match="before any data_"):
        read_star(p)
    p.write_text("data_x\nloop_\n_a\nfoo\n")
    with pytest.raises(ParticleFileError, match=r"row 1, column _a: 'foo' is not a number"):
        read_star(p).floats("_a")


def test_key_value_pairs_and_quoted_values(tmp_path):
    p = tmp_path / "kv.star"
    p.write_text(
        "data_general\n_rlnImageSizeX 256\n_rlnName 'two words'  # c\n\n"
        "data_items\nloop_\n_a #1\n_b #2\n'x y' 1\n\"\" 2\n"
    )
    star = read_star(p)
    assert star.blocks["general"].pairs == {"_rlnImageSizeX": "256", "_rlnName": "two words"}
    assert star.particles.name == "items"
    assert star.particles.column("_a").tolist() == ["x y", ""]
    write_star(tmp_path / "out.star", {"_a": star.particles.column("_a"), "_b": [1, 2]})
    again = read_star(tmp_path / "out.star")
    assert again.particles.column("_a").tolist() == ["x y", ""]


def _stack(tmp_path, name, n, box=8, seed=0):
    images = np.random.default_rng(seed).normal(size=(n, box, box)).astype(np.float32)
    write_mrc(tmp_path / name, images)
    return images


def test_star_source_paths_and_order(tmp_path):
    (tmp_path / "stacks").mkdir()
    a = _stack(tmp_path / "stacks", "a.mrcs", 4, seed=1)
    b = _stack(tmp_path / "stacks", "b.mrcs", 3, seed=2)
    names = ["2@stacks/a.mrcs", "1@Extract/job1/b.mrcs", "4@stacks/a.mrcs", "3@b.mrcs"]
    write_star(tmp_path / "s.star", {"_rlnImageName": np.array(names)})
    # stacks/a.mrcs is relative to the star's directory; b via datadir/basename
    src = open_images(tmp_path / "s.star", datadir=tmp_path / "stacks")
    assert isinstance(src, StarSource) and len(src) == 4 and src.box == 8
    expect = np.stack([a[1], b[0], a[3], b[2]])
    assert np.array_equal(src.images([0, 1, 2, 3]), expect)
    assert np.array_equal(src.images([3, 0, 0]), expect[[3, 0, 0]])
    assert not src._cache or len(src._cache) <= src.cache_size


def test_star_source_errors(tmp_path):
    _stack(tmp_path, "a.mrcs", 2)
    write_star(tmp_path / "m.star", {"_rlnImageName": np.array(["1@a.mrcs", "1@gone.mrcs"])})
    with pytest.raises(ParticleFileError, match=r"m\.star, row 2.*gone\.mrcs.*tried"):
        open_images(tmp_path / "m.star")
    write_star(tmp_path / "o.star", {"_rlnImageName": np.array(["1@a.mrcs", "3@a.mrcs"])})
    src = open_images(tmp_path / "o.star")  # resolved eagerly, opened lazily
    with pytest.raises(ParticleFileError, match=r"o\.star, row 2.*holds only 2 images"):
        src.images([0])
    write_mrc(tmp_path / "rect.mrcs", np.zeros((2, 8, 6)))
    write_star(tmp_path / "r.star", {"_rlnImageName": np.array(["1@rect.mrcs"])})
    with pytest.raises(ParticleFileError, match="square"):
        open_images(tmp_path / "r.star")
    write_star(tmp_path / "n.star", {"_rlnImageName": np.array(["a.mrcs"])})
    with pytest.raises(ParticleFileError, match=r"row 1.*idx@path"):
        open_images(tmp_path / "n.star")
    write_star(tmp_path / "c.star", {"_rlnDefocusU": np.array([1.0])})
    with pytest.raises(ParticleFileError, match=r"c\.star: no _rlnImageName"):
        open_images(tmp_path / "c.star")
