"""`cryonoo select`: selections from latents written as index .pkl, .star and .cs."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.eval.clusters import kmeans
from cryonoo.io.cryodrgn import load_indices, save_z_pkl
from cryonoo.io.cryosparc import read_cs
from cryonoo.io.star import read_star_raw

pytestmark = pytest.mark.samples
runner = CliRunner()
CS_SAMPLE = "cryosparc_P12_J24_001_particles.cs"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def _z(path, n, zdim=3, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, zdim)).astype(np.float32)
    save_z_pkl(path, z, np.zeros_like(z))
    return z


def test_select_index_writes_ind_and_star(samples, tmp_path):
    _z(tmp_path / "z.pkl", 5)
    np.save(tmp_path / "ind.npy", np.array([3, 1]))
    stem = tmp_path / "out" / "sel"
    src = samples / "relion31.star"
    result = invoke(
        "select", tmp_path / "z.pkl", "-o", stem, "--index", tmp_path / "ind.npy", "--star", src
    )
    assert result.exit_code == 0, result.output
    assert "selected 2 / 5 particles" in said(result)
    assert load_indices(f"{stem}.ind.pkl").tolist() == [1, 3]
    orig, sub = read_star_raw(src), read_star_raw(f"{stem}.star")
    assert list(sub.blocks) == ["optics", "particles"]
    names = orig.particles.column("_rlnImageName")
    assert sub.particles.column("_rlnImageName").tolist() == names[[1, 3]].tolist()
    assert sub.particles.labels == orig.particles.labels


def test_select_kmeans_clusters_and_invert(samples, tmp_path):
    z = _z(tmp_path / "z.pkl", 5)
    labels = kmeans(z, 2, seed=4).labels
    stem = tmp_path / "km"
    args = ["select", tmp_path / "z.pkl", "-o", stem, "--kmeans", 2, "--seed", 4, "--clusters", 0]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert load_indices(f"{stem}.ind.pkl").tolist() == np.flatnonzero(labels == 0).tolist()
    result = invoke(*args[:3], tmp_path / "inv", *args[4:], "--invert")
    assert result.exit_code == 0, result.output
    assert load_indices(tmp_path / "inv.ind.pkl").tolist() == np.flatnonzero(labels != 0).tolist()


def test_select_pca_box_polygon_and_cs(samples, tmp_path):
    src = samples / CS_SAMPLE
    n = len(read_cs(src))
    _z(tmp_path / "z.pkl", n, zdim=4)
    big = "-1e9,1e9,0,1e9"
    poly = "-1e9,0,1e9,0,1e9,1e9,-1e9,1e9"
    out = {}
    for name, flag, value in (("box", "--pca-box", big), ("poly", "--pca-polygon", poly)):
        result = invoke(
            "select", tmp_path / "z.pkl", "-o", tmp_path / name, flag, value, "--cs", src
        )
        assert result.exit_code == 0, result.output
        out[name] = load_indices(tmp_path / f"{name}.ind.pkl")
        assert read_cs(tmp_path / f"{name}.cs").tobytes() == read_cs(src)[out[name]].tobytes()
    assert np.array_equal(out["box"], out["poly"]) and 0 < out["box"].size < n


def test_count_mismatch_exits_2_and_writes_nothing(samples, tmp_path):
    _z(tmp_path / "z.pkl", 4)
    out = tmp_path / "out"
    result = invoke(
        "select",
        tmp_path / "z.pkl",
        "-o",
        out / "sel",
        "--pca-box",
        "-9,9,-9,9",
        "--star",
        samples / "relion31.star",
    )
    assert result.exit_code == 2
    assert "5 particles in the file but 4 latents" in said(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a criterion"),
        (["--clusters", "0"], "--clusters goes with"),
        (["--pca-polygon", "0,0,1,1"], "at least 3 vertices"),
        (["--pca-box", "0,1,2"], "4 numbers"),
        (["--pca-box", "9,10,9,10"], "nothing selected"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, args, message):
    _z(tmp_path / "z.pkl", 5)
    result = invoke("select", tmp_path / "z.pkl", "-o", tmp_path / "sel", *args)
    assert result.exit_code == 2, result.output
    assert message in said(result)
    assert not (tmp_path / "sel.ind.pkl").exists()


def test_select_density_quantile_matches_the_library(tmp_path):
    from cryonoo.analysis.landscape import fit_pca
    from cryonoo.analysis.selection import select_indices

    z = _z(tmp_path / "z.pkl", 500)
    result = invoke("select", tmp_path / "z.pkl", "-o", tmp_path / "d", "--density-quantile", 0.2)
    assert result.exit_code == 0, result.output
    xy = fit_pca(z).transform(z)[:, :2]
    expected = select_indices(len(z), coords=xy, density_quantile=0.2)
    assert load_indices(tmp_path / "d.ind.pkl").tolist() == expected.tolist()
    assert 0 < len(expected) < len(z)
    bad = invoke("select", tmp_path / "z.pkl", "-o", tmp_path / "e", "--density-quantile", 1.5)
    assert bad.exit_code == 2 and "density quantile" in bad.output
    assert not list(tmp_path.glob("e.*"))
