"""The command line: each command runs, writes what it says, and fails clearly on bad input."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

import cryonoo
from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_ctf_pkl, load_poses
from cryonoo.registries import all_registries

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_version_and_list():
    assert cryonoo.__version__ in invoke("--version").output
    out = invoke("list")
    assert out.exit_code == 0
    for name, registry in all_registries().items():
        assert name in out.output
        for entry in registry.names():
            assert entry in out.output


@pytest.fixture(scope="module")
def simdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sim"
    result = invoke("simulate", out, "-D", 16, "-n", 60, "--n-conformations", 4, "--seed", 2)
    assert result.exit_code == 0, result.output
    return out


def test_simulate_writes_dataset(simdir):
    for name in ["particles.mrcs", "poses.pkl", "ctf.pkl", "labels.npy", "split.npz"]:
        assert (simdir / name).is_file()
    assert len(list((simdir / "gt").glob("vol_*.mrc"))) == 4


def test_simulate_bad_input(tmp_path):
    result = invoke("simulate", tmp_path / "x", "-D", 15)
    assert result.exit_code == 2 and "box must be even" in result.output
    result = invoke("simulate", tmp_path / "x", "--phantom", "nope")
    assert result.exit_code != 0 and "igg-1d" in result.output


def test_estimate_noise_matches_config(simdir):
    import json

    sigma = json.loads((simdir / "config.json").read_text())["noise_sigma"]
    result = invoke("estimate-noise", simdir)
    assert result.exit_code == 0
    estimated = float(result.output.split("σ =")[1].split()[0])
    assert estimated == pytest.approx(sigma, rel=0.1)


def test_downsample(simdir, tmp_path):
    result = invoke("downsample", simdir / "particles.mrcs", "-D", 8, "-o", tmp_path / "d.mrcs")
    assert result.exit_code == 0, result.output
    with mrcfile.open(tmp_path / "d.mrcs") as mrc:
        assert mrc.data.shape == (60, 8, 8)
        with mrcfile.open(simdir / "particles.mrcs") as src:
            assert mrc.voxel_size.x == pytest.approx(2 * src.voxel_size.x)
    assert invoke("downsample", simdir / "particles.mrcs", "-D", 9, "-o", tmp_path / "e").exit_code
    assert not (tmp_path / "e").exists()


def test_parse_star_and_cs(samples, tmp_path):
    result = invoke("parse", samples / "relion31.star", "-o", tmp_path / "star")
    assert result.exit_code == 0, result.output
    rots, trans = load_poses(tmp_path / "star" / "poses.pkl")
    assert rots.shape == (5, 3, 3) and trans.shape == (5, 2)
    assert load_ctf_pkl(tmp_path / "star" / "ctf.pkl").shape == (5, 9)
    cs = samples / "cryosparc_P12_J24_001_particles.cs"
    result = invoke("parse", cs, "-o", tmp_path / "cs")
    assert result.exit_code == 0, result.output
    rots, _ = load_poses(tmp_path / "cs" / "poses.pkl")
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
    bad = invoke("parse", samples / "toy_projections.star", "-o", tmp_path / "toy")
    assert bad.exit_code == 2 and "_rlnAngleRot" in bad.output
