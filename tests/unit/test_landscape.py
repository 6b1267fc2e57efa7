"""Latent landscapes: PCA, traversals, nearest on-data particles, ChimeraX scripts, bad inputs."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cryonoo.analysis import analyze, chimerax, inputs
from cryonoo.analysis import landscape as ls
from cryonoo.io.mrc import read_mrc, read_mrc_header


def mixture(n: int = 600, d: int = 4, seed: int = 0) -> np.ndarray:
    """``(n, d)`` latents from three anisotropic Gaussian blobs."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (3, d))
    z = means[rng.integers(3, size=n)] + rng.normal(0.0, 1.0, (n, d)) * np.linspace(1, 0.2, d)
    return z


def fake_volume(t: torch.Tensor) -> torch.Tensor:
    """An 8³ map that depends on the latent ``(d,)``."""
    grid = torch.arange(512, dtype=torch.float32).reshape(8, 8, 8) / 512.0
    return grid * (1.0 + t.abs().sum()) + t[0]


# --------------------------------------------------------------------------- PCA
@pytest.mark.parametrize(("n", "d"), [(600, 4), (500, 8), (3, 8), (50, 1)])
def test_pca_matches_numpy_svd(n, d):
    z = mixture(n, d, seed=n)
    pca = ls.fit_pca(z)
    zc = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    ratio = s**2 / np.sum(s**2)
    k = min(n, d)
    assert pca.components.shape == (k, d)
    assert pca.explained_variance_ratio.sum() <= 1.0 + 1e-12
    np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_ratio, ratio[:k], atol=1e-10)
    np.testing.assert_allclose(pca.mean, z.mean(axis=0), atol=1e-12)
    # same axes as the SVD up to sign (distinct variances), largest loading positive
    dots = np.abs(np.sum(pca.components * vt[:k], axis=1))
    np.testing.assert_allclose(dots[ratio[:k] > 1e-9], 1.0, atol=1e-8)
    pivot = np.argmax(np.abs(pca.components), axis=1)
    assert np.all(pca.components[np.arange(k), pivot] > 0)


def test_pca_chunked_equals_whole(monkeypatch):
    z = mixture(1000, 3)
    whole = ls.fit_pca(z)
    monkeypatch.setattr(ls, "_CHUNK_ELEMENTS", 7)  # many small chunks
    chunked = ls.fit_pca(z)
    np.testing.assert_allclose(chunked.components, whole.components, atol=1e-10)
    np.testing.assert_allclose(ls._project(z, chunked), whole.transform(z), atol=1e-9)


def test_pca_constant_data_has_zero_ratios():
    pca = ls.fit_pca(np.ones((10, 3)))
    assert np.all(pca.explained_variance_ratio == 0.0)


# --------------------------------------------------------------------------- traversals
@pytest.mark.parametrize("axis", [0, 1])
def test_traversal_lies_on_the_pc_axis_between_percentiles(axis):
    z = mixture(800, 5)
    pca = ls.fit_pca(z)
    scores = pca.transform(z)
    tr = ls.pc_traversal(pca, scores, axis, n_steps=10, percentiles=(5, 95))
    assert tr.latents.shape == (10, 5) and tr.scores.shape == (10,)
    lo, hi = np.percentile(scores[:, axis], [5, 95])
    np.testing.assert_allclose(tr.scores[[0, -1]], [lo, hi])
    assert np.all(np.diff(tr.scores) > 0) and np.all((tr.scores >= lo) & (tr.scores <= hi))
    offset = tr.latents - pca.mean
    along = offset @ pca.components[axis]
    np.testing.assert_allclose(along, tr.scores, atol=1e-10)
    residual = offset - along[:, None] * pca.components[axis]
    np.testing.assert_allclose(residual, 0.0, atol=1e-10)


@pytest.mark.parametrize(
    ("kw", "message"), [({"n_steps": 1}, "n_steps"), ({"percentiles": (95, 5)}, "low < high")]
)
def test_traversal_rejects_bad_settings(kw, message):
    z = mixture(50, 2)
    pca = ls.fit_pca(z)
    with pytest.raises(ValueError, match=message):
        ls.pc_traversal(pca, pca.transform(z), 0, **kw)


