"""PNG figures of a latent landscape: PCA variance, density, k-means and per-particle colorings.

Each figure is drawn on a fresh Agg :class:`~matplotlib.figure.Figure` (no pyplot state) and
written atomically. Scatter plots draw at most :data:`MAX_SCATTER_POINTS` particles (seeded
subsample); density plots use all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cryonoo.analysis.files import relative
from cryonoo.analysis.landscape import ClusterResult, Landscape
from cryonoo.io.atomic import atomic_path

__all__ = ["MAX_SCATTER_POINTS", "write_figures"]

MAX_SCATTER_POINTS = 100_000
"""Scatter plots draw at most this many points (seeded subsample); density plots use all."""

_DPI = 120
_MAX_DISCRETE = 20


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    fig.clear()
    return path


class _Colors:
    """Colors of per-particle values: a discrete palette (≤ 20 classes) or a continuous map."""

    def __init__(self, values: np.ndarray, discrete: bool | None = None) -> None:
        numeric = np.issubdtype(values.dtype, np.number) or values.dtype == bool
        self.classes = np.unique(values)
        integral = numeric and bool(np.all(np.asarray(values, dtype=np.float64) % 1 == 0))
        auto = (not numeric) or (integral and self.classes.size <= _MAX_DISCRETE)
        self.discrete = auto if discrete is None else discrete
        if self.discrete:
            self.cmap = matplotlib.colormaps["tab10" if self.classes.size <= 10 else "tab20"]
        else:
            self.cmap = matplotlib.colormaps["viridis"]
            vals = values.astype(np.float64)
            self.norm = Normalize(vmin=float(vals.min()), vmax=float(vals.max()))

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """``(m, 4)`` colors of values ``(m,)``."""
        if self.discrete:
            return self.cmap(np.searchsorted(self.classes, values) % self.cmap.N)
        return self.cmap(self.norm(values.astype(np.float64)))

    def decorate(self, fig: Figure, ax: Any, name: str) -> None:
        """A legend (discrete, ≤ 20 classes) or a colorbar (continuous)."""
        if not self.discrete:
            sm = ScalarMappable(norm=self.norm, cmap=self.cmap)
            fig.colorbar(sm, ax=ax, label=name, fraction=0.05)
        elif self.classes.size <= _MAX_DISCRETE:
            handles = [
                Line2D([], [], ls="", marker="o", color=c, label=str(v))
                for v, c in zip(self.classes, self.rgba(self.classes), strict=True)
            ]
            ax.legend(handles=handles, title=name, loc="upper left", bbox_to_anchor=(1.02, 1.0))


@dataclass(frozen=True, eq=False)
class _Plane:
    """2-D coordinates ``xy`` ``(N, 2)`` of every particle, axis names and a file-name prefix."""

    kind: str
    xy: np.ndarray
    names: tuple[str, str]
    order: np.ndarray  # indices of the points drawn in scatter plots, in drawing order


def _draw_order(n: int, seed: int) -> np.ndarray:
    """Seeded random drawing order of at most :data:`MAX_SCATTER_POINTS` of ``n`` points."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n)[:MAX_SCATTER_POINTS]


def _planes(land: Landscape, seed: int) -> list[_Plane]:
    n = land.z.shape[0]
    ev = land.pca.explained_variance_ratio * 100.0
    order = _draw_order(n, seed)
    if land.scores.shape[1] >= 2:
        xy = land.scores[:, :2]
        names = (f"PC1 ({ev[0]:.1f}% var.)", f"PC2 ({ev[1]:.1f}% var.)")
    else:  # zdim = 1: the score against a seeded jitter
        jitter = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        xy = np.column_stack([land.scores[:, 0], jitter])
        names = (f"PC1 ({ev[0]:.1f}% var.)", "random jitter (zdim = 1)")
    planes = [_Plane("pca", xy, names, order)]
    if land.umap is not None:
        planes.append(_Plane("umap", land.umap, ("UMAP 1", "UMAP 2"), order))
    return planes


def _point_size(m: int) -> float:
    return float(np.clip(3000.0 / max(m, 1), 0.5, 20.0))


def _hexbin(fig: Figure, ax: Any, plane: _Plane) -> None:
    hb = ax.hexbin(*plane.xy.T, gridsize=60, bins="log", mincnt=1, cmap="viridis", lw=0)
    fig.colorbar(hb, ax=ax, label="particles per bin", fraction=0.05)
    ax.set_xlabel(plane.names[0])
    ax.set_ylabel(plane.names[1])


def _mark_centers(ax: Any, xy: np.ndarray) -> None:
    """Numbered markers at the on-data centroid positions ``(k, 2)``."""
    ax.scatter(*xy.T, s=40, c="white", edgecolors="k", lw=0.8, zorder=3)
    for i, (x, y) in enumerate(xy):
        ax.annotate(str(i), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)


