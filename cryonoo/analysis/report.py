"""The analysis record (``analysis.json``) and its one-page HTML report (``index.html``)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonoo.analysis.landscape import Landscape

__all__ = ["analysis_record", "html_report"]


def analysis_record(
    land: Landscape, files: dict[str, Any], seed: int, source: Mapping[str, Any]
) -> dict[str, Any]:
    """The content of ``analysis.json``."""
    pca = land.pca
    return {
        "n_particles": int(land.z.shape[0]),
        "zdim": int(land.z.shape[1]),
        "seed": int(seed),
        "source": dict(source),
        "pca": {
            "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
            "mean": pca.mean.tolist(),
            "components": pca.components.tolist(),
        },
        "umap": {
            "computed": land.umap is not None,
            "note": land.umap_note,
            "fit_points": land.umap_fit_points,
        },
        "kmeans": {
            str(k): {
                "k": k,
                "counts": cl.counts.tolist(),
                "centroid_indices": cl.center_indices.tolist(),
                "fit_points": cl.fit_points,
            }
            for k, cl in land.clusters.items()
        },
        "traversals": {
            name: {
                "axis": tr.axis + 1,
                "percentiles": list(tr.percentiles),
                "scores": tr.scores.tolist(),
            }
            for name, tr in land.traversals.items()
        },
        "files": files,
    }


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:0.5em 0}"
    "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
    "img{max-width:100%;border:1px solid #ddd;margin:4px 0}"
)


def _a(href: str | None, text: str) -> str:
    if not href:
        return html.escape(text)
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _img(figs: Mapping[str, str], key: str) -> str:
    src = figs.get(key)
    if src is None:
        return ""
    alt = html.escape(key, quote=True)
    return f'<p><img src="{html.escape(src, quote=True)}" alt="{alt}" title="{alt}"></p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_pca(rec: Mapping[str, Any]) -> list[str]:
    figs = rec["files"]["figures"]
    ratio = rec["pca"]["explained_variance_ratio"]
    cum = np.cumsum(ratio)
    rows = [
        [f"PC{i + 1}", f"{r:.4f}", f"{c:.4f}"]
        for i, (r, c) in enumerate(zip(ratio, cum, strict=True))
    ]
    parts = ["<h2>PCA</h2>", _table(["axis", "explained variance", "cumulative"], rows)]
    parts += [_img(figs, "pca_explained_variance"), _img(figs, "pca_density")]
    parts += [_img(figs, f"pca_{s}") for s in ("color_by", "labels")]
    parts.append("<h2>UMAP</h2>")
    if rec["umap"]["computed"]:
        parts += [_img(figs, f"umap_{s}") for s in ("density", "color_by", "labels")]
    else:
        parts.append(f"<p>{html.escape(rec['umap']['note'])}</p>")
    return parts


def _html_kmeans(rec: Mapping[str, Any]) -> list[str]:
    figs, series, n = rec["files"]["figures"], rec["files"]["series"], rec["n_particles"]
    parts = []
    for k, info in rec["kmeans"].items():
        s = series[f"kmeans{k}"]
        maps = s["maps"] or [None] * int(k)
        rows = [
            [str(i), f"{c:,}", f"{c / n:.1%}", str(idx), _a(m, Path(m).name if m else "–")]
            for i, (c, idx, m) in enumerate(
                zip(info["counts"], info["centroid_indices"], maps, strict=True)
            )
        ]
        header = ["cluster", "particles", "fraction", "nearest particle", "map"]
        parts += [f"<h2>k-means, k = {k}</h2>", _img(figs, f"pca_kmeans{k}")]
        parts += [_img(figs, f"umap_kmeans{k}"), _table(header, rows)]
        links = [_a(s["labels"], "labels.npy"), _a(s["centers_ind"], "centers_ind.txt")]
        links += [_a(s["z_values"], "z_values.txt")]
        if s["chimerax"]:
            links.append(_a(s["chimerax"], Path(s["chimerax"]).name) + " (ChimeraX)")
        parts.append(f"<p>{' · '.join(links)}</p>")
    return parts


def _html_traversals(rec: Mapping[str, Any]) -> list[str]:
    series = rec["files"]["series"]
    parts = []
    for name, tr in rec["traversals"].items():
        s = series[name]
        maps = s["maps"] or [None] * len(tr["scores"])
        rows = [
            [str(i), f"{v:.4g}", _a(m, Path(m).name if m else "–")]
            for i, (v, m) in enumerate(zip(tr["scores"], maps, strict=True))
        ]
        lo, hi = tr["percentiles"]
        parts += [f"<h2>PC{tr['axis']} traversal ({lo:g}th–{hi:g}th percentile)</h2>"]
        parts.append(_table(["step", "PC score", "map"], rows))
        links = [_a(s["pc_scores"], "pc_scores.txt"), _a(s["z_values"], "z_values.txt")]
        if s["chimerax"]:
            links.append(_a(s["chimerax"], Path(s["chimerax"]).name) + " (ChimeraX)")
        parts.append(f"<p>{' · '.join(links)}</p>")
    return parts


def html_report(rec: Mapping[str, Any]) -> str:
    """The one-page ``index.html`` (plain HTML, relative links, no external resources)."""
    files = rec["files"]
    src = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in rec["source"].items()
    )
    data = [_a(files["summary"], "analysis.json"), _a(files["pca_scores"], "pca_scores.npy")]
    if files.get("umap"):
        data.append(_a(files["umap"], "umap.npy"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Latent landscape</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Latent landscape</h1>",
        f"<p>{rec['n_particles']:,} particles, zdim {rec['zdim']}, seed {rec['seed']}</p>",
        f"<ul>{src}</ul>",
        f"<p>data: {' · '.join(data)}</p>",
        *_html_pca(rec),
        *_html_kmeans(rec),
        *_html_traversals(rec),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