# --------------------------------------------------------------------------- nearest / k-means
@pytest.mark.parametrize("chunk", [None, 5])
def test_nearest_on_data_is_the_argmin_distance(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(ls, "_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(700, 4))
    points = rng.normal(size=(9, 4)) * 2.0
    dist = np.linalg.norm(z[:, None, :] - points[None], axis=-1)
    np.testing.assert_array_equal(ls.nearest_on_data(z, points), np.argmin(dist, axis=0))
    np.testing.assert_array_equal(ls.assign_nearest(z, points), np.argmin(dist, axis=1))


def test_nearest_on_data_finds_exact_members():
    z = mixture(300, 3)
    idx = np.array([5, 17, 299, 0])
    np.testing.assert_array_equal(ls.nearest_on_data(z, z[idx]), idx)


def test_cluster_latents_on_a_subsample_assigns_everyone():
    z = mixture(900, 3)
    a = ls.cluster_latents(z, 4, seed=3, max_fit=200)
    b = ls.cluster_latents(z, 4, seed=3, max_fit=200)
    assert a.fit_points == 200 and a.labels.shape == (900,)
    assert a.counts.sum() == 900 and a.counts.shape == (4,)
    np.testing.assert_array_equal(a.labels, b.labels)  # seeded
    np.testing.assert_array_equal(a.counts, np.bincount(a.labels, minlength=4))
    dist = np.linalg.norm(z[:, None, :] - a.centroids[None], axis=-1)
    np.testing.assert_array_equal(a.center_indices, np.argmin(dist, axis=0))
    np.testing.assert_array_equal(a.labels, np.argmin(dist, axis=1))
    full = ls.cluster_latents(z, 4, seed=3)
    assert full.fit_points == 900 and full.counts.sum() == 900


# --------------------------------------------------------------------------- UMAP
class _FakeUMAP:
    calls: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, n_components: int = 2, random_state: int = 0) -> None:
        self.n_components = n_components

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        _FakeUMAP.calls.append(("fit", len(x)))
        return x[:, :2] * 10.0

    def transform(self, x: np.ndarray) -> np.ndarray:
        _FakeUMAP.calls.append(("transform", len(x)))
        return x[:, :2] * 10.0


def test_umap_fits_on_a_seeded_subsample_and_transforms_the_rest(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=_FakeUMAP))
    _FakeUMAP.calls = []
    z = mixture(120, 3)
    emb = ls.umap_embedding(z, seed=0, max_fit=50)
    assert _FakeUMAP.calls == [("fit", 50), ("transform", 70)]
    np.testing.assert_allclose(emb, z[:, :2] * 10.0)
    _FakeUMAP.calls = []
    ls.umap_embedding(z, max_fit=500)
    assert _FakeUMAP.calls == [("fit", 120)]


def test_umap_missing_is_skipped_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "umap", None)  # import raises ImportError
    assert ls.umap_embedding(mixture(30, 2)) is None
    res = analyze.analyze_landscape(mixture(60, 2), tmp_path / "a", ks=[2], decode=False)
    assert not res.record["umap"]["computed"] and "umap-learn" in res.record["umap"]["note"]
    assert res.record["files"]["umap"] is None
    assert not any(k.startswith("umap") for k in res.record["files"]["figures"])


def test_umap_figures_when_available(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=_FakeUMAP))
    z = mixture(80, 3)
    res = analyze.analyze_landscape(z, tmp_path / "a", ks=[3], color_by=z[:, 0], decode=False)
    figs = res.record["files"]["figures"]
    assert {"umap_density", "umap_kmeans3", "umap_color_by"} <= set(figs)
    assert np.load(tmp_path / "a" / "umap.npy").shape == (80, 2)


# --------------------------------------------------------------------------- ChimeraX
def test_chimerax_script_names_the_maps():
    text = chimerax.chimerax_script(["vol_000.mrc", "vol_001.mrc"], 0.25, "pc1", play=True)
    assert "open vol_000.mrc vol_001.mrc vseries true" in text
    assert "volume #1 level 0.25" in text and "vseries play #1" in text
    assert "vseries play" not in chimerax.chimerax_script(["a.mrc"], 1.0, "kmeans5")
    with pytest.raises(ValueError):
        chimerax.chimerax_script([], 1.0, "x")


