"""`cryonoo view` in a real headless Chromium: drawing, box/lasso selection, saving a .star.

Needs the ``playwright`` package and Debian's Chromium at /usr/bin/chromium (no browser is
downloaded); skipped otherwise.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest

from cryonoo.analysis.selection import select_indices, write_star_subset
from cryonoo.analysis.view_data import view_data
from cryonoo.analysis.view_server import build_app, serve_in_thread
from cryonoo.analysis.viewer import decode_payload, static_page
from cryonoo.io.cryodrgn import load_indices
from cryonoo.io.star import read_star_raw, write_star

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"
)
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
N = 100_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server for N random zdim-8 latents with a matching .star: (url, app, star, xy)."""
    root = tmp_path_factory.mktemp("view")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, 8)).astype(np.float32)
    names = np.char.add(np.char.zfill(np.arange(1, N + 1).astype(str), 6), "@stack.mrcs")
    particles = {"rlnImageName": names, "rlnDefocusU": rng.uniform(1e4, 2e4, N)}
    write_star(root / "particles.star", particles, optics={"rlnImagePixelSize": np.array([1.0])})
    star = read_star_raw(root / "particles.star")
    app = build_app(view_data(z, k=8, seed=0), root / "picked", star=star)
    server, url = serve_in_thread(app, port=0)
    xy = decode_payload(app.points)[1]["pca"].astype(np.float64)
    yield url, app, star, xy
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def _open(browser, url: str):
    """A new tab showing the viewer at ``url`` (loaded, no error) and its page errors."""
    tab = browser.new_page(viewport={"width": 1100, "height": 760}, accept_downloads=True)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(url)
    tab.wait_for_function(
        "window.cryonooView && (window.cryonooView.ready || window.cryonooView.error)",
        timeout=120_000,
    )
    assert tab.evaluate("window.cryonooView.error") is None, errors
    return tab, errors


@pytest.fixture(scope="module")
def page(browser, served):
    tab, errors = _open(browser, served[0])
    yield tab
    assert not errors
    tab.close()