def _density_figure(plane: _Plane, marks: Mapping[str, np.ndarray], path: Path) -> Path:
    fig = _figure((6.4, 5.0))
    ax = fig.subplots()
    _hexbin(fig, ax, plane)
    for i, (name, xy) in enumerate(marks.items()):
        ax.plot(*xy.T, ls="-", marker="o", ms=4, color=f"C{i + 1}", label=f"{name} traversal")
    if marks:
        ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{plane.kind.upper()}: particle density (N={len(plane.xy):,})")
    return _save_png(fig, path)


def _scatter(ax: Any, plane: _Plane, colors: np.ndarray) -> None:
    idx = plane.order
    ax.scatter(*plane.xy[idx].T, s=_point_size(idx.size), c=colors, lw=0)
    ax.set_xlabel(plane.names[0])
    ax.set_ylabel(plane.names[1])


def _cluster_figure(plane: _Plane, cl: ClusterResult, path: Path) -> Path:
    fig = _figure((12.5, 5.0))
    ax_d, ax_s = fig.subplots(1, 2, sharex=True, sharey=True)
    _hexbin(fig, ax_d, plane)
    centers = plane.xy[cl.center_indices]
    _mark_centers(ax_d, centers)
    ax_d.set_title("density, numbered on-data centroids")
    colors = _Colors(np.arange(cl.k), discrete=True)
    _scatter(ax_s, plane, colors.rgba(cl.labels[plane.order]))
    _mark_centers(ax_s, centers)
    colors.decorate(fig, ax_s, "cluster")
    ax_s.set_title(f"k-means, k = {cl.k}")
    fig.suptitle(f"{plane.kind.upper()}: k-means with k = {cl.k}")
    return _save_png(fig, path)


def _value_figure(plane: _Plane, values: np.ndarray, name: str, path: Path) -> Path:
    fig = _figure((7.2, 5.0))
    ax = fig.subplots()
    colors = _Colors(values)
    _scatter(ax, plane, colors.rgba(values[plane.order]))
    colors.decorate(fig, ax, name)
    ax.set_title(f"{plane.kind.upper()} colored by {name}")
    return _save_png(fig, path)


def _variance_figure(ratio: np.ndarray, path: Path) -> Path:
    fig = _figure((max(4.5, 0.6 * ratio.size + 2.0), 3.8))
    ax = fig.subplots()
    x = np.arange(1, ratio.size + 1)
    bars = ax.bar(x, ratio * 100.0, color="C0", label="per axis")
    ax.bar_label(bars, labels=[f"{v * 100:.1f}" for v in ratio], fontsize=7, padding=2)
    ax.plot(x, np.cumsum(ratio) * 100.0, color="C1", marker="o", label="cumulative")
    ax.set_xticks(x, [f"PC{i}" for i in x])
    ax.set_ylabel("explained variance (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="center right")
    ax.set_title("PCA explained variance")
    return _save_png(fig, path)


def _plane_figures(
    out: Path,
    land: Landscape,
    plane: _Plane,
    extra: Mapping[str, tuple[np.ndarray, str]],
) -> dict[str, str]:
    """Density, one k-means figure per k and one per colouring in ``extra`` for one plane."""
    figs: dict[str, str] = {}
    marks: dict[str, np.ndarray] = {}
    if plane.kind == "pca":
        for name, tr in land.traversals.items():
            xy = np.zeros((tr.scores.size, 2))
            xy[:, tr.axis] = tr.scores
            marks[name] = xy
    key = f"{plane.kind}_density"
    figs[key] = relative(_density_figure(plane, marks, out / f"{key}.png"), out)
    for k, cl in land.clusters.items():
        key = f"{plane.kind}_kmeans{k}"
        figs[key] = relative(_cluster_figure(plane, cl, out / f"{key}.png"), out)
    for suffix, (values, name) in extra.items():
        key = f"{plane.kind}_{suffix}"
        figs[key] = relative(_value_figure(plane, values, name, out / f"{key}.png"), out)
    return figs


def write_figures(
    out: Path,
    land: Landscape,
    labels: np.ndarray | None,
    color_by: np.ndarray | None,
    color_by_name: str,
    seed: int,
) -> dict[str, str]:
    """Every PNG figure; returns ``figure name → path relative to out``."""
    path = _variance_figure(land.pca.explained_variance_ratio, out / "pca_explained_variance.png")
    figs = {"pca_explained_variance": relative(path, out)}
    extra: dict[str, tuple[np.ndarray, str]] = {}
    if color_by is not None:
        extra["color_by"] = (color_by, color_by_name)
    if labels is not None:
        extra["labels"] = (labels, "label")
    for plane in _planes(land, seed):
        figs.update(_plane_figures(out, land, plane, extra))
    return figs
