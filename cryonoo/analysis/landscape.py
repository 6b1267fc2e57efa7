"""Latent landscapes without ground truth: PCA, UMAP, k-means, PC traversals, maps and a report.

The input is the latents ``z`` ``(N, d)`` of a set of particles (a run's ``z.N.pkl`` or the output
of ``cryonoo encode``). Everything is vectorized numpy (float64) and memory stays ``O(N·d)``:
distances are computed in chunks of rows (never an ``N × N`` or full ``N × k × d`` array), the
PCA comes from the ``d × d`` covariance, and k-means / UMAP are fitted on seeded subsamples of at
most :data:`KMEANS_MAX_FIT` / :data:`UMAP_MAX_FIT` points and applied to all of them.

* **PCA**: all ``min(N, d)`` axes with their explained-variance ratios (they sum to 1 up to
  rounding); orientation as :func:`cryonoo.eval.clusters.pca_fit` (largest loading positive).
* **UMAP** (optional ``umap-learn``): 2-D embedding, fitted on at most 50 000 points (seeded
  subsample) and ``transform``-ed for the rest; skipped with a note when not installed or d = 1.
* **k-means** for each k (:func:`cryonoo.eval.clusters.kmeans`, seeded): cluster labels and counts
  over all particles, and for each centroid the index of the on-data particle nearest it; the
  centroid maps are decoded at those particles' latents.
* **PC traversals** (PC1, PC2): ``n_steps`` latents ``mean + s·component`` with the score ``s``
  evenly spaced between the 5th and 95th percentiles of the particles' scores on that axis.

:func:`analyze_landscape` writes, under ``OUTDIR`` (file names in ``docs/analysis.md``)::

    analysis.json  index.html  pca_scores.npy  [umap.npy]
    pca_explained_variance.png  pca_density.png  pca_kmeans{k}.png  [pca_color_by.png]
    [pca_labels.png]  [umap_density.png  umap_kmeans{k}.png  umap_color_by.png  umap_labels.png]
    kmeans{k}/  labels.npy  centers_ind.txt  z_values.txt  [vol_000.mrc …  kmeans{k}.cxc]
    pc1/ pc2/   pc_scores.txt  z_values.txt  [vol_000.mrc … vol_{n−1}.mrc  pc1.cxc]

Maps (bracketed: only with ``decode=True``) are float32 MRC with the voxel size in the header;
each ``.cxc`` opens its series in ChimeraX as one volume series at the level ``mean + 2·std`` of
the series' first map. Every file is written atomically (:mod:`cryonoo.io.atomic`), and all
inputs are validated before anything is written.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cryonoo.eval.clusters import PCA, as_latents, kmeans
from cryonoo.io.atomic import atomic_path, atomic_write
from cryonoo.io.cryodrgn import load_z_pkl, safe_load_pickle
from cryonoo.io.mrc import write_mrc

__all__ = [
    "DEFAULT_KS",
    "KMEANS_MAX_FIT",
    "N_TRAVERSAL",
    "TRAVERSAL_PERCENTILES",
    "UMAP_MAX_FIT",
    "AnalysisResult",
    "ClusterResult",
    "Landscape",
    "Traversal",
    "analyze_landscape",
    "assign_nearest",
    "check_ks",
    "check_latents",
    "check_per_particle",
    "chimerax_script",
    "cluster_latents",
    "compute_landscape",
    "count_maps",
    "fit_pca",
    "load_latents",
    "load_per_particle",
    "map_level",
    "nearest_on_data",
    "parse_ks",
    "pc_traversal",
    "umap_embedding",
]

DEFAULT_KS: tuple[int, ...] = (5, 20)
"""k-means cluster counts analyzed by default."""
N_TRAVERSAL = 10
"""Maps per PC traversal."""
TRAVERSAL_PERCENTILES: tuple[float, float] = (5.0, 95.0)
"""Range of each traversal, in percentiles of the particles' PC scores."""
UMAP_MAX_FIT = 50_000
"""UMAP is fitted on at most this many points (seeded subsample); the rest are transformed."""
KMEANS_MAX_FIT = 200_000
"""k-means is fitted on at most this many points (seeded subsample); all are then assigned."""
MAX_SCATTER_POINTS = 100_000
"""Scatter plots draw at most this many points (seeded subsample); density plots use all."""

