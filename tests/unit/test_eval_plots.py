import itertools
import json
import sys
import types

import numpy as np
import pytest
import torch

from cryonoo.eval.clusters import kmeans, pca_fit, write_cluster_volumes
from cryonoo.eval.fsc import FSCCurve
from cryonoo.eval.plots import (
    plot_fsc_curves,
    plot_latent_pca,
    plot_latent_umap,
    plot_metric_bars,
    plot_training_curves,
)
from cryonoo.io.mrc import read_mrc_header

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 200


def _latents(zdim: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, size=n)
    angle = 2 * np.pi * labels / 100
    z = 0.1 * rng.standard_normal((n, zdim))
    z[:, 0] += np.cos(angle)
    if zdim > 1:
        z[:, 1] += np.sin(angle)
    return z, labels


# ------------------------------------------------------------------------------------ PCA
def test_pca_transform_centered_and_variance_ordered() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 8)) * np.linspace(3.0, 0.5, 8) + 5.0
    pca = pca_fit(z, n_components=3)
    proj = pca.transform(z)
    assert proj.shape == (500, 3)
    np.testing.assert_allclose(proj.mean(axis=0), 0.0, atol=1e-10)
    ratio = pca.explained_variance_ratio
    assert ratio[0] == ratio.max() and np.all(np.diff(ratio) <= 0) and ratio.sum() <= 1.0
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-10)
    var = proj.var(axis=0)
    assert var[0] == var.max()


def test_pca_first_component_aligns_with_stretch() -> None:
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(6)
    direction /= np.linalg.norm(direction)
    z = rng.standard_normal((400, 6)) + 10.0 * rng.standard_normal((400, 1)) * direction
    pca = pca_fit(torch.from_numpy(z), 2)
    assert abs(float(pca.components[0] @ direction)) > 0.99


def test_pca_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pca_fit(np.zeros((10, 1)), 2)
    with pytest.raises(ValueError):
        pca_fit(np.full((5, 3), np.nan))
    with pytest.raises(ValueError):
        pca_fit(np.ones((10, 3))).transform(np.ones((4, 2)))


# ------------------------------------------------------------------------------------ k-means
def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [10, 10, 10]], float)
    truth = np.repeat(np.arange(5), [30, 50, 40, 60, 20])
    return means[truth] + 0.3 * rng.standard_normal((truth.size, 3)), truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_blobs_and_is_reproducible() -> None:
    z, truth = _blobs()
    res = kmeans(z, 5, seed=3)
    assert res.labels.shape == (200,) and res.centers.shape == (5, 3)
    assert _same_partition(res.labels, truth)
    again = kmeans(z, 5, seed=3)
    np.testing.assert_array_equal(res.labels, again.labels)
    np.testing.assert_array_equal(res.centers, again.centers)
    np.testing.assert_array_equal(res.center_indices, again.center_indices)
    # centers are the cluster means and the inertia matches them
    for c in range(5):
        np.testing.assert_allclose(res.centers[c], z[res.labels == c].mean(axis=0), atol=1e-9)
    inertia = np.sum((z - res.centers[res.labels]) ** 2)
    assert res.inertia == pytest.approx(inertia)


def test_kmeans_centers_snap_to_data_points() -> None:
    z, _ = _blobs(1)
    res = kmeans(torch.from_numpy(z), 5, seed=0)
    d2 = ((z[:, None, :] - res.centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(res.center_indices, d2.argmin(axis=0))
    snapped = z[res.center_indices]
    assert np.all(np.any(np.all(snapped[:, None] == z[None], axis=-1), axis=1))
    assert np.all(res.labels[res.center_indices] == np.arange(5))


def test_kmeans_edge_cases() -> None:
    z, _ = _blobs()
    with pytest.raises(ValueError):
        kmeans(z[:4], 5)
    with pytest.raises(ValueError):
        kmeans(z, 0)
    res = kmeans(z[:6], 6)
    assert sorted(res.labels.tolist()) == list(range(6)) and res.inertia == pytest.approx(0.0)
    one_d = kmeans(np.r_[np.zeros(10), np.full(10, 5.0)], 2)
    assert _same_partition(one_d.labels, np.repeat([0, 1], 10))


# ------------------------------------------------------------------------------------ volumes
def test_write_cluster_volumes(tmp_path) -> None:
    z, _ = _blobs()
    res = kmeans(z, 3, seed=0)
    centers = z[res.center_indices]
    seen = []

    def volume_fn(row: torch.Tensor) -> torch.Tensor:
        seen.append(row)
        return torch.full((8, 8, 8), float(row.sum()))

    paths = write_cluster_volumes(centers, volume_fn, tmp_path / "kmeans3", voxel_size=2.5)
    assert [p.name for p in paths] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    assert all(isinstance(r, torch.Tensor) and r.shape == (3,) for r in seen)
    for p in paths:
        header = read_mrc_header(p)
        assert header.voxel_size == pytest.approx(2.5) and header.shape == (8, 8, 8)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "kmeans3" / "centers.txt"), centers, rtol=1e-5)
    with pytest.raises(ValueError):
        write_cluster_volumes(centers, lambda r: np.zeros((4, 4)), tmp_path / "bad", 1.0)


# ------------------------------------------------------------------------------------ figures
@pytest.mark.parametrize(("zdim", "with_labels"), list(itertools.product([1, 8], [False, True])))
def test_plot_latent_pca(tmp_path, zdim: int, with_labels: bool) -> None:
    z_tr, l_tr = _latents(zdim, 300, 0)
    z_te, l_te = _latents(zdim, 120, 1)
    kw = {"labels_train": l_tr, "labels_test": l_te} if with_labels else {}
    out = plot_latent_pca(
        z_tr,
        torch.from_numpy(z_te),
        tmp_path / "sub" / "pca.png",
        **kw,
        method_name="cryonoo",
        title="IgG-1D",
    )
    assert out == tmp_path / "sub" / "pca.png"
    _assert_png(out)


