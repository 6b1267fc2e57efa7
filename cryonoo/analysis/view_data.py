"""What the latent viewer shows: 2-D planes, per-particle colours and k-means clusters.

:func:`view_data` gathers, for latents ``z`` ``(N, d)``:

* **planes** — PC1/PC2 scores (``pca_scores.npy`` of an analysis directory, else
  :func:`~cryonoo.analysis.landscape.fit_pca`; for ``d = 1`` PC1 against a seeded jitter, as
  ``cryonoo analyze`` plots it) and the UMAP embedding when the analysis has ``umap.npy``;
  float32 ``(N, 2)``.
* **colourings** — the k-means clusters of every ``kmeans{k}/labels.npy`` of the analysis (or of
  :func:`~cryonoo.analysis.landscape.cluster_latents` with ``k`` clusters, seeded, when the
  analysis has none for ``k``), and a numeric per-particle column (``--color-by``) binned into
  256 levels between its 1st and 99th percentiles. Codes are uint8 (uint16 above 256 clusters).
* **clusters** — the k-means used for centroid maps: labels, the on-data particle nearest each
  centroid and, when the analysis decoded them, the maps ``kmeans{k}/vol_NNN.mrc``.

Analysis files follow the layout of ``cryonoo analyze`` (``docs/analysis.md``); a file whose
row count differs from ``N`` is a :class:`ValueError` naming both counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryonoo.analysis.inputs import check_ks, check_latents, check_per_particle
from cryonoo.analysis.landscape import cluster_latents, fit_pca

__all__ = [
    "DEFAULT_K",
    "AnalysisFiles",
    "Clusters",
    "Coloring",
    "Plane",
    "ViewData",
    "read_analysis",
    "view_data",
]

DEFAULT_K = 20
"""k-means clusters shown when none is asked for (fewer when there are fewer particles)."""
VALUE_LEVELS = 256
"""Colour levels of a numeric per-particle column."""


@dataclass(frozen=True, eq=False)
class Plane:
    """A 2-D view: ``xy`` ``(N, 2)`` float32, its ``axes`` names and a ``label`` for the menu."""

    name: str
    label: str
    axes: tuple[str, str]
    xy: np.ndarray


@dataclass(frozen=True, eq=False)
class Coloring:
    """Per-particle colour codes ``(N,)`` uint8/uint16.

    ``kind = "labels"``: codes are cluster ids ``0 … count−1``. ``kind = "values"``: codes are
    levels ``0 … 255`` of values linearly spanning ``vmin … vmax`` (clipped outside).
    """

    name: str
    label: str
    kind: str
    codes: np.ndarray
    count: int
    vmin: float = 0.0
    vmax: float = 0.0


@dataclass(frozen=True, eq=False)
class Clusters:
    """k-means with ``k`` clusters: ``labels`` ``(N,)`` int64, ``center_indices`` ``(k,)``
    (on-data particle nearest each centroid) and the centroid ``maps`` (``k`` paths) if any."""

    k: int
    labels: np.ndarray
    center_indices: np.ndarray
    maps: list[Path] | None = None


@dataclass(frozen=True, eq=False)
class AnalysisFiles:
    """Arrays of an analysis directory: PC scores ``(N, c)``, UMAP ``(N, 2)`` or None, the
    explained-variance ratios (may be empty) and the k-means found, by k."""

    directory: Path
    pca_scores: np.ndarray
    umap: np.ndarray | None
    explained: list[float]
    clusters: dict[int, Clusters] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ViewData:
    """Everything the viewer shows of ``n`` particles with ``zdim``-wide latents ``z``."""

    z: np.ndarray
    planes: list[Plane]
    colorings: list[Coloring]
    clusters: Clusters
    source: dict[str, Any]

    @property
    def n(self) -> int:
        """Number of particles."""
        return int(self.z.shape[0])


def _rows(path: Path, arr: np.ndarray, n: int, width: int | None = None) -> np.ndarray:
    """``arr`` checked to be ``(n, …)`` (and ``(n, width)`` when given)."""
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"{path} has {arr.shape[:1]} rows but there are {n} latents")
    if width is not None and (arr.ndim != 2 or arr.shape[1] != width):
        raise ValueError(f"{path} must have shape ({n}, {width}), got {arr.shape}")
    return arr


def _map_paths(directory: Path, k: int) -> list[Path] | None:
    """``vol_000.mrc … vol_{k−1}.mrc`` of a k-means folder, or None unless all exist."""
    paths = [directory / f"vol_{i:03d}.mrc" for i in range(k)]
    return paths if all(p.is_file() for p in paths) else None


def _read_kmeans(directory: Path, n: int) -> dict[int, Clusters]:
    """Every ``kmeans{k}/`` with a ``labels.npy`` (and ``centers_ind.txt``) under ``directory``."""
    found: dict[int, Clusters] = {}
    for sub in sorted(directory.glob("kmeans*/labels.npy")):
        k_text = sub.parent.name.removeprefix("kmeans")
        if not k_text.isdigit():
            continue
        k = int(k_text)
        labels = _rows(sub, np.load(sub, allow_pickle=False), n).astype(np.int64)
        if labels.ndim != 1 or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{sub}: expected ({n},) cluster ids in 0 … {k - 1}")
        ind_file = sub.parent / "centers_ind.txt"
        ind = np.loadtxt(ind_file, dtype=np.int64, ndmin=1) if ind_file.is_file() else None
        if ind is None or ind.shape != (k,) or ind.min() < 0 or ind.max() >= n:
            raise ValueError(f"{ind_file}: expected {k} particle indices in 0 … {n - 1}")
        found[k] = Clusters(k, labels, ind, _map_paths(sub.parent, k))
    return found


def read_analysis(directory: str | os.PathLike[str], n: int) -> AnalysisFiles:
    """The arrays of a ``cryonoo analyze`` output folder for ``n`` latents (checked)."""
    root = Path(os.fspath(directory))
    scores_file = root / "pca_scores.npy"
    if not scores_file.is_file():
        raise ValueError(f"{root} is not a `cryonoo analyze` folder (no {scores_file.name})")
    scores = _rows(scores_file, np.load(scores_file, allow_pickle=False), n)
    if scores.ndim != 2:
        raise ValueError(f"{scores_file} must have shape ({n}, c), got {scores.shape}")
    umap_file = root / "umap.npy"
    umap = None
    if umap_file.is_file():
        umap = _rows(umap_file, np.load(umap_file, allow_pickle=False), n, 2)
    summary = root / "analysis.json"
    explained: list[float] = []
    if summary.is_file():
        record = json.loads(summary.read_text(encoding="utf-8"))
        explained = [float(v) for v in record.get("pca", {}).get("explained_variance_ratio", [])]
    return AnalysisFiles(root, scores, umap, explained, _read_kmeans(root, n))


def _pca_plane(z: np.ndarray, analysis: AnalysisFiles | None, seed: int) -> Plane:
    """PC1/PC2 scores ``(N, 2)`` (PC1 against a seeded jitter when only one axis exists)."""
    if analysis is not None:
        scores, explained = analysis.pca_scores, analysis.explained
    else:
        pca = fit_pca(z)
        scores, explained = pca.transform(z)[:, :2], pca.explained_variance_ratio.tolist()
    names = [
        f"PC{i + 1}" + (f" ({explained[i]:.1%})" if i < len(explained) else "") for i in (0, 1)
    ]
    if scores.shape[1] >= 2:
        return Plane("pca", "PCA (PC1/PC2)", (names[0], names[1]), _f32(scores[:, :2]))
    jitter = np.random.default_rng(seed).uniform(-1.0, 1.0, len(z))
    xy = np.column_stack([scores[:, 0], jitter])
    return Plane("pca", "PCA (PC1)", (names[0], "random jitter (zdim = 1)"), _f32(xy))


def _f32(xy: np.ndarray) -> np.ndarray:
    """``xy`` as C-contiguous float32; ValueError when a value is not finite in float32."""
    out = np.ascontiguousarray(xy, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("2-D coordinates contain NaN or infinite values (or overflow float32)")
    return out


def _label_coloring(cl: Clusters) -> Coloring:
    dtype = np.uint8 if cl.k <= 256 else np.uint16
    label = f"k-means (k = {cl.k})"
    return Coloring(f"kmeans{cl.k}", label, "labels", cl.labels.astype(dtype), cl.k, 0, cl.k - 1)


def _value_coloring(values: np.ndarray, name: str) -> Coloring:
    """256 levels of ``values`` ``(N,)`` between their 1st and 99th percentiles."""
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    span = hi - lo if hi > lo else 1.0
    levels = np.clip(np.rint((values - lo) / span * (VALUE_LEVELS - 1)), 0, VALUE_LEVELS - 1)
    return Coloring(name, name, "values", levels.astype(np.uint8), VALUE_LEVELS, lo, hi)


def _clusters(
    z: np.ndarray, analysis: AnalysisFiles | None, k: int | None, seed: int
) -> tuple[Clusters, list[Clusters]]:
    """The k-means for the maps and every k-means to colour by (the analysis' ones first)."""
    found = dict(analysis.clusters) if analysis is not None else {}
    if k is None:
        k = DEFAULT_K if DEFAULT_K in found or not found else max(found)
        k = min(k, z.shape[0])
    k = check_ks([k], z.shape[0])[0]
    if k not in found:
        res = cluster_latents(z, k, seed=seed)
        found[k] = Clusters(k, res.labels, res.center_indices)
    return found[k], [found[key] for key in sorted(found)]


def view_data(
    z: Any,
    *,
    analysis: str | os.PathLike[str] | None = None,
    color_by: Any = None,
    color_by_name: str = "color-by",
    k: int | None = None,
    seed: int = 0,
    source: dict[str, Any] | None = None,
) -> ViewData:
    """Planes, colourings and clusters of latents ``z`` ``(N, d)`` (module docstring).

    ``analysis``: a ``cryonoo analyze`` folder for the same latents; ``color_by``: ``(N,)``
    numbers; ``k``: the k-means shown for maps (default 20, or the analysis' largest).
    """
    arr = check_latents(z)
    n = arr.shape[0]
    files = None if analysis is None else read_analysis(analysis, n)
    planes = [_pca_plane(arr, files, seed)]
    if files is not None and files.umap is not None:
        planes.append(Plane("umap", "UMAP", ("UMAP 1", "UMAP 2"), _f32(files.umap)))
    main, all_clusters = _clusters(arr, files, k, seed)
    colorings = [_label_coloring(main)]
    colorings += [_label_coloring(c) for c in all_clusters if c is not main]
    if color_by is not None:
        values = check_per_particle(color_by, n, color_by_name, numeric=True)
        colorings.append(_value_coloring(values, color_by_name))
    return ViewData(arr, planes, colorings, main, dict(source or {}))