_CHUNK_ELEMENTS = 1 << 21  # float64 elements per distance chunk (16 MiB)
_DPI = 120
_MAX_DISCRETE = 20


# --------------------------------------------------------------------------- input checks
def check_latents(z: Any, zdim: int | None = None, name: str = "z") -> np.ndarray:
    """``z`` as a finite float64 array ``(N, d)`` with ``N ≥ 2`` (and ``d == zdim`` if given).

    Raises :class:`ValueError` naming the problem (shape, NaN/Inf, too few points).
    """
    try:
        arr = as_latents(z, name)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
    if zdim is not None and arr.shape[1] != zdim:
        raise ValueError(f"{name} has latents of width {arr.shape[1]}; the model's zdim is {zdim}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} latent; the analysis needs at least 2")
    return arr


def load_latents(path: str | os.PathLike[str]) -> np.ndarray:
    """Latents ``(N, d)`` from a cryoDRGN ``z.pkl`` (mu), a ``.npy`` or a ``.txt`` file."""
    p = Path(os.fspath(path))
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".txt":
        return np.loadtxt(p, ndmin=2)
    return load_z_pkl(p)[0]


def load_per_particle(path: str | os.PathLike[str]) -> np.ndarray:
    """Per-particle values ``(N,)`` from ``.npy``, ``.txt`` (numbers, else strings) or ``.pkl``."""
    p = Path(os.fspath(path))
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".txt":
        try:
            return np.loadtxt(p, ndmin=1)
        except ValueError:
            return np.loadtxt(p, dtype=str, ndmin=1)
    obj = safe_load_pickle(p)
    if isinstance(obj, dict):
        raise ValueError(f"{p}: expected an array of per-particle values, got a dict")
    return np.asarray(obj)


def check_per_particle(values: Any, n: int, name: str, numeric: bool = False) -> np.ndarray:
    """``values`` as a 1-D array ``(n,)``; ``numeric`` also requires finite numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must hold one value per particle, shape (N,); got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but there are {n} latents")
    if numeric:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def parse_ks(text: str) -> tuple[int, ...]:
    """``"5,20"`` → ``(5, 20)``; raises :class:`ValueError` on anything but integers."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        ks = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--ks must be comma-separated integers such as 5,20; got {text!r}"
        ) from None
    if not ks:
        raise ValueError("--ks is empty; give e.g. 5,20")
    return ks


def check_ks(ks: Sequence[int], n: int) -> tuple[int, ...]:
    """Sorted distinct cluster counts, each ``2 ≤ k ≤ n`` (``n`` particles)."""
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if not 2 <= int(k) <= n:
            raise ValueError(f"k = {k} is out of range: k-means needs 2 ≤ k ≤ N = {n}")
        out.append(int(k))
    if not out:
        raise ValueError("no k given for k-means")
    return tuple(sorted(set(out)))


