"""Latent landscapes without ground truth: PCA, UMAP, k-means, nearest particles, PC traversals.

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
  over all particles, and for each centroid the index of the on-data particle nearest it.
* **PC traversals** (PC1, PC2): ``n_steps`` latents ``mean + s·component`` with the score ``s``
  evenly spaced between the 5th and 95th percentiles of the particles' scores on that axis.

Files, figures and maps are written by :func:`cryonoo.analysis.analyze.analyze_landscape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryonoo.analysis.inputs import check_ks, check_latents
from cryonoo.eval.clusters import PCA, as_latents, kmeans
from cryonoo.eval.embedding import umap_fit_transform

__all__ = [
    "DEFAULT_KS",
    "KMEANS_MAX_FIT",
    "N_TRAVERSAL",
    "TRAVERSAL_PERCENTILES",
    "UMAP_MAX_FIT",
    "ClusterResult",
    "Landscape",
    "Traversal",
    "assign_nearest",
    "cluster_latents",
    "compute_landscape",
    "fit_pca",
    "nearest_on_data",
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

_CHUNK_ELEMENTS = 1 << 21  # float64 elements per distance chunk (16 MiB)


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
    fit_idx = _subsample(arr.shape[0], max_fit, seed)
    if fit_idx is None:
        embedded = umap_fit_transform(arr, seed=seed)
        return None if embedded is None else embedded[0]
    rest = np.ones(arr.shape[0], dtype=bool)
    rest[fit_idx] = False
    embedded = umap_fit_transform(arr[fit_idx], arr[rest], seed=seed)
    if embedded is None:
        return None
    emb = np.empty((arr.shape[0], 2))
    emb[fit_idx], emb[rest] = embedded
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