def test_written_cxc_files_name_the_written_maps(tmp_path):
    z = mixture(200, 3)
    out = tmp_path / "analysis"
    res = analyze.analyze_landscape(z, out, ks=[2, 4], volume_fn=fake_volume, voxel_size=3.5)
    series = res.record["files"]["series"]
    assert set(series) == {"kmeans2", "kmeans4", "pc1", "pc2"}
    for name, entry in series.items():
        n_maps = int(name.removeprefix("kmeans")) if name.startswith("kmeans") else 10
        assert len(entry["maps"]) == n_maps
        cxc = (out / entry["chimerax"]).read_text()
        line = next(x for x in cxc.splitlines() if x.startswith("open "))
        named = line.removeprefix("open ").removesuffix(" vseries true").split()
        assert named == [Path(m).name for m in entry["maps"]]
        assert all((out / entry["directory"] / m).is_file() for m in named)
        first, _ = read_mrc(out / entry["maps"][0], mmap=False)
        level = float(re.search(r"volume #1 level (\S+)", cxc).group(1))
        np.testing.assert_allclose(level, first.mean() + 2 * first.std(), rtol=1e-5)
        assert read_mrc_header(out / entry["maps"][-1]).voxel_size == pytest.approx(3.5)


def test_centroid_maps_are_decoded_at_the_nearest_particles(tmp_path):
    z = mixture(150, 2)
    res = analyze.analyze_landscape(z, tmp_path / "a", ks=[3], volume_fn=fake_volume)
    cl = res.landscape.clusters[3]
    rows = np.loadtxt(tmp_path / "a" / "kmeans3" / "z_values.txt", ndmin=2)
    np.testing.assert_allclose(rows, z[cl.center_indices], rtol=1e-5)
    for i, idx in enumerate(cl.center_indices):
        vol, _ = read_mrc(tmp_path / "a" / "kmeans3" / f"vol_{i:03d}.mrc", mmap=False)
        expected = fake_volume(torch.from_numpy(z[idx].astype(np.float32))).numpy()
        np.testing.assert_allclose(vol, expected, rtol=1e-6)
    ind = np.loadtxt(tmp_path / "a" / "kmeans3" / "centers_ind.txt", dtype=np.int64, ndmin=1)
    np.testing.assert_array_equal(ind, cl.center_indices)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "kmeans3" / "labels.npy"), cl.labels)


