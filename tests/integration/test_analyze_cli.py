"""`cryonoo analyze`: the report of a tiny trained run, its files, and clear errors."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.mrc import read_mrc_header

runner = CliRunner()
TINY = ["--enc-dim", "8", "--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16"]
KS = (3, 5)
SERIES = [f"kmeans{k}" for k in KS] + ["pc1", "pc2"]
TOP_FILES = [
    "analysis.json",
    "index.html",
    "pca_scores.npy",
    "pca_explained_variance.png",
    "pca_density.png",
    *(f"pca_kmeans{k}.png" for k in KS),
    "pca_color_by.png",
    "pca_labels.png",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    result = invoke("train", data.root, "-o", out, "--recipe", "cryodrgn", "-n", 1, *TINY)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def per_particle(data, run, tmp_path_factory):
    """Ground-truth labels of the training particles (.pkl) and random numbers (.npy)."""
    root = tmp_path_factory.mktemp("meta")
    train = np.load(data.root / "split.npz")["train"]
    with open(root / "labels.pkl", "wb") as f:
        pickle.dump(np.asarray(data.labels)[train], f)
    np.save(root / "defocus.npy", np.random.default_rng(0).uniform(1e4, 2e4, len(train)))
    return root / "labels.pkl", root / "defocus.npy", len(train)


def test_analyze_writes_the_documented_layout(run, data, per_particle, tmp_path):
    labels, defocus, n = per_particle
    out = tmp_path / "analysis"
    ks = ",".join(map(str, KS))
    result = invoke(
        "analyze", run, "-o", out, "--ks", ks, "--labels", labels, "--color-by", defocus
    )
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output and "umap" in said(result).lower()
    for name in TOP_FILES:
        assert (out / name).is_file(), name
    for name in SERIES:
        n_maps = 10 if name.startswith("pc") else int(name.removeprefix("kmeans"))
        for f in ["z_values.txt", f"{name}.cxc", *(f"vol_{i:03d}.mrc" for i in range(n_maps))]:
            assert (out / name / f).is_file(), f"{name}/{f}"
        assert not (out / name / f"vol_{n_maps:03d}.mrc").exists()
        header = read_mrc_header(out / name / "vol_000.mrc")
        assert header.shape == (16, 16, 16)
        assert header.voxel_size == pytest.approx(data.config["apix"])
    for k in KS:
        assert np.load(out / f"kmeans{k}" / "labels.npy").shape == (n,)
    rec = json.loads((out / "analysis.json").read_text())
    assert rec["n_particles"] == n and rec["source"]["zfile"].endswith("z.1.pkl")
    assert len(rec["pca"]["explained_variance_ratio"]) == 2
    assert sum(rec["pca"]["explained_variance_ratio"]) <= 1.0 + 1e-9
    for k in KS:
        assert sum(rec["kmeans"][str(k)]["counts"]) == n
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert len(links) > 40 and all((out / link).is_file() for link in links)
    assert all(not re.match(r"[a-z]+://", link) for link in links)
    assert not list(out.rglob("*.tmp"))


def test_analyze_encoded_latents_default_outdir_and_apix(run, data, tmp_path):
    zfile = tmp_path / "z_all.pkl"
    assert invoke("encode", run, data.root, "-o", zfile, "--ind", "all").exit_code == 0
    result = invoke("analyze", run, "--zfile", zfile, "--ks", "2", "--apix", 2.5)
    assert result.exit_code == 0, result.output
    out = run / "analyze.z_all"
    rec = json.loads((out / "analysis.json").read_text())
    assert rec["n_particles"] == len(load_z_pkl(zfile)[0]) == 96
    assert read_mrc_header(out / "pc2" / "vol_009.mrc").voxel_size == pytest.approx(2.5)
    assert (out / "kmeans2" / "kmeans2.cxc").read_text().count("vol_00") == 2


def _bad_zfiles(tmp_path, n):
    nan = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    nan[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "wide.npy", np.zeros((n, 3), dtype=np.float32))
    return {"nan": tmp_path / "nan.npy", "wide": tmp_path / "wide.npy"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan", "NaN"),
        ("wide", "width 3; the model's zdim is 2"),
        ("labels", "--labels"),
        ("color_by", "--color-by"),
        ("k1", "2 ≤ k ≤ N"),
        ("kbig", "2 ≤ k ≤ N"),
        ("kword", "--ks must be comma-separated integers"),
        ("apix", "--apix must be > 0"),
    ],
)
def test_analyze_bad_inputs(run, per_particle, tmp_path, case, message):
    n = per_particle[2]
    zfiles = _bad_zfiles(tmp_path, n)
    np.save(tmp_path / "short.npy", np.zeros(n - 1))
    extra = {
        "nan": ["--zfile", zfiles["nan"]],
        "wide": ["--zfile", zfiles["wide"]],
        "labels": ["--labels", tmp_path / "short.npy"],
        "color_by": ["--color-by", tmp_path / "short.npy"],
        "k1": ["--ks", "1,3"],
        "kbig": ["--ks", str(n + 1)],
        "kword": ["--ks", "five"],
        "apix": ["--apix", "-1"],
    }[case]
    out = tmp_path / "out"
    result = invoke("analyze", run, "-o", out, *extra)
    assert result.exit_code == 2, result.output
    assert message in said(result), result.output
    assert not out.exists()


def test_analyze_needs_latents(run, tmp_path):
    empty = tmp_path / "copy"
    empty.mkdir()
    for f in ("config.json", "weights.1.pt"):
        (empty / f).write_bytes((run / f).read_bytes())
    result = invoke("analyze", empty)
    assert result.exit_code == 2 and "--zfile" in said(result)
    assert not (empty / "analyze.1").exists()
