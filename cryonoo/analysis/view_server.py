"""A local HTTP server for the latent viewer (``cryonoo view`` without ``--write``).

Routes (bound to ``127.0.0.1`` only)::

    GET  /              the viewer page (fetches points.bin)
    GET  /points.bin    the payload (cryonoo.analysis.viewer)
    GET  /sections?i=N  PNG: central sections of particle N's map (0-based), 404 without maps
    POST /select        JSON {"indices": [...]} → writes STEM.ind.pkl [STEM.star] [STEM.cs]

``/select`` writes what ``cryonoo select`` writes for the same particles, through
:func:`~cryonoo.analysis.selection.write_selection` (indices sorted, every input checked before
the first file is written, each file atomic), and answers ``{"count": k, "paths": [...]}``.
Bad input (not JSON, a non-integer, an out-of-range or repeated index, nothing selected, a
``.star``/``.cs`` whose row count differs from the latents') is answered with HTTP 400 and
``{"error": message}``, and nothing is written.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from cryonoo.analysis.sections import sections_png
from cryonoo.analysis.selection import write_selection
from cryonoo.analysis.view_data import ViewData
from cryonoo.analysis.viewer import build_page, centroid_images, encode_payload, parse_selection
from cryonoo.io.star import StarFile

__all__ = ["MAX_BODY", "ViewApp", "build_app", "make_server", "serve_in_thread"]

MAX_BODY = 256 << 20
"""Largest accepted POST body (bytes): a selection of tens of millions of indices."""
_CACHE = 256  # section images kept (served mode)


@dataclass(eq=False)
class ViewApp:
    """What the server serves for ``n`` particles.

    ``page``: the HTML (:func:`~cryonoo.analysis.viewer.build_page` without payload);
    ``points``: the payload; ``sections``: particle index → PNG bytes (None: no maps);
    ``stem``, ``star``, ``records``: where and what ``/select`` writes.
    """

    page: str
    points: bytes
    n: int
    stem: Path
    star: StarFile | None = None
    records: np.ndarray | None = None
    sections: Callable[[int], bytes] | None = None
    _decode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cache: OrderedDict[int, bytes] = field(default_factory=OrderedDict, repr=False)

    def section_png(self, i: int) -> bytes:
        """PNG of particle ``i`` (cached; one decode at a time)."""
        assert self.sections is not None
        with self._decode_lock:
            if i not in self._cache:
                self._cache[i] = self.sections(i)
                if len(self._cache) > _CACHE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(i)
            return self._cache[i]

    def select(self, body: bytes) -> dict[str, Any]:
        """Write the selection of a POST body; ValueError names a bad input."""
        sel = parse_selection(body, self.n)
        with self._write_lock:
            paths = write_selection(self.stem, sel, self.n, star=self.star, records=self.records)
        return {"count": int(sel.size), "paths": [str(p) for p in paths]}


def _centroid_sections(data: ViewData) -> Callable[[int], bytes] | None:
    """Particle index → PNG of its k-means cluster's map (the analysis' maps), or None."""
    if data.clusters.maps is None:
        return None
    uris = centroid_images(data) or []
    pngs = [base64.b64decode(u.split(",", 1)[1]) for u in uris]
    labels = data.clusters.labels
    return lambda i: pngs[int(labels[i])]


def build_app(
    data: ViewData,
    stem: str | os.PathLike[str],
    *,
    volume_fn: Callable[[np.ndarray], Any] | None = None,
    star: StarFile | None = None,
    records: np.ndarray | None = None,
) -> ViewApp:
    """The served viewer of ``data``; ``/select`` writes ``stem``'s files.

    Maps: ``volume_fn`` (a latent ``(d,)`` → map ``(n, n, n)``, e.g.
    :func:`~cryonoo.analysis.viewer.model_volume_fn`) decodes each clicked particle's own
    latent; without it, the analysis' k-means centroid maps are shown, else none.
    """
    sections: Callable[[int], bytes] | None
    if volume_fn is not None:
        mode = "decoded"

        def sections(i: int) -> bytes:
            return sections_png(volume_fn(data.z[i]))

    else:
        sections = _centroid_sections(data)
        mode = "none" if sections is None else "centroids"
    points = encode_payload(data, {"mode": mode, "k": data.clusters.k})
    path = Path(os.fspath(stem))
    return ViewApp(build_page(), points, data.n, path, star, records, sections)


class _Handler(BaseHTTPRequestHandler):
    server: Any  # a ThreadingHTTPServer with an ``app`` attribute
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request."""

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        app: ViewApp = self.server.app
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, app.page.encode("utf-8"), "text/html; charset=utf-8")
        elif url.path == "/points.bin":
            self._send(HTTPStatus.OK, app.points, "application/octet-stream")
        elif url.path == "/sections":
            self._sections(app, parse_qs(url.query).get("i", [""])[0])
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def _sections(self, app: ViewApp, text: str) -> None:
        if not text.isdigit() or int(text) >= app.n:
            msg = f"sections?i=N needs a 0-based particle index 0 … {app.n - 1}, got {text!r}"
            self._json(HTTPStatus.BAD_REQUEST, {"error": msg})
        elif app.sections is None:
            msg = "no maps: view a run directory, or an analysis folder with maps"
            self._json(HTTPStatus.NOT_FOUND, {"error": msg})
        else:
            try:
                png = app.section_png(int(text))
            except (ValueError, RuntimeError) as exc:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot decode: {exc}"})
            else:
                self._send(HTTPStatus.OK, png, "image/png")

    def do_POST(self) -> None:
        app: ViewApp = self.server.app
        if urlsplit(self.path).path != "/select":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
            return
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY:
            self.close_connection = True
            self._json(HTTPStatus.BAD_REQUEST, {"error": "a POST needs a Content-Length"})
            return
        body = self.rfile.read(size)
        try:
            reply = app.select(body)
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except OSError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot write: {exc}"})
        else:
            self._json(HTTPStatus.OK, reply)


def make_server(app: ViewApp, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server for ``app`` on ``host:port`` (``port = 0``: a free port; see ``server_port``)."""
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be in 0 … 65535, got {port}")
    server = ThreadingHTTPServer((host, int(port)), _Handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


def serve_in_thread(app: ViewApp, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start :func:`make_server` in a daemon thread; returns it and its URL (stop: ``shutdown``)."""
    server = make_server(app, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="cryonoo-view").start()
    host, bound = server.server_address[:2]
    return server, f"http://{host}:{bound}/"