def _embedded_images(html: Path) -> list[str]:
    """The centroid images embedded in a static page."""
    text = html.read_text("utf-8")
    data = re.search(r'<script id="cryonoo-payload"[^>]*>([^<]*)</script>', text).group(1)
    return decode_payload(base64.b64decode(data))[0]["sections"]["images"]


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of the data point (x, y)."""
    box = page.locator("#overlay").bounding_box()
    sx, sy = page.evaluate(f"window.cryonooView.toScreen({x}, {y})")
    return box["x"] + sx, box["y"] + sy


def _drag(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def test_the_canvas_draws_every_point(page):
    from matplotlib.image import imread

    assert page.evaluate("window.cryonooView.n") == N
    assert page.evaluate("window.cryonooView.drawn") == N
    assert page.evaluate("window.cryonooView.renderer") in ("webgl", "2d")
    pixels = imread(io.BytesIO(page.locator("#gl").screenshot()), format="png")
    painted = (pixels[..., :3] < 0.9).any(axis=-1).sum()
    assert painted > 0.05 * pixels.shape[0] * pixels.shape[1]
    assert "selected 0 / 100,000 particles" in page.text_content("#count")


def test_select_box_and_polygon_api_match_the_library(page, served):
    xy = served[3]
    box = [*np.quantile(xy[:, 0], [0.3, 0.7]), *np.quantile(xy[:, 1], [0.2, 0.6])]
    count = page.evaluate(f"window.cryonooView.selectBox({box[0]}, {box[1]}, {box[2]}, {box[3]})")
    expected = select_indices(N, coords=xy, box=box)
    assert count == len(expected)
    assert page.evaluate("window.cryonooView.selectedIndices()") == expected.tolist()
    poly = [[-1.5, -1.0], [2.0, -0.5], [0.2, 1.8], [-0.5, 0.3]]
    count = page.evaluate(f"window.cryonooView.selectPolygon({poly})")
    expected = select_indices(N, coords=xy, polygon=poly)
    assert count == len(expected) > 0
    assert page.evaluate("window.cryonooView.selectedIndices()") == expected.tolist()
    assert page.evaluate("window.cryonooView.invert()") == N - len(expected)
    assert page.evaluate("window.cryonooView.clear()") == 0


def test_mouse_box_selection_is_saved_as_the_star_rows(page, served, tmp_path):
    _, app, star, xy = served
    page.check("input[name=mode][value=box]")
    target = [*np.quantile(xy[:, 0], [0.25, 0.6]), *np.quantile(xy[:, 1], [0.4, 0.8])]
    start, end = _screen(page, target[0], target[3]), _screen(page, target[1], target[2])
    _drag(page, [start, ((start[0] + end[0]) / 2, start[1]), end])
    got = page.evaluate("window.cryonooView.lastBox")
    pixel = 1.0 / page.evaluate("window.cryonooView.view().scale")
    assert np.allclose(got, target, atol=1.5 * pixel)
    expected = select_indices(N, coords=xy, box=got)
    assert page.evaluate("window.cryonooView.selectedCount()") == len(expected) > 1000
    page.click("#save")
    page.wait_for_function("window.cryonooView.lastSaved !== undefined", timeout=60_000)
    assert f"saved {len(expected):,} particles" in page.text_content("#status")
    write_star_subset(star, expected, tmp_path / "ref.star", n=N)
    assert Path(f"{app.stem}.star").read_bytes() == (tmp_path / "ref.star").read_bytes()
    assert load_indices(f"{app.stem}.ind.pkl").tolist() == expected.tolist()
    page.click("#invert")
    assert page.evaluate("window.cryonooView.selectedCount()") == N - len(expected)


def test_mouse_lasso_wheel_zoom_and_click(page, served):
    xy = served[3]
    page.check("input[name=mode][value=lasso]")
    corners = [(-1.0, -1.0), (1.5, -0.8), (1.2, 1.4), (-0.2, 0.4), (-1.3, 1.0)]
    _drag(page, [_screen(page, x, y) for x, y in [*corners, corners[0]]])
    poly = page.evaluate("window.cryonooView.lastPolygon")
    assert len(poly) >= len(corners)
    expected = select_indices(N, coords=xy, polygon=poly)
    assert page.evaluate("window.cryonooView.selectedIndices()") == expected.tolist()
    assert len(expected) > 1000
    before = page.evaluate("window.cryonooView.view().scale")
    page.mouse.move(*_screen(page, 0.0, 0.0))
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"window.cryonooView.view().scale > {before}")
    page.evaluate("window.cryonooView.setPlane('pca')")  # back to the full view
    sx, sy = (round(v) for v in _screen(page, *xy[12345]))
    page.mouse.click(sx, sy)
    # the particle nearest the click on screen, from the page's view transform
    rect, v = page.locator("#overlay").bounding_box(), page.evaluate("window.cryonooView.view()")
    px = rect["width"] / 2 + (xy[:, 0] - v["cx"]) * v["scale"] - (sx - rect["x"])
    py = rect["height"] / 2 - (xy[:, 1] - v["cy"]) * v["scale"] - (sy - rect["y"])
    nearest = int(np.argmin(px**2 + py**2))
    assert f"particle {nearest} (0-based)" in page.text_content("#sections-caption")


def test_static_page_downloads_the_selection_and_shows_centroid_maps(browser, tmp_path):
    rng = np.random.default_rng(1)
    data = view_data(rng.normal(size=(2000, 4)), k=3, seed=0)
    html = tmp_path / "view.html"
    html.write_text(static_page(data, lambda z: rng.normal(size=(12, 12, 12))), "utf-8")
    tab, errors = _open(browser, html.as_uri())
    assert tab.evaluate("window.cryonooView.served") is False
    xy = data.planes[0].xy.astype(np.float64)
    count = tab.evaluate("window.cryonooView.selectBox(-1, 0.5, -0.5, 1)")
    expected = select_indices(len(xy), coords=xy, box=(-1, 0.5, -0.5, 1))
    assert count == len(expected)
    with tab.expect_download() as info:
        tab.click("#save")
    saved = tmp_path / "selection.txt"
    info.value.save_as(saved)
    assert load_indices(saved).tolist() == expected.tolist()
    tab.evaluate("window.cryonooView.pick(7)")
    src = tab.get_attribute("#sections-img", "src")
    assert src == _embedded_images(html)[int(data.clusters.labels[7])]
    tab.wait_for_function("document.getElementById('sections-img').naturalWidth === 36")
    assert "precomputed map of its k-means cluster" in tab.text_content("#sections-mode")
    assert not errors
    tab.close()
