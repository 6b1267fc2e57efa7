"""Latent-space analysis helpers: PCA, k-means with centers snapped to data, volumes per center.

Everything is plain numpy (float64) and vectorized over points; inputs may be numpy arrays or
torch tensors (moved to the CPU).

* :func:`pca_fit` fits a PCA by SVD of the centered data. Components are unit rows, ordered by
  decreasing explained variance, with a deterministic sign (the largest-magnitude loading of each
  component is positive).
* :func:`kmeans` runs Lloyd's algorithm from k-means++ seeds drawn from a seeded generator, keeps
  the restart with the lowest inertia, and, as cryoDRGN's ``analyze`` does, reports for every
  center the index of the nearest data point (``z[center_indices]`` are the snapped centers, which
  are actual latents of real particles).
* :func:`write_cluster_volumes` decodes one volume per center and writes ``vol_000.mrc …`` plus
  ``centers.txt`` for viewing in ChimeraX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.io.mrc import write_mrc

__all__ = [
    "PCA",
    "KMeansResult",
    "as_latents",
    "decode_volumes",
    "kmeans",
    "pca_fit",
    "write_cluster_volumes",
]


def as_latents(z: Any, name: str = "z") -> np.ndarray:
    """Return ``z`` as a finite float64 array ``(N, d)``; an ``(N,)`` input becomes ``(N, 1)``."""
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().numpy()
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d) or (N,), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


@dataclass(frozen=True, eq=False)
class PCA:
    """A fitted principal component analysis.

    Attributes
    ----------
    mean:
        ``(d,)`` mean of the fitting data.
    components:
        ``(n_components, d)`` orthonormal principal axes, by decreasing variance.
    explained_variance_ratio:
        ``(n_components,)`` fraction of the total variance along each axis.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def n_components(self) -> int:
        """Number of principal axes kept."""
        return int(self.components.shape[0])

    def transform(self, z: Any) -> np.ndarray:
        """Project latents ``(N, d)`` onto the principal axes: ``(N, n_components)``."""
        arr = as_latents(z)
        if arr.shape[1] != self.mean.shape[0]:
            raise ValueError(f"z must have {self.mean.shape[0]} columns, got shape {arr.shape}")
        return (arr - self.mean) @ self.components.T


def pca_fit(z_train: Any, n_components: int = 2) -> PCA:
    """Fit a PCA with ``n_components ≤ min(N, d)`` axes on latents ``(N, d)``."""
    z = as_latents(z_train, "z_train")
    n, d = z.shape
    if not 1 <= n_components <= min(n, d):
        raise ValueError(
            f"n_components must be in [1, min(N, d) = {min(n, d)}], got {n_components}"
        )
    mean = z.mean(axis=0)
    zc = z - mean
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    comps = vt[:n_components]
    # deterministic orientation: the largest-magnitude loading of each axis is positive
    pivot = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(n_components), pivot])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = s**2
    total = var.sum()
    ratio = var[:n_components] / total if total > 0 else np.zeros(n_components)
    return PCA(mean=mean, components=comps, explained_variance_ratio=ratio)


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes
    ----------
    labels:
        ``(N,)`` int64 cluster index of every point, in ``0 … k−1``.
    centers:
        ``(k, d)`` cluster means.
    center_indices:
        ``(k,)`` int64 index of the data point nearest each center (``z[center_indices]`` are the
        centers snapped to the data).
    inertia:
        Sum of squared distances of the points to their centers.
    """

    labels: np.ndarray
    centers: np.ndarray
    center_indices: np.ndarray
    inertia: float


def _sq_dists(z: np.ndarray, z_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``(N, k)`` squared Euclidean distances between points ``(N, d)`` and centers ``(k, d)``."""
    d2 = z @ (-2.0 * centers.T)
    d2 += np.sum(centers**2, axis=1)
    d2 += z_sq[:, None]
    return np.maximum(d2, 0.0, out=d2)


