"""The latent viewer: view data, payload encoding, page building, selections, sections."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch

from cryonoo.analysis.sections import central_sections, preview_volume, sections_png
from cryonoo.analysis.view_data import read_analysis, view_data
from cryonoo.analysis.viewer import (
    build_page,
    centroid_images,
    decode_payload,
    encode_payload,
    parse_selection,
    static_page,
)
from cryonoo.io.mrc import write_mrc
from cryonoo.models.vae import HetVAE
from cryonoo.physics.fft import ht3_center, iht3_center


def _z(n: int, zdim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, zdim))


def _payload_of(page: str) -> bytes:
    m = re.search(r'<script id="cryonoo-payload"[^>]*>([^<]*)</script>', page)
    assert m is not None
    return base64.b64decode(m.group(1).strip())


def _analysis_dir(root, n: int, k: int = 5, seed: int = 0, maps: bool = False):
    rng = np.random.default_rng(seed)
    np.save(root / "pca_scores.npy", rng.normal(size=(n, 3)).astype(np.float32))
    np.save(root / "umap.npy", rng.normal(size=(n, 2)).astype(np.float32))
    (root / "analysis.json").write_text(
        json.dumps({"pca": {"explained_variance_ratio": [0.5, 0.25, 0.25]}})
    )
    sub = root / f"kmeans{k}"
    sub.mkdir()
    np.save(sub / "labels.npy", rng.integers(0, k, n))
    np.savetxt(sub / "centers_ind.txt", np.arange(k), fmt="%d")
    if maps:
        for i in range(k):
            write_mrc(sub / f"vol_{i:03d}.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32))
    return root


# --------------------------------------------------------------------------- view data
def test_view_data_without_analysis_has_pca_kmeans_and_values():
    z = _z(300)
    values = np.linspace(0.0, 1.0, 300)
    data = view_data(z, color_by=values, color_by_name="defocus", seed=1)
    assert [p.name for p in data.planes] == ["pca"]
    assert data.planes[0].xy.dtype == np.float32 and data.planes[0].xy.shape == (300, 2)
    assert data.planes[0].axes[0].startswith("PC1 (")
    names = [c.name for c in data.colorings]
    assert names == ["kmeans20", "defocus"]
    km, df = data.colorings
    assert km.codes.dtype == np.uint8 and km.codes.max() < 20 and data.clusters.k == 20
    assert np.array_equal(km.codes, data.clusters.labels)
    assert df.vmin == pytest.approx(0.01) and df.vmax == pytest.approx(0.99)
    assert df.codes[0] == 0 and df.codes[-1] == 255 and np.all(np.diff(df.codes.astype(int)) >= 0)


def test_view_data_few_particles_and_zdim_one():
    data = view_data(_z(6, zdim=1))
    assert data.clusters.k == 6
    assert data.planes[0].axes[1] == "random jitter (zdim = 1)"
    with pytest.raises(ValueError, match="k = 9 is out of range"):
        view_data(_z(6), k=9)


def test_view_data_reads_an_analysis_folder(tmp_path):
    n = 40
    root = _analysis_dir(tmp_path, n, k=5)
    data = view_data(_z(n), analysis=root)
    assert [p.name for p in data.planes] == ["pca", "umap"]
    scores = np.load(root / "pca_scores.npy")
    assert np.array_equal(data.planes[0].xy, scores[:, :2])
    assert data.planes[0].axes == ("PC1 (50.0%)", "PC2 (25.0%)")
    assert data.clusters.k == 5 and data.clusters.maps is None
    assert np.array_equal(data.clusters.labels, np.load(root / "kmeans5" / "labels.npy"))
    other = view_data(_z(n), analysis=root, k=3)
    assert [c.name for c in other.colorings] == ["kmeans3", "kmeans5"]


def test_analysis_with_other_particles_is_an_error(tmp_path):
    root = _analysis_dir(tmp_path, 40)
    with pytest.raises(ValueError, match="there are 41 latents"):
        read_analysis(root, 41)
    with pytest.raises(ValueError, match="not a `cryonoo analyze` folder"):
        read_analysis(tmp_path / "kmeans5", 40)


# --------------------------------------------------------------------------- payload
@pytest.mark.parametrize("n", [1001, 4096])
def test_payload_round_trip_and_size(n):
    data = view_data(_z(n), color_by=np.arange(n, dtype=float), k=3)
    buf = encode_payload(data, {"mode": "none"})
    header, arrays = decode_payload(buf)
    assert header["n"] == n and header["zdim"] == 8 and header["clusters"]["k"] == 3
    assert np.array_equal(arrays["pca"], data.planes[0].xy)
    for c in data.colorings:
        assert arrays[c.name].dtype == c.codes.dtype
        assert np.array_equal(arrays[c.name], c.codes)
    assert all(a["offset"] % 4 == 0 for a in header["arrays"].values())
    (size,) = np.frombuffer(buf[4:8], "<u4")
    padded = -(-n // 4) * 4
    assert len(buf) == 8 + int(size) + 8 * n + 2 * padded


def test_payload_uses_uint16_above_256_clusters():
    data = view_data(_z(600, zdim=2), k=300)
    _, arrays = decode_payload(encode_payload(data))
    assert arrays["kmeans300"].dtype == np.uint16
    assert np.array_equal(arrays["kmeans300"], data.clusters.labels)


def test_decode_rejects_other_bytes():
    with pytest.raises(ValueError, match="not a viewer payload"):
        decode_payload(b"\x89PNG\r\n\x1a\n")


# --------------------------------------------------------------------------- page
def test_static_page_embeds_the_payload_and_fetches_nothing():
    data = view_data(_z(500), k=4)
    page = static_page(data)
    header, arrays = decode_payload(_payload_of(page))
    assert header["n"] == 500 and header["sections"] == {"mode": "none"}
    assert np.array_equal(arrays["pca"], data.planes[0].xy)
    assert not re.search(r"https?://", page)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert not re.search(r"<link[^>]*\bhref\s*=", page)
    assert "@PAYLOAD@" not in page and "@VIEWER_JS@" not in page
    assert "window.cryonooView" in page


def test_served_page_fetches_points_from_its_own_server():
    page = build_page()
    assert _payload_of(page) == b""
    assert 'fetch("points.bin")' in page and not re.search(r"https?://", page)


def test_static_page_embeds_centroid_maps(tmp_path):
    n, k = 30, 4
    data = view_data(_z(n), analysis=_analysis_dir(tmp_path, n, k=k, maps=True))
    header, _ = decode_payload(_payload_of(static_page(data)))
    sec = header["sections"]
    assert sec["mode"] == "centroids" and sec["k"] == k and len(sec["images"]) == k
    png = base64.b64decode(sec["images"][0].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")


def test_centroid_images_decode_at_the_nearest_particles():
    data = view_data(_z(50, zdim=2), k=3)
    seen = []

    def fn(z):
        seen.append(np.asarray(z))
        return np.ones((4, 4, 4)) * len(seen)

    images = centroid_images(data, fn)
    assert len(images) == 3 and all(u.startswith("data:image/png;base64,") for u in images)
    assert np.allclose(seen, data.z[data.clusters.center_indices])
    assert centroid_images(data) is None


# --------------------------------------------------------------------------- selections
def test_parse_selection_sorts():
    sel = parse_selection(b'{"indices": [7, 0, 3]}', 8)
    assert sel.dtype == np.int64 and sel.tolist() == [0, 3, 7]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2", "not JSON"),
        (b"\xff", "not JSON"),
        (b'{"ind": [1]}', "expected a JSON object"),
        (b'{"indices": 3}', "expected a JSON object"),
        (b'{"indices": [1, 2.0]}', "must be integers"),
        (b'{"indices": [true]}', "must be integers"),
        (b'{"indices": ["1"]}', "must be integers"),
        (b'{"indices": [-1]}', "out of range"),
        (b'{"indices": [8]}', "index 8 out of range for 8 particles"),
        (b'{"indices": [1e400]}', "must be integers"),
        (b'{"indices": [100000000000000000000000]}', "out of range"),
        (b'{"indices": []}', "nothing selected"),
        (b'{"indices": [2, 2]}', "appears 2 times"),
    ],
)
def test_parse_selection_rejects_bad_input(body, message):
    with pytest.raises(ValueError, match=message):
        parse_selection(body, 8)


# --------------------------------------------------------------------------- sections
def test_central_sections_and_png():
    vol = np.arange(6**3, dtype=np.float32).reshape(6, 6, 6)
    img = central_sections(vol)
    assert img.shape == (6, 18)
    assert np.array_equal(img[:, :6], vol[3]) and np.array_equal(img[:, 12:], vol[:, :, 3])
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(sections_png(vol)), format="png")
    assert pixels.shape[:2] == (6, 18)
    with pytest.raises(ValueError, match=r"\(n, n, n\)"):
        central_sections(np.zeros((4, 4, 5)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HetVAE(17, zdim=2, enc_dim=8, dec_dim=16, enc_layers=1, dec_layers=1).eval()


def test_preview_volume_is_the_models_map_at_full_box(model):
    z = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        full = model.volume(z, norm_std=2.0)
    assert torch.equal(preview_volume(model, z.numpy(), 2.0), full)


def test_preview_volume_is_a_fourier_crop(model):
    z = np.array([0.3, -0.2], dtype=np.float32)
    with torch.no_grad():
        full = model.volume(torch.from_numpy(z)).double()
    small = preview_volume(model, z, max_box=8).double()
    assert small.shape == (8, 8, 8)
    spec = ht3_center(full)[4:12, 4:12, 4:12]
    axis = (torch.arange(8, dtype=torch.float64) - 4) / 8
    kz, ky, kx = torch.meshgrid(axis, axis, axis, indexing="ij")
    spec = spec * ((kx**2 + ky**2 + kz**2) <= 0.25)
    expected = iht3_center(spec)
    assert torch.allclose(small, expected, atol=1e-4 * float(expected.abs().max()))
