"""The latent viewer's page: a self-contained HTML file with a WebGL scatter of the particles.

Payload (``points.bin``, and base64 inside a static page)::

    b"CRYV" | uint32 LE header length h | header: h bytes of UTF-8 JSON | arrays

Every array starts at a multiple of 4 bytes from the start; the header's ``arrays`` maps a name
to its ``offset`` (bytes), ``dtype`` (``float32``, ``uint8``, ``uint16``) and ``shape``. Planes
are ``(N, 2)`` float32 coordinates (x, y interleaved), colourings ``(N,)`` codes (see
:mod:`cryonoo.analysis.view_data`). The header also holds the planes' and colourings' names, the
k-means used for maps (``clusters``) and ``sections``: how a click finds a map — ``"decoded"``
(served: the particle's own latent through the run's decoder), ``"centroids"`` (the map of the
particle's k-means cluster: ``images`` as ``data:`` URIs in a static page, else served) or
``"none"``.

The page (``static/viewer.html`` with ``static/viewer.js`` inlined) loads nothing from the
network: a static page decodes its embedded payload, a served page fetches ``points.bin`` from
the server that sent it. Selections are 0-based particle indices; a served page POSTs them as
JSON ``{"indices": [...]}`` to ``select`` (:func:`parse_selection`), a static page downloads them
as a ``.txt`` index file for ``cryonoo select --index``.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

from cryonoo.analysis.sections import PREVIEW_BOX, png_data_uri, preview_volume, sections_png
from cryonoo.analysis.selection import subset_indices
from cryonoo.analysis.view_data import ViewData
from cryonoo.io.mrc import read_mrc

__all__ = [
    "MAGIC",
    "build_page",
    "centroid_images",
    "decode_payload",
    "encode_payload",
    "model_volume_fn",
    "parse_selection",
    "static_page",
]

MAGIC = b"CRYV"
_DTYPES = {"float32": np.float32, "uint8": np.uint8, "uint16": np.uint16}
_JS_MARK = "/*@VIEWER_JS@*/"
_DATA_MARK = "@PAYLOAD@"


def _header(data: ViewData, sections: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The payload header (without ``arrays``) and the arrays, in payload order."""
    arrays: list[np.ndarray] = []
    planes, colorings = [], []
    for p in data.planes:
        planes.append({"name": p.name, "label": p.label, "axes": list(p.axes), "array": p.name})
        arrays.append(p.xy)
    for c in data.colorings:
        colorings.append(
            {"name": c.name, "label": c.label, "kind": c.kind, "array": c.name,
             "count": c.count, "vmin": c.vmin, "vmax": c.vmax}
        )  # fmt: skip
        arrays.append(c.codes)
    header = {
        "version": 1,
        "n": data.n,
        "zdim": int(data.z.shape[1]),
        "planes": planes,
        "colorings": colorings,
        "clusters": {"k": data.clusters.k, "array": f"kmeans{data.clusters.k}"},
        "sections": sections,
        "source": {k: str(v) for k, v in data.source.items() if v is not None},
    }
    return header, arrays