# --------------------------------------------------------------------------- layout + report
def _links(html_text: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', html_text)


def test_layout_summary_and_report_links(tmp_path):
    z = mixture(300, 3)
    labels = np.arange(300) % 3
    out = tmp_path / "a"
    res = analyze.analyze_landscape(
        z, out, ks=[5, 2], labels=labels, color_by=z[:, 1], volume_fn=fake_volume, seed=1
    )
    rec = json.loads((out / "analysis.json").read_text())
    assert rec["n_particles"] == 300 and rec["zdim"] == 3
    assert list(rec["kmeans"]) == ["2", "5"]
    for k, info in rec["kmeans"].items():
        assert sum(info["counts"]) == 300 and len(info["centroid_indices"]) == int(k)
    np.testing.assert_allclose(
        rec["pca"]["explained_variance_ratio"], res.landscape.pca.explained_variance_ratio
    )
    files = rec["files"]
    listed = [files["report"], files["summary"], files["pca_scores"], *files["figures"].values()]
    for entry in files["series"].values():
        listed += [v for k, v in entry.items() if k not in ("directory", "maps", "level")]
        listed += entry["maps"]
    assert all((out / p).is_file() for p in listed)
    assert {"pca_labels", "pca_color_by", "pca_explained_variance", "pca_density"} <= set(
        files["figures"]
    )
    links = _links((out / "index.html").read_text())
    assert links and all(not re.match(r"[a-z]+://", x) for x in links)
    assert all((out / x).is_file() for x in links)
    assert set(files["figures"].values()) <= set(links)
    assert {m for e in files["series"].values() for m in e["maps"]} <= set(links)
    assert np.load(out / "pca_scores.npy").shape == (300, 3)
    assert not list(out.rglob("*.tmp"))


def test_decode_false_writes_no_maps(tmp_path):
    res = analyze.analyze_landscape(mixture(100, 2), tmp_path / "a", ks=[2], decode=False)
    assert not list((tmp_path / "a").rglob("*.mrc")) and not list((tmp_path / "a").rglob("*.cxc"))
    assert all(
        e["maps"] == [] and e["chimerax"] is None for e in res.record["files"]["series"].values()
    )
    assert all((tmp_path / "a" / x).is_file() for x in _links(res.report.read_text()))


def test_zdim_one_has_one_traversal(tmp_path):
    z = mixture(100, 1)
    res = analyze.analyze_landscape(z, tmp_path / "a", ks=[2], volume_fn=fake_volume)
    assert set(res.record["traversals"]) == {"pc1"}
    assert (tmp_path / "a" / "pca_density.png").is_file()
    assert analyze.count_maps([2], 1) == 2 + 10 and analyze.count_maps([5, 20], 8) == 45


# --------------------------------------------------------------------------- bad inputs
def _bad_cases():
    z = mixture(40, 2)
    nan = z.copy()
    nan[3, 1] = np.nan
    return [
        ({"z": nan}, "NaN"),
        ({"z": z[None]}, "shape"),
        ({"z": z[:1]}, "at least 2"),
        ({"z": z, "labels": np.zeros(39)}, "labels has 39 values but there are 40"),
        ({"z": z, "color_by": np.zeros(41)}, "41 values but there are 40"),
        ({"z": z, "color_by": np.array(["a"] * 40)}, "must be numbers"),
        ({"z": z, "color_by": np.full(40, np.inf)}, "NaN or infinite"),
        ({"z": z, "ks": [1]}, "2 ≤ k ≤ N = 40"),
        ({"z": z, "ks": [41]}, "2 ≤ k ≤ N = 40"),
        ({"z": z, "ks": []}, "no k"),
        ({"z": z, "ks": [2], "decode": True}, "volume_fn"),
        (
            {"z": z, "ks": [2], "volume_fn": fake_volume, "voxel_size": 0.0, "decode": True},
            "voxel size",
        ),
    ]


@pytest.mark.parametrize(("kw", "message"), _bad_cases())
def test_bad_inputs_write_nothing(tmp_path, kw, message):
    kw = {"ks": [2], "decode": False, **kw}
    z = kw.pop("z")
    with pytest.raises(ValueError, match=re.escape(message)):
        analyze.analyze_landscape(z, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_check_latents_width_and_parse_ks():
    with pytest.raises(ValueError, match="width 3; the model's zdim is 2"):
        inputs.check_latents(np.zeros((5, 3)), zdim=2)
    assert inputs.parse_ks("5,20") == (5, 20) and inputs.parse_ks(" 3, 3 ,7") == (3, 3, 7)
    assert inputs.check_ks((20, 5, 5), 100) == (5, 20)
    for text in ("5,x", "", "2.5"):
        with pytest.raises(ValueError, match="--ks"):
            inputs.parse_ks(text)
    with pytest.raises(ValueError, match="integer"):
        inputs.check_ks([2.0], 10)


def test_per_particle_files(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4.0))
    (tmp_path / "b.txt").write_text("x\ny\nx\nz\n")
    np.savetxt(tmp_path / "c.txt", np.arange(4))
    assert inputs.load_per_particle(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]
    assert inputs.load_per_particle(tmp_path / "b.txt").tolist() == ["x", "y", "x", "z"]
    assert inputs.check_per_particle(
        inputs.load_per_particle(tmp_path / "c.txt"), 4, "c"
    ).shape == (4,)
    assert inputs.check_per_particle(np.zeros((4, 1)), 4, "col").shape == (4,)
    with pytest.raises(ValueError, match="one value per particle"):
        inputs.check_per_particle(np.zeros((4, 2)), 4, "two")