# --------------------------------------------------------------------------- computations
def _row_chunk(m: int, d: int) -> int:
    """Rows per chunk so that a ``(rows, m, d)`` float64 difference array stays ≤ 16 MiB."""
    return max(1, _CHUNK_ELEMENTS // max(1, m * d))


def _chunked_sq_dists(z: np.ndarray, points: np.ndarray):
    """Yield ``(start, d2)``: exact squared distances ``(rows, m)`` of a chunk of ``z`` rows."""
    rows = _row_chunk(points.shape[0], points.shape[1])
    for start in range(0, z.shape[0], rows):
        diff = z[start : start + rows, None, :] - points[None, :, :]
        yield start, np.einsum("ijk,ijk->ij", diff, diff)


def nearest_on_data(z: Any, points: Any) -> np.ndarray:
    """``(m,)`` int64: for each of ``points`` ``(m, d)``, the index of the nearest row of ``z``.

    Euclidean distance, exact (differences, not the expanded formula); ties go to the lowest index.
    """
    arr, pts = as_latents(z), as_latents(points, "points")
    best = np.full(pts.shape[0], np.inf)
    idx = np.zeros(pts.shape[0], dtype=np.int64)
    cols = np.arange(pts.shape[0])
    for start, d2 in _chunked_sq_dists(arr, pts):
        j = np.argmin(d2, axis=0)
        v = d2[j, cols]
        better = v < best
        best[better] = v[better]
        idx[better] = j[better] + start
    return idx


def assign_nearest(z: Any, centers: Any) -> np.ndarray:
    """``(N,)`` int64: the index of the nearest of ``centers`` ``(k, d)`` for each row of ``z``."""
    arr, cen = as_latents(z), as_latents(centers, "centers")
    labels = np.empty(arr.shape[0], dtype=np.int64)
    for start, d2 in _chunked_sq_dists(arr, cen):
        labels[start : start + d2.shape[0]] = np.argmin(d2, axis=1)
    return labels


def fit_pca(z: Any) -> PCA:
    """PCA with all ``min(N, d)`` axes of latents ``(N, d)``, from the ``d × d`` covariance.

    Same result as an SVD of the centered data (up to rounding): unit components by decreasing
    variance, largest-magnitude loading positive, ``explained_variance_ratio`` summing to 1
    (all zeros for constant data).
    """
    arr = as_latents(z)
    n, d = arr.shape
    mean = arr.mean(axis=0)
    scatter = np.zeros((d, d))
    rows = max(1, _CHUNK_ELEMENTS // d)
    for start in range(0, n, rows):
        c = arr[start : start + rows] - mean
        scatter += c.T @ c
    evals, evecs = np.linalg.eigh(scatter)
    order = np.argsort(evals)[::-1][: min(n, d)]
    var = np.clip(evals[order], 0.0, None)
    comps = evecs[:, order].T
    pivot = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(comps.shape[0]), pivot])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return PCA(mean=mean, components=comps, explained_variance_ratio=ratio)


