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
    from cryonoo.train.recipes import RECIPES, RECOMMENDED

    assert all(name in out.output for name in RECIPES)
    row = next(line for line in out.output.splitlines() if f" {RECOMMENDED} " in line)
    assert "recommended" in row


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


def test_parse_ctf_only_star_writes_ctf_alone_with_overrides(samples, tmp_path):
    out = tmp_path / "toy"
    result = invoke("parse", samples / "toy_projections.star", "-o", out, "-D", 30)
    assert result.exit_code == 2 and "_rlnImagePixelSize" in result.output  # no pixel size
    assert not out.exists() or not any(out.iterdir())
    args = ("--apix", 2.5, "-w", 0.07, "--kv", 200, "--cs", 2.7, "--ps", 0)
    result = invoke("parse", samples / "toy_projections.star", "-o", out, "-D", 30, *args)
    assert result.exit_code == 0, result.output
    assert not (out / "poses.pkl").exists() and "ctf.pkl only" in result.output
    ctf = load_ctf_pkl(out / "ctf.pkl")
    assert ctf.shape == (1000, 9)
    np.testing.assert_allclose(ctf[0, [0, 1, 5, 6, 7, 8]], [30, 2.5, 200, 2.7, 0.07, 0])


def test_parse_cs_box_and_ctf_only(samples, tmp_path):
    from cryonoo.io.cryosparc import read_cs

    src = samples / "cryosparc_P12_J24_001_particles.cs"
    cs = read_cs(src)
    box, psize = float(cs["blob/shape"][0, 0]), float(cs["blob/psize_A"][0])
    full = invoke("parse", src, "-o", tmp_path / "full")
    half = invoke("parse", src, "-o", tmp_path / "half", "-D", int(box) // 2)
    assert full.exit_code == 0 and half.exit_code == 0, full.output + half.output
    # shifts are fractions of the file's own box whatever -D says; the CTF follows -D
    _, t_full = load_poses(tmp_path / "full" / "poses.pkl")
    _, t_half = load_poses(tmp_path / "half" / "poses.pkl")
    np.testing.assert_allclose(t_half, t_full)
    np.testing.assert_allclose(t_full, cs["alignments3D/shift"] / box, rtol=1e-6)
    ctf = load_ctf_pkl(tmp_path / "half" / "ctf.pkl")
    np.testing.assert_allclose(ctf[:, :2], [[box // 2, psize * 2]] * len(cs), rtol=1e-6)
    # a .cs without alignments (an import or 2-D job): ctf.pkl alone
    keep = [n for n in cs.dtype.names if not n.startswith("alignments")]
    bare = tmp_path / "import.cs"
    with open(bare, "wb") as fh:
        np.save(fh, cs[keep].copy())
    result = invoke("parse", bare, "-o", tmp_path / "bare")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bare" / "ctf.pkl").exists()
    assert not (tmp_path / "bare" / "poses.pkl").exists()
    # errors name the file, not "cryoSPARC array"
    no_ctf = tmp_path / "noctf.cs"
    with open(no_ctf, "wb") as fh:
        np.save(fh, cs[[n for n in keep if not n.startswith("ctf")]].copy())
    result = invoke("parse", no_ctf, "-o", tmp_path / "none")
    assert result.exit_code == 2 and "noctf.cs" in result.output


def test_config_file_and_set_reach_the_saved_config(data, tmp_path):
    """`cryonoo config` writes what `train --config` reads; --set over the file; flags over both."""
    import json

    settings = tmp_path / "run.yaml"
    result = invoke("config", "sleep-4v-pv", "--set", "ssl.weight=0.1", "-o", settings)
    assert result.exit_code == 0, result.output
    assert "weight: 0.1" in settings.read_text()
    out = tmp_path / "run"
    tiny = ["--enc-dim", "8", "--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16"]
    result = invoke(
        "train", data.root, "-o", out, "--config", settings,
        "--set", "optim.lr_plateau=true", "--set", "optim.epochs=5", "-n", 1, *tiny,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["name"], saved["ssl_weight"], saved["lr_plateau"]) == ("sleep-4v-pv", 0.1, True)
    assert saved["epochs"] == 1 and saved["noise_factors"] == [1.0] * 4
    bad = invoke("train", data.root, "-o", tmp_path / "bad", "--set", "ssl.wieght=1")
    assert bad.exit_code == 2 and "ssl has: " in bad.output
    assert not (tmp_path / "bad").exists()