def _pack(header: dict[str, Any], named: list[tuple[str, np.ndarray]]) -> bytes:
    """Lay out the header and arrays (4-byte aligned) as described in the module docstring."""
    table, offset = {}, 0
    for name, arr in named:
        table[name] = {"offset": offset, "dtype": arr.dtype.name, "shape": list(arr.shape)}
        offset += -(-arr.nbytes // 4) * 4
    # the offsets are relative to the arrays' start; shift by the header size, which depends on
    # the offsets' digits: iterate to a fixed point (at most a few rounds)
    base = 0
    for _ in range(8):
        shifted = {k: {**v, "offset": v["offset"] + base} for k, v in table.items()}
        text = json.dumps({**header, "arrays": shifted}, separators=(",", ":")).encode()
        size = 8 + -(-len(text) // 4) * 4
        if size <= base:
            break
        base = size
    text = text.ljust(base - 8, b" ")
    parts = [MAGIC, struct.pack("<I", len(text)), text]
    for _, arr in named:
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        parts.append(raw + b"\0" * (-len(raw) % 4))
    return b"".join(parts)


def encode_payload(data: ViewData, sections: dict[str, Any] | None = None) -> bytes:
    """The binary payload of ``data`` (module docstring); ``sections`` goes into the header."""
    header, arrays = _header(data, sections or {"mode": "none"})
    names = [p.name for p in data.planes] + [c.name for c in data.colorings]
    if len(set(names)) != len(names):
        raise ValueError(f"plane and colouring names must be distinct, got {names}")
    return _pack(header, list(zip(names, arrays, strict=True)))


def decode_payload(buf: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a payload made by :func:`encode_payload` (what the page reads)."""
    if len(buf) < 8 or buf[:4] != MAGIC:
        raise ValueError("not a viewer payload (no CRYV magic)")
    (size,) = struct.unpack("<I", buf[4:8])
    header = json.loads(buf[8 : 8 + size].decode("utf-8"))
    arrays = {}
    for name, a in header["arrays"].items():
        dtype = np.dtype(_DTYPES[a["dtype"]]).newbyteorder("<")
        count = int(np.prod(a["shape"]))
        arrays[name] = np.frombuffer(buf, dtype, count, a["offset"]).reshape(a["shape"])
    return header, arrays


def _asset(name: str) -> str:
    return resources.files("cryonoo.analysis").joinpath("static", name).read_text("utf-8")


def build_page(payload: bytes | None = None) -> str:
    """The viewer's HTML: with ``payload`` embedded (static page), else fetching ``points.bin``."""
    js = _asset("viewer.js")
    if "</script" in js.lower():
        raise RuntimeError("viewer.js must not contain a closing script tag")
    page = _asset("viewer.html")
    data = "" if payload is None else base64.b64encode(payload).decode("ascii")
    return page.replace(_DATA_MARK, data).replace(_JS_MARK, js)


def centroid_images(
    data: ViewData,
    volume_fn: Callable[[np.ndarray], Any] | None = None,
    on_map: Callable[[], None] | None = None,
) -> list[str] | None:
    """PNG ``data:`` URIs of the central sections of each k-means centroid map, or None.

    The maps are the analysis' ``kmeans{k}/vol_NNN.mrc`` when it has them, else ``volume_fn``
    (a latent ``(d,)`` → map ``(n, n, n)``) at the on-data particle nearest each centroid;
    ``on_map()`` is called after each map.
    """
    cl = data.clusters
    if cl.maps is not None:
        maps: Any = (read_mrc(p, mmap=False)[0] for p in cl.maps)
    elif volume_fn is not None:
        maps = (volume_fn(data.z[i]) for i in cl.center_indices)
    else:
        return None
    images = []
    for vol in maps:
        images.append(png_data_uri(sections_png(vol)))
        if on_map is not None:
            on_map()
    return images


def static_page(
    data: ViewData,
    volume_fn: Callable[[np.ndarray], Any] | None = None,
    on_map: Callable[[], None] | None = None,
) -> str:
    """The self-contained page of ``data``, with the centroid maps' sections embedded when
    :func:`centroid_images` finds maps (else the page says it has none)."""
    images = centroid_images(data, volume_fn, on_map)
    sections: dict[str, Any] = {"mode": "none"}
    if images is not None:
        sections = {"mode": "centroids", "k": data.clusters.k, "images": images}
    return build_page(encode_payload(data, sections))


def model_volume_fn(
    model: Any, norm_std: float, max_box: int = PREVIEW_BOX
) -> Callable[[np.ndarray], Any]:
    """A latent ``(d,)`` → map ``(b, b, b)``, ``b ≤ max_box``
    (:func:`~cryonoo.analysis.sections.preview_volume`)."""
    return lambda z: preview_volume(model, z, norm_std, max_box).numpy()


def parse_selection(body: bytes, n: int) -> np.ndarray:
    """Sorted distinct 0-based ``(k,)`` int64 indices of a JSON ``{"indices": [...]}`` body.

    :class:`ValueError` names the problem: not JSON, no ``indices`` list, a value that is not
    an integer (``1.0`` and ``true`` are not), an empty list, an index outside ``0 … n−1``, a
    repeated index.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the request body is not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("indices"), list):
        raise ValueError('expected a JSON object {"indices": [0-based particle indices]}')
    values = obj["indices"]
    bad = next((v for v in values if type(v) is not int), None)
    if bad is not None:
        raise ValueError(f"indices must be integers (0-based particle indices), got {bad!r}")
    if any(v < 0 or v >= n for v in values):
        bad = next(v for v in values if v < 0 or v >= n)
        raise ValueError(f"index {bad} out of range for {n} particles (0-based, 0 … {n - 1})")
    arr = np.asarray(values, dtype=np.int64) if values else np.zeros(0, np.int64)
    return np.sort(subset_indices(arr, n, "selection"))