def test_plot_latent_pca_discrete_labels_and_errors(tmp_path) -> None:
    z_tr, l_tr = _latents(4, 200, 0)
    z_te, l_te = _latents(4, 50, 1)
    _assert_png(
        plot_latent_pca(z_tr, z_te, tmp_path / "d.png", labels_train=l_tr % 5, labels_test=l_te % 5)
    )
    _assert_png(plot_latent_pca(z_tr, z_te, tmp_path / "s.png", labels_test=(l_te % 3).astype(str)))
    with pytest.raises(ValueError):
        plot_latent_pca(z_tr, z_te, tmp_path / "x.png", labels_train=l_tr[:-1])
    with pytest.raises(ValueError):
        plot_latent_pca(z_tr, z_te[:, :3], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_latent_umap(tmp_path, monkeypatch) -> None:
    z_tr, l_tr = _latents(8, 100, 0)
    z_te, l_te = _latents(8, 40, 1)
    monkeypatch.setitem(sys.modules, "umap", None)  # import fails
    assert plot_latent_umap(z_tr, z_te, tmp_path / "u.png") is None
    assert not (tmp_path / "u.png").exists()

    class FakeUMAP:  # projection stand-in with umap-learn's fit/transform interface
        def __init__(self, **kwargs) -> None:
            self.pca = None

        def fit_transform(self, x):
            self.pca = pca_fit(x, 2)
            return self.pca.transform(x)

        def transform(self, x):
            return self.pca.transform(x)

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    out = plot_latent_umap(z_tr, z_te, tmp_path / "u.png", labels_train=l_tr, labels_test=l_te)
    _assert_png(out)
    assert plot_latent_umap(z_tr[:, :1], z_te[:, :1], tmp_path / "u1.png") is None


def test_plot_fsc_curves(tmp_path) -> None:
    freq = np.arange(32) / 64
    rng = np.random.default_rng(0)
    a = np.exp(-((freq / 0.2) ** 2)) + 0.05 * rng.standard_normal((20, 32))
    b = FSCCurve(torch.from_numpy(freq), torch.from_numpy(np.exp(-((freq / 0.1) ** 2))[None]))
    _assert_png(plot_fsc_curves({"cryonoo": (freq, a), "cryodrgn": b}, tmp_path / "f.png"))
    _assert_png(plot_fsc_curves({"one": (freq, a[0])}, tmp_path / "g.png", apix=2.0, title="t"))
    with pytest.raises(ValueError):
        plot_fsc_curves({"bad": (freq[:-1], a)}, tmp_path / "h.png")
    with pytest.raises(ValueError):
        plot_fsc_curves({}, tmp_path / "h.png")


def _stats(n: int, ssl_from: int | None) -> list[dict]:
    recs = []
    for e in range(1, n + 1):
        r = {
            "epoch": e,
            "loss": 1 / e,
            "recon": 0.8 / e,
            "kld": 0.1 + 0.01 * e,
            "lr": 1e-4,
            "time_s": 1.0,
            "images_per_s": None,
            "ssl_active": ssl_from is not None and e >= ssl_from,
        }
        if ssl_from is not None:
            r["ssl/loss"] = -0.5 - 0.01 * e if e >= ssl_from else None
        recs.append(r)
    return recs


def test_plot_training_curves(tmp_path) -> None:
    jsonl = tmp_path / "stats.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in _stats(12, 5)))
    _assert_png(plot_training_curves(jsonl, tmp_path / "a.png"))
    _assert_png(plot_training_curves(_stats(6, None), tmp_path / "b.png"))
    runs = {"cryonoo": str(jsonl), "cryodrgn": _stats(12, None)}
    _assert_png(plot_training_curves(runs, tmp_path / "c.png", title="runs"))
    with pytest.raises(ValueError):
        plot_training_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "d.png")


def test_plot_metric_bars(tmp_path) -> None:
    summary = {
        "cryonoo": {"fsc_auc_train": 0.41, "fsc_auc_test": 0.39, "recovery_unseen": 0.8},
        "cryodrgn": {"fsc_auc_train": 0.42, "fsc_auc_test": 0.25},
    }
    _assert_png(plot_metric_bars(summary, ["fsc_auc_train", "fsc_auc_test"], tmp_path / "m.png"))
    _assert_png(plot_metric_bars(summary, None, tmp_path / "n.png", title="t", ylabel="AUC"))
    with pytest.raises(ValueError):
        plot_metric_bars({}, None, tmp_path / "o.png")


def test_umap_leaves_torch_threads_as_they_were(monkeypatch) -> None:
    """numba's OpenMP layer (under umap-learn) raises the process's thread count to every core;
    the embedding puts torch's back (a one-thread benchmark worker stays one thread). A stand-in
    ``umap`` module does what numba does."""

    class RaisesThreads:
        def __init__(self, **_kw) -> None:
            pass

        def fit_transform(self, x):
            torch.set_num_threads(2)
            return np.zeros((len(x), 2))

        def transform(self, x):
            return np.ones((len(x), 2))

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=RaisesThreads))
    from cryonoo.eval.embedding import umap_fit_transform

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb_fit, emb_rest = umap_fit_transform(np.zeros((5, 3)), np.zeros((4, 3)))
        assert emb_fit.shape == (5, 2) and emb_rest.shape == (4, 2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
