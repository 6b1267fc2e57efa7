"""`cryonoo view`: the local server (page, points, sections, /select) and the command line."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.analysis.sections import preview_volume, sections_png
from cryonoo.analysis.view_data import view_data
from cryonoo.analysis.view_server import build_app, serve_in_thread
from cryonoo.analysis.viewer import decode_payload, model_volume_fn
from cryonoo.cli import app as cli
from cryonoo.io.cryodrgn import load_indices, save_z_pkl
from cryonoo.io.cryosparc import read_cs
from cryonoo.io.star import read_star_raw
from cryonoo.train.run import load_run

runner = CliRunner()
CS_SAMPLE = "cryosparc_P12_J24_001_particles.cs"
TINY = ["--enc-dim", "8", "--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16"]


def invoke(*args):
    return runner.invoke(cli, [str(a) for a in args])


def _z(n: int, zdim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, zdim)).astype(np.float32)


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _embedded(page: str) -> tuple[dict, dict]:
    """The payload of a static page."""
    m = re.search(r'<script id="cryonoo-payload"[^>]*>([^<]*)</script>', page)
    assert m is not None
    return decode_payload(base64.b64decode(m.group(1)))


@pytest.fixture
def serve():
    servers = []

    def start(view_app):
        server, url = serve_in_thread(view_app, port=0)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.samples
def test_page_points_and_no_maps(samples, tmp_path, serve):
    z = _z(5)
    data = view_data(z, k=2)
    url = serve(build_app(data, tmp_path / "sel", star=read_star_raw(samples / "relion31.star")))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
    status, page, kind = _get(url)
    assert status == 200 and kind.startswith("text/html")
    assert b'fetch("points.bin")' in page and not re.search(rb"https?://", page)
    status, points, _ = _get(url + "points.bin")
    header, arrays = decode_payload(points)
    assert status == 200 and header["n"] == 5 and header["sections"]["mode"] == "none"
    assert np.array_equal(arrays["pca"], data.planes[0].xy)
    assert _get(url + "sections?i=0")[0] == 404
    assert _get(url + "sections?i=5")[0] == 400
    assert _get(url + "sections?i=x")[0] == 400
    assert _get(url + "nothing")[0] == 404


@pytest.mark.samples
def test_select_writes_what_cryonoo_select_writes(samples, tmp_path, serve):
    src = samples / "relion31.star"
    z = _z(5)
    save_z_pkl(tmp_path / "z.pkl", z)
    np.save(tmp_path / "ind.npy", np.array([3, 1]))
    ref = tmp_path / "ref" / "sel"
    result = invoke(
        "select", tmp_path / "z.pkl", "-o", ref, "--index", tmp_path / "ind.npy", "--star", src
    )
    assert result.exit_code == 0, result.output
    stem = tmp_path / "view" / "sel"
    url = serve(build_app(view_data(z, k=2), stem, star=read_star_raw(src)))
    status, reply = _post(url + "select", b'{"indices": [3, 1]}')
    assert status == 200, reply
    assert reply == {"count": 2, "paths": [f"{stem}.ind.pkl", f"{stem}.star"]}
    assert (tmp_path / "view" / "sel.star").read_bytes() == (
        tmp_path / "ref" / "sel.star"
    ).read_bytes()
    assert load_indices(f"{stem}.ind.pkl").tolist() == load_indices(f"{ref}.ind.pkl").tolist()
    assert sorted(p.name for p in stem.parent.iterdir()) == ["sel.ind.pkl", "sel.star"]


@pytest.mark.samples
def test_select_writes_a_cs_subset(samples, tmp_path, serve):
    records = read_cs(samples / CS_SAMPLE)
    n = len(records)
    url = serve(build_app(view_data(_z(n), k=2), tmp_path / "s", records=records))
    status, reply = _post(url + "select", json.dumps({"indices": [n - 1, 0]}).encode())
    assert status == 200 and reply["count"] == 2
    assert read_cs(tmp_path / "s.cs").tobytes() == records[[0, n - 1]].tobytes()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"indices": [0.5]}', "must be integers"),
        (b'{"indices": [5]}', "index 5 out of range for 5 particles"),
        (b'{"indices": [-2]}', "out of range"),
        (b'{"indices": []}', "nothing selected"),
        (b'{"indices": [1, 1]}', "appears 2 times"),
    ],
)
def test_bad_selections_are_400_and_write_nothing(tmp_path, serve, body, message):
    out = tmp_path / "out"
    url = serve(build_app(view_data(_z(5), k=2), out / "sel"))
    status, reply = _post(url + "select", body)
    assert status == 400 and message in reply["error"]
    assert not out.exists()


@pytest.mark.samples
def test_row_count_mismatch_is_400_and_writes_nothing(samples, tmp_path, serve):
    out = tmp_path / "out"
    star = read_star_raw(samples / "relion31.star")
    url = serve(build_app(view_data(_z(4), k=2), out / "sel", star=star))
    status, reply = _post(url + "select", b'{"indices": [0, 1]}')
    assert status == 400 and "5 particles in the file but 4 latents" in reply["error"]
    assert not out.exists()


# --------------------------------------------------------------------------- with a run
@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    result = invoke("train", data.root, "-o", out, "--recipe", "cryodrgn", "-n", 1, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_served_sections_are_decoded_from_the_particle(run, tmp_path, serve):
    trained = load_run(run)
    z = _z(20, zdim=2)
    fn = model_volume_fn(trained.model, trained.norm_std)
    url = serve(build_app(view_data(z, k=3), tmp_path / "sel", volume_fn=fn))
    header, _ = decode_payload(_get(url + "points.bin")[1])
    assert header["sections"]["mode"] == "decoded"
    status, png, kind = _get(url + "sections?i=7")
    assert status == 200 and kind == "image/png"
    assert png == sections_png(preview_volume(trained.model, z[7], trained.norm_std))
    assert png != _get(url + "sections?i=8")[1]


def test_cli_writes_a_static_page_with_centroid_maps(run, tmp_path):
    z = _z(30, zdim=2)
    save_z_pkl(tmp_path / "z.pkl", z)
    page = tmp_path / "page" / "view.html"
    result = invoke("view", run, "--zfile", tmp_path / "z.pkl", "--kmeans", 4, "--write", page)
    assert result.exit_code == 0, result.output
    assert "30 particles, maps of 4 k-means centroids" in " ".join(result.output.split())
    header, _ = _embedded(page.read_text())
    assert header["n"] == 30 and header["sections"]["mode"] == "centroids"
    assert len(header["sections"]["images"]) == 4
    assert header["source"]["zfile"] == str(tmp_path / "z.pkl")


def test_cli_static_page_from_a_latent_file(tmp_path):
    save_z_pkl(tmp_path / "z.pkl", _z(50))
    np.save(tmp_path / "defocus.npy", np.linspace(1e4, 2e4, 50))
    page = tmp_path / "v.html"
    args = ["view", tmp_path / "z.pkl", "--color-by", tmp_path / "defocus.npy", "--write", page]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    header, _ = _embedded(page.read_text())
    assert [c["name"] for c in header["colorings"]] == ["kmeans20", "defocus"]
    assert header["sections"]["mode"] == "none"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--zfile", "z.pkl"], "--zfile goes with a run directory"),
        (["--color-by", "short.npy"], "has 3 values but there are 5 latents"),
        (["--analysis", "."], "not a `cryonoo analyze` folder"),
        (["--kmeans", "9"], "k = 9 is out of range"),
        (["--star", "missing.star"], "missing.star"),
        (["--map-box", "1"], "--map-box must be ≥ 2"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    save_z_pkl(tmp_path / "z.pkl", _z(5))
    np.save(tmp_path / "short.npy", np.zeros(3))
    result = invoke("view", "z.pkl", "--write", "out/v.html", *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


@pytest.mark.samples
def test_cli_star_row_mismatch_exits_2(samples, tmp_path):
    save_z_pkl(tmp_path / "z.pkl", _z(4))
    page = tmp_path / "v.html"
    star = samples / "relion31.star"
    result = invoke("view", tmp_path / "z.pkl", "--star", star, "--write", page)
    assert result.exit_code == 2
    assert "5 particles in the file but 4 latents" in " ".join(result.output.split())
    assert not page.exists()


def test_cli_missing_source_exits_2(tmp_path):
    result = invoke("view", tmp_path / "nothing.pkl", "--write", tmp_path / "v.html")
    assert result.exit_code == 2 and "does not exist" in result.output