def _kmeanspp(z: np.ndarray, z_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: ``(k, d)`` centers, each drawn with probability ∝ squared distance."""
    n = z.shape[0]
    centers = np.empty((k, z.shape[1]))
    centers[0] = z[rng.integers(n)]
    closest = _sq_dists(z, z_sq, centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[j] = z[idx]
        closest = np.minimum(closest, _sq_dists(z, z_sq, centers[j : j + 1])[:, 0])
    return centers


def _lloyd(
    z: np.ndarray, z_sq: np.ndarray, centers: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations from ``centers``: ``(labels (N,), centers (k, d), inertia)``."""
    k, d = centers.shape
    labels = np.full(z.shape[0], -1, dtype=np.int64)
    for _ in range(max_iter):
        d2 = _sq_dists(z, z_sq, centers)
        new_labels = np.argmin(d2, axis=1)
        counts = np.bincount(new_labels, minlength=k)
        sums = np.stack([np.bincount(new_labels, z[:, j], minlength=k) for j in range(d)], axis=1)
        new_centers = sums / np.maximum(counts, 1)[:, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # re-seed empty clusters at the points farthest from their current centers
            far = np.argsort(-d2[np.arange(z.shape[0]), new_labels])[: empty.size]
            new_centers[empty] = z[far]
        shift = float(np.sum((new_centers - centers) ** 2))
        centers = new_centers
        if np.array_equal(new_labels, labels) or shift <= tol:
            labels = new_labels
            break
        labels = new_labels
    d2 = _sq_dists(z, z_sq, centers)
    labels = np.argmin(d2, axis=1)
    inertia = float(d2[np.arange(z.shape[0]), labels].sum())
    return labels, centers, inertia


def kmeans(
    z: Any, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100, tol: float = 1e-4
) -> KMeansResult:
    """Cluster latents ``z`` ``(N, d)`` into ``k ≤ N`` groups.

    Lloyd's algorithm from ``n_init`` k-means++ initializations drawn from
    ``numpy.random.default_rng(seed)``; the run with the lowest inertia is returned. The same seed
    gives the same result. Iterations stop when the assignment no longer changes or when the
    summed squared center shift falls below ``tol`` times the mean per-dimension variance.
    """
    arr = as_latents(z)
    n = arr.shape[0]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of points N = {n}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    # centering improves the conditioning of the expanded distance formula
    offset = arr.mean(axis=0)
    zc = arr - offset
    z_sq = np.sum(zc**2, axis=1)
    scale = float(z_sq.mean()) / arr.shape[1] or 1.0
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        init = _kmeanspp(zc, z_sq, int(k), rng)
        run = _lloyd(zc, z_sq, init, max_iter, tol * scale)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None
    labels, centers, inertia = best
    center_indices = np.argmin(_sq_dists(zc, z_sq, centers), axis=0).astype(np.int64)
    return KMeansResult(
        labels=labels.astype(np.int64),
        centers=centers + offset,
        center_indices=center_indices,
        inertia=inertia,
    )


def decode_volumes(
    latents: np.ndarray, volume_fn: Callable[[torch.Tensor], Any]
) -> Iterator[np.ndarray]:
    """Each row of ``latents (m, d)`` decoded by ``volume_fn`` (a float32 CPU tensor ``(d,)``
    → an ``(n, n, n)`` tensor or array, under ``no_grad``), as a float32 array, one at a time;
    ValueError if a result is not a cube."""
    rows = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    for i in range(rows.shape[0]):
        with torch.no_grad():
            vol = volume_fn(rows[i].clone())
        if isinstance(vol, torch.Tensor):
            vol = vol.detach().float().cpu().numpy()
        vol = np.asarray(vol, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume_fn must return an (n, n, n) volume, got shape {vol.shape}")
        yield vol


def write_cluster_volumes(
    centers_z: Any,
    volume_fn: Callable[[torch.Tensor], Any],
    outdir: str | Path,
    voxel_size: float,
) -> list[Path]:
    """Decode and write one volume per latent center.

    Parameters
    ----------
    centers_z:
        ``(k, d)`` latents (e.g. ``z[result.center_indices]``).
    volume_fn:
        Called with each row as a float32 CPU tensor ``(d,)``; returns an ``(n, n, n)`` array or
        tensor (e.g. ``lambda z: model.volume(z.to(device))``), evaluated under ``no_grad``.
    outdir:
        Created if needed; receives ``vol_000.mrc … vol_{k−1:03d}.mrc`` and ``centers.txt`` (one
        row of ``d`` values per center, in file order).
    voxel_size:
        Å per voxel written to the MRC headers.

    Returns the paths of the volume files, in center order.
    """
    z = as_latents(centers_z, "centers_z")
    if not float(voxel_size) > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, vol in enumerate(decode_volumes(z, volume_fn)):
        path = out / f"vol_{i:03d}.mrc"
        write_mrc(path, vol, voxel_size=float(voxel_size))
        paths.append(path)
    np.savetxt(out / "centers.txt", z, fmt="%.6g")
    return paths