def _project(arr: np.ndarray, pca: PCA) -> np.ndarray:
    """PC scores ``(N, n_components)`` of ``arr`` ``(N, d)``, computed in chunks of rows."""
    out = np.empty((arr.shape[0], pca.n_components))
    rows = max(1, _CHUNK_ELEMENTS // arr.shape[1])
    for start in range(0, arr.shape[0], rows):
        out[start : start + rows] = (arr[start : start + rows] - pca.mean) @ pca.components.T
    return out


def _subsample(n: int, size: int, seed: int) -> np.ndarray | None:
    """Sorted seeded subsample of ``size`` of ``range(n)``, or ``None`` when ``n ≤ size``."""
    if n <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def umap_embedding(z: Any, *, seed: int = 0, max_fit: int = UMAP_MAX_FIT) -> np.ndarray | None:
    """2-D UMAP embedding ``(N, 2)`` float64 of latents ``(N, d)``, or ``None``.

    ``None`` when ``umap-learn`` is not installed or ``d = 1``. With ``N > max_fit`` the model
    is fitted on a seeded subsample of ``max_fit`` points and the others are ``transform``-ed.
    """
    arr = as_latents(z)
    if arr.shape[1] < 2:
        return None
    try:
        import umap
    except ImportError:
        return None
    fit_idx = _subsample(arr.shape[0], max_fit, seed)
    reducer = umap.UMAP(n_components=2, random_state=seed)
    if fit_idx is None:
        return np.asarray(reducer.fit_transform(arr), dtype=np.float64)
    emb = np.empty((arr.shape[0], 2))
    emb[fit_idx] = np.asarray(reducer.fit_transform(arr[fit_idx]), dtype=np.float64)
    rest = np.ones(arr.shape[0], dtype=bool)
    rest[fit_idx] = False
    emb[rest] = np.asarray(reducer.transform(arr[rest]), dtype=np.float64)
    return emb


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """k-means of all particles.

    Attributes
    ----------
    k: number of clusters.
    labels: ``(N,)`` int64 cluster of every particle (nearest centroid).
    counts: ``(k,)`` int64 particles per cluster.
    centroids: ``(k, d)`` cluster means of the fit.
    center_indices: ``(k,)`` int64 index of the particle nearest each centroid.
    fit_points: number of points k-means was fitted on (``≤ KMEANS_MAX_FIT``).
    """

    k: int
    labels: np.ndarray
    counts: np.ndarray
    centroids: np.ndarray
    center_indices: np.ndarray
    fit_points: int


def cluster_latents(
    z: Any, k: int, *, seed: int = 0, max_fit: int = KMEANS_MAX_FIT
) -> ClusterResult:
    """k-means (seeded) of latents ``(N, d)``, fitted on ≤ ``max_fit`` points, assigned for all."""
    arr = as_latents(z)
    n = arr.shape[0]
    fit_idx = _subsample(n, max_fit, seed)
    fit = kmeans(arr if fit_idx is None else arr[fit_idx], k, seed=seed)
    labels = fit.labels if fit_idx is None else assign_nearest(arr, fit.centers)
    return ClusterResult(
        k=int(k),
        labels=labels.astype(np.int64),
        counts=np.bincount(labels, minlength=k).astype(np.int64),
        centroids=fit.centers,
        center_indices=nearest_on_data(arr, fit.centers),
        fit_points=n if fit_idx is None else int(fit_idx.size),
    )


@dataclass(frozen=True, eq=False)
class Traversal:
    """Latents along one principal axis.

    Attributes
    ----------
    axis: 0-based PC index (0 = PC1).
    scores: ``(n_steps,)`` PC scores, evenly spaced between the two percentiles.
    latents: ``(n_steps, d)`` latents ``mean + score·component``.
    percentiles: the ``(low, high)`` percentiles of the particles' scores spanned.
    """

    axis: int
    scores: np.ndarray
    latents: np.ndarray
    percentiles: tuple[float, float]


def pc_traversal(
    pca: PCA,
    scores: np.ndarray,
    axis: int,
    *,
    n_steps: int = N_TRAVERSAL,
    percentiles: tuple[float, float] = TRAVERSAL_PERCENTILES,
) -> Traversal:
    """``n_steps`` latents on PC ``axis`` between percentiles of ``scores[:, axis]`` ``(N,)``."""
    lo, hi = (float(p) for p in percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 ≤ low < high ≤ 100, got {percentiles}")
    if n_steps < 2:
        raise ValueError(f"a traversal needs n_steps ≥ 2, got {n_steps}")
    s_lo, s_hi = np.percentile(scores[:, axis], [lo, hi])
    values = np.linspace(s_lo, s_hi, int(n_steps))
    latents = pca.mean[None, :] + values[:, None] * pca.components[axis][None, :]
    return Traversal(axis=int(axis), scores=values, latents=latents, percentiles=(lo, hi))


@dataclass(frozen=True, eq=False)
class Landscape:
    """Everything :func:`compute_landscape` finds for latents ``z`` ``(N, d)``.

    ``scores`` ``(N, min(N, d))`` are the PC scores; ``umap`` ``(N, 2)`` or ``None`` (then
    ``umap_note`` says why); ``clusters[k]`` per k; ``traversals`` keyed ``"pc1"``, ``"pc2"``.
    """

    z: np.ndarray
    pca: PCA
    scores: np.ndarray
    umap: np.ndarray | None
    umap_note: str
    umap_fit_points: int
    clusters: dict[int, ClusterResult]
    traversals: dict[str, Traversal]


def _umap_step(arr: np.ndarray, use_umap: bool, seed: int) -> tuple[np.ndarray | None, str]:
    if not use_umap:
        return None, "UMAP not requested"
    if arr.shape[1] < 2:
        return None, "UMAP skipped: zdim = 1"
    emb = umap_embedding(arr, seed=seed)
    if emb is None:
        return None, "UMAP skipped: umap-learn is not installed (pip install umap-learn)"
    return emb, ""


def compute_landscape(
    z: Any,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    seed: int = 0,
    use_umap: bool = True,
    n_steps: int = N_TRAVERSAL,
    percentiles: tuple[float, float] = TRAVERSAL_PERCENTILES,
    kmeans_max_fit: int = KMEANS_MAX_FIT,
) -> Landscape:
    """PCA, optional UMAP, k-means for each k and PC1/PC2 traversals of latents ``(N, d)``."""
    arr = check_latents(z)
    ks = check_ks(ks, arr.shape[0])
    pca = fit_pca(arr)
    scores = _project(arr, pca)
    emb, note = _umap_step(arr, use_umap, seed)
    clusters = {k: cluster_latents(arr, k, seed=seed, max_fit=kmeans_max_fit) for k in ks}
    traversals = {
        f"pc{a + 1}": pc_traversal(pca, scores, a, n_steps=n_steps, percentiles=percentiles)
        for a in range(min(2, pca.n_components))
    }
    return Landscape(
        z=arr,
        pca=pca,
        scores=scores,
        umap=emb,
        umap_note=note,
        umap_fit_points=0 if emb is None else min(arr.shape[0], UMAP_MAX_FIT),
        clusters=clusters,
        traversals=traversals,
    )


# --------------------------------------------------------------------------- maps and ChimeraX
def map_level(volume: Any) -> float:
    """Display threshold of a map ``(n, n, n)``: ``mean + 2·std`` of its voxels (map units)."""
    arr = np.asarray(volume, dtype=np.float64)
    return float(arr.mean() + 2.0 * arr.std())


def chimerax_script(map_names: Sequence[str], level: float, title: str, play: bool = False) -> str:
    """ChimeraX ``{title}.cxc`` text opening ``map_names`` (relative to it) as one series.

    The series becomes model ``#1`` in a new session; ``volume #1 level`` sets the threshold for
    every map of the series; ``play`` adds an oscillating playback (traversals).
    """
    if not map_names:
        raise ValueError("a ChimeraX series needs at least one map")
    quoted = " ".join(f'"{m}"' if " " in m else m for m in map_names)
    lines = [
        f"# {title}: {len(map_names)} maps as one volume series (model #1 in a new session)",
        f"# run: chimerax {title}.cxc, or `open {title}.cxc` in ChimeraX (paths relative to it)",
        f"open {quoted} vseries true",
        f"volume #1 level {level:.6g} style surface",
    ]
    if play:
        lines.append("vseries play #1 loop true direction oscillate")
    return "\n".join(lines) + "\n"


def count_maps(ks: Sequence[int], zdim: int, n_steps: int = N_TRAVERSAL) -> int:
    """Number of maps :func:`analyze_landscape` decodes: ``Σk`` + one traversal per PC (≤ 2)."""
    return int(sum(ks)) + min(2, int(zdim)) * int(n_steps)


VolumeFn = Callable[[torch.Tensor], Any]
"""Decoder of one latent: a float32 CPU tensor ``(d,)`` → a map ``(n, n, n)`` (tensor/array)."""


def _decode_maps(
    latents: np.ndarray,
    volume_fn: VolumeFn,
    directory: Path,
    voxel_size: float,
    on_volume: Callable[[], None] | None,
) -> tuple[list[Path], float]:
    """Write ``vol_000.mrc …`` for latents ``(m, d)``; return their paths, first map's level."""
    paths, level = [], 0.0
    rows = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    for i in range(rows.shape[0]):
        with torch.no_grad():
            vol = volume_fn(rows[i].clone())
        if isinstance(vol, torch.Tensor):
            vol = vol.detach().float().cpu().numpy()
        vol = np.asarray(vol, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume_fn must return an (n, n, n) map, got shape {vol.shape}")
        if i == 0:
            level = map_level(vol)
        path = directory / f"vol_{i:03d}.mrc"
        write_mrc(path, vol, voxel_size=voxel_size)
        paths.append(path)
        if on_volume is not None:
            on_volume()
    return paths, level


# --------------------------------------------------------------------------- file helpers
def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _write_rows(path: Path, array: np.ndarray, fmt: str = "%.6g") -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        np.savetxt(f, np.atleast_1d(array), fmt=fmt)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --------------------------------------------------------------------------- figures
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
    figs[key] = _rel(_density_figure(plane, marks, out / f"{key}.png"), out)
    for k, cl in land.clusters.items():
        key = f"{plane.kind}_kmeans{k}"
        figs[key] = _rel(_cluster_figure(plane, cl, out / f"{key}.png"), out)
    for suffix, (values, name) in extra.items():
        key = f"{plane.kind}_{suffix}"
        figs[key] = _rel(_value_figure(plane, values, name, out / f"{key}.png"), out)
    return figs


def _write_figures(
    out: Path,
    land: Landscape,
    labels: np.ndarray | None,
    color_by: np.ndarray | None,
    color_by_name: str,
    seed: int,
) -> dict[str, str]:
    """Every PNG figure; returns ``figure name → path relative to out``."""
    path = _variance_figure(land.pca.explained_variance_ratio, out / "pca_explained_variance.png")
    figs = {"pca_explained_variance": _rel(path, out)}
    extra: dict[str, tuple[np.ndarray, str]] = {}
    if color_by is not None:
        extra["color_by"] = (color_by, color_by_name)
    if labels is not None:
        extra["labels"] = (labels, "label")
    for plane in _planes(land, seed):
        figs.update(_plane_figures(out, land, plane, extra))
    return figs


# --------------------------------------------------------------------------- series of maps
def _series_maps(
    out: Path,
    directory: Path,
    name: str,
    latents: np.ndarray,
    decode: tuple[VolumeFn, float, Callable[[], None] | None] | None,
    play: bool,
) -> dict[str, Any]:
    """Decode one series (when ``decode`` = (volume_fn, voxel size Å, callback)) + its .cxc."""
    if decode is None:
        return {"maps": [], "chimerax": None, "level": None}
    volume_fn, voxel_size, on_volume = decode
    paths, level = _decode_maps(latents, volume_fn, directory, voxel_size, on_volume)
    script = directory / f"{name}.cxc"
    _write_text(script, chimerax_script([p.name for p in paths], level, name, play=play))
    return {"maps": [_rel(p, out) for p in paths], "chimerax": _rel(script, out), "level": level}


def _write_series(
    out: Path,
    land: Landscape,
    decode: tuple[VolumeFn, float, Callable[[], None] | None] | None,
) -> dict[str, dict[str, Any]]:
    """``kmeans{k}/`` and ``pc1/``, ``pc2/``: latents, labels, maps and ChimeraX scripts."""
    series: dict[str, dict[str, Any]] = {}
    for k, cl in land.clusters.items():
        name = f"kmeans{k}"
        d = out / name
        d.mkdir(exist_ok=True)
        _write_npy(d / "labels.npy", cl.labels)
        _write_rows(d / "centers_ind.txt", cl.center_indices, fmt="%d")
        _write_rows(d / "z_values.txt", land.z[cl.center_indices])
        entry: dict[str, Any] = {"directory": name, "labels": f"{name}/labels.npy"}
        entry["centers_ind"] = f"{name}/centers_ind.txt"
        entry["z_values"] = f"{name}/z_values.txt"
        entry.update(_series_maps(out, d, name, land.z[cl.center_indices], decode, play=False))
        series[name] = entry
    for name, tr in land.traversals.items():
        d = out / name
        d.mkdir(exist_ok=True)
        _write_rows(d / "pc_scores.txt", tr.scores)
        _write_rows(d / "z_values.txt", tr.latents)
        entry = {"directory": name, "pc_scores": f"{name}/pc_scores.txt"}
        entry["z_values"] = f"{name}/z_values.txt"
        entry.update(_series_maps(out, d, name, tr.latents, decode, play=True))
        series[name] = entry
    return series


# --------------------------------------------------------------------------- summary + report
def _record(
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


def _html_report(rec: Mapping[str, Any]) -> str:
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


# --------------------------------------------------------------------------- entry point
@dataclass(frozen=True, eq=False)
class AnalysisResult:
    """What :func:`analyze_landscape` computed and wrote (``record`` = ``analysis.json``)."""

    outdir: Path
    landscape: Landscape
    record: dict[str, Any]

    @property
    def report(self) -> Path:
        """The ``index.html`` page."""
        return self.outdir / "index.html"


def _check_inputs(
    z: Any,
    ks: Sequence[int],
    labels: Any,
    color_by: Any,
    color_by_name: str,
    decode: bool,
    volume_fn: VolumeFn | None,
    voxel_size: float,
) -> tuple[np.ndarray, tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    """Validate every input of :func:`analyze_landscape` before anything is written."""
    arr = check_latents(z)
    n = arr.shape[0]
    ks = check_ks(ks, n)
    lab = None if labels is None else check_per_particle(labels, n, "labels")
    col = None if color_by is None else check_per_particle(color_by, n, color_by_name, True)
    if decode:
        if volume_fn is None:
            raise ValueError("decode=True needs a volume_fn (latent → map)")
        if not float(voxel_size) > 0:
            raise ValueError(f"voxel size must be > 0 Å, got {voxel_size!r}")
    return arr, ks, lab, col


def analyze_landscape(
    z: Any,
    outdir: str | os.PathLike[str],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    labels: Any = None,
    color_by: Any = None,
    color_by_name: str = "color-by",
    volume_fn: VolumeFn | None = None,
    voxel_size: float = 1.0,
    decode: bool = True,
    seed: int = 0,
    use_umap: bool = True,
    n_steps: int = N_TRAVERSAL,
    source: Mapping[str, Any] | None = None,
    on_volume: Callable[[], None] | None = None,
) -> AnalysisResult:
    """Analyze latents ``z`` ``(N, d)`` and write the report under ``outdir`` (layout above).

    ``labels`` / ``color_by``: ``(N,)`` per-particle classes / numbers coloring extra figures.
    With ``decode=True`` every centroid and traversal latent is decoded by ``volume_fn`` (a float32
    CPU tensor ``(d,)`` → map ``(n, n, n)``, called under ``no_grad``) and written as
    ``vol_NNN.mrc`` with ``voxel_size`` Å; ``on_volume()`` is called after each map. ``source``
    (e.g. run directory, epoch, latent file) is recorded in ``analysis.json``. Inputs are
    validated first: a :class:`ValueError` leaves ``outdir`` untouched.
    """
    arr, ks, lab, col = _check_inputs(
        z, ks, labels, color_by, color_by_name, decode, volume_fn, voxel_size
    )
    land = compute_landscape(arr, ks, seed=seed, use_umap=use_umap, n_steps=n_steps)
    out = Path(os.fspath(outdir))
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"report": "index.html", "summary": "analysis.json"}
    _write_npy(out / "pca_scores.npy", land.scores.astype(np.float32))
    files["pca_scores"] = "pca_scores.npy"
    files["umap"] = None
    if land.umap is not None:
        _write_npy(out / "umap.npy", land.umap.astype(np.float32))
        files["umap"] = "umap.npy"
    files["figures"] = _write_figures(out, land, lab, col, color_by_name, seed)
    job = (volume_fn, float(voxel_size), on_volume) if decode and volume_fn else None
    files["series"] = _write_series(out, land, job)
    record = _record(land, files, seed, {"voxel_size_A": float(voxel_size), **(source or {})})
    _write_text(out / "analysis.json", json.dumps(record, indent=1) + "\n")
    _write_text(out / "index.html", _html_report(record))
    return AnalysisResult(outdir=out, landscape=land, record=record)
