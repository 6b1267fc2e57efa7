"""Particle selections from latents, written back in the formats the particles came from.

Conventions
-----------
* Indices are **0-based** positions in the particle list the latents ``z`` ``(N, d)`` describe
  (cryoDRGN's ``--ind`` convention); RELION's ``idx@stack`` image names are 1-based positions in
  a stack and are left untouched.
* :func:`select_indices` intersects every criterion given (clusters of per-particle labels, an
  axis-aligned box or a polygon in 2-D coordinates, an index array); ``invert`` complements the
  result. With no criterion every particle is selected.
* Writers check everything first and write atomically (:mod:`cryonoo.io.atomic`): on an error
  nothing exists under the final name. ``n`` (the latents' count) must equal the file's rows.
* ``.star`` subsets keep every block (``data_optics`` unchanged), the particle table's columns in
  their order and the selected rows in the order given, each value as read (strings), so
  ``_rlnImageName`` still points at the original stacks. ``.cs`` subsets keep the structured
  records and their dtype.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.path import Path as PolygonPath

from cryonoo.io.atomic import atomic_write
from cryonoo.io.cryodrgn import _dump
from cryonoo.io.cryosparc import read_cs
from cryonoo.io.mrc import ParticleFileError
from cryonoo.io.star import StarFile, StarTable, read_star_raw, write_star_blocks

__all__ = [
    "check_row_count",
    "read_originals",
    "select_indices",
    "subset_indices",
    "write_cs_subset",
    "write_index_pkl",
    "write_selection",
    "write_star_subset",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- selection
def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of particles) must be a positive integer, got {n!r}")
    return int(n)


def _cluster_mask(n: int, labels: Any, clusters: Iterable[Any]) -> np.ndarray:
    """``(n,)`` bool: particles whose label is one of ``clusters``."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must hold one value per particle, shape ({n},); got {lab.shape}")
    wanted = np.asarray(list(clusters))
    if wanted.size == 0:
        raise ValueError("no cluster ids given (e.g. clusters=[0, 3])")
    present = np.unique(lab)
    missing = [c.item() for c in wanted if not np.isin(c, present)]
    if missing:
        raise ValueError(f"cluster ids {missing} not in the labels (present: {present.tolist()})")
    return np.isin(lab, wanted)


def _check_coords(n: int, coords: Any) -> np.ndarray:
    xy = np.asarray(coords, dtype=np.float64)
    if xy.shape != (n, 2):
        raise ValueError(
            f"coords must have shape ({n}, 2) (one 2-D point per particle), got {xy.shape}"
        )
    return xy


def _box_mask(xy: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """``(n,)`` bool: points ``xy`` ``(n, 2)`` inside ``(xmin, xmax, ymin, ymax)`` (inclusive)."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise ValueError(f"box must be 4 finite numbers (xmin, xmax, ymin, ymax), got {box!r}")
    xmin, xmax, ymin, ymax = b
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"box needs xmin ≤ xmax and ymin ≤ ymax, got {b.tolist()}")
    x, y = xy[:, 0], xy[:, 1]
    return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def _polygon_mask(xy: np.ndarray, polygon: Any) -> np.ndarray:
    """``(n,)`` bool: points ``xy`` ``(n, 2)`` inside the polygon ``(m, 2)``, ``m ≥ 3``."""
    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2:
        raise ValueError(f"polygon must be vertices of shape (m, 2), got {poly.shape}")
    if poly.shape[0] < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {poly.shape[0]}")
    if not np.isfinite(poly).all():
        raise ValueError("polygon vertices contain NaN or infinite values")
    return PolygonPath(poly).contains_points(xy)


def subset_indices(indices: Any, n: int | None, source: object = "indices") -> np.ndarray:
    """``indices`` as ``(k,)`` int64, ``k ≥ 1``, distinct, each in ``[0, n)`` (``≥ 0`` if no n)."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"{source}: indices must be a 1-D integer array, got {arr.dtype} {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{source}: no indices (nothing selected)")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{source}: negative index {int(arr.min())} (indices are 0-based)")
    if n is not None and arr.max() >= n:
        raise ValueError(
            f"{source}: index {int(arr.max())} out of range for {n} particles "
            f"(0-based, 0 … {n - 1})"
        )
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{source}: index {int(uniq[counts > 1][0])} appears "
            f"{int(counts.max())} times; indices must be distinct"
        )
    return arr


def density_bins(n: int) -> int:
    """Bins per axis for :func:`local_density`: ~10 particles per bin on average (8 … 256)."""
    return int(np.clip(np.sqrt(n / 10), 8, 256))


def local_density(xy: np.ndarray, bins: int | None = None) -> np.ndarray:
    """``(n,)`` particles per bin of a ``bins × bins`` histogram over ``xy``'s range, for each
    particle the count of its own bin (O(n) time and memory, vectorized); ``bins`` defaults
    to :func:`density_bins`."""
    bins = density_bins(len(xy)) if bins is None else int(bins)
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    ix = np.clip(np.searchsorted(xe, xy[:, 0], side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ye, xy[:, 1], side="right") - 1, 0, bins - 1)
    return counts[ix, iy]


def _density_mask(xy: np.ndarray, quantile: float) -> np.ndarray:
    if not (isinstance(quantile, (int, float)) and 0 <= quantile < 1):
        raise ValueError(f"density quantile must be in [0, 1), got {quantile!r}")
    density = local_density(xy)
    return density >= np.quantile(density, quantile)


def select_indices(
    n: int,
    *,
    labels: Any = None,
    clusters: Iterable[Any] | None = None,
    coords: Any = None,
    box: Sequence[float] | None = None,
    polygon: Any = None,
    index: Any = None,
    density_quantile: float | None = None,
    invert: bool = False,
) -> np.ndarray:
    """Sorted distinct 0-based ``(k,)`` int64 indices of the selected particles out of ``n``.

    ``density_quantile`` ``q`` in [0, 1) with ``coords``: keep the particles whose local
    density (:func:`local_density`) is at least the ``q``-quantile of all particles' (``q =
    0.1`` drops the sparsest ~10 %: outliers and junk away from the landscape's populated
    regions).

    ``labels`` ``(n,)`` with ``clusters`` (ids to keep); ``coords`` ``(n, 2)`` (e.g. PC1/PC2
    scores) with ``box`` ``(xmin, xmax, ymin, ymax)`` (inclusive) and/or ``polygon`` ``(m, 2)``,
    ``m ≥ 3`` (:meth:`matplotlib.path.Path.contains_points`); ``index`` ``(k,)`` 0-based.
    Criteria intersect; ``invert`` complements the result. :class:`ValueError` names the problem,
    including an empty selection.
    """
    n = _check_n(n)
    mask = np.ones(n, dtype=bool)
    if (labels is None) != (clusters is None):
        raise ValueError("select by cluster with both labels (one per particle) and clusters")
    if labels is not None:
        mask &= _cluster_mask(n, labels, clusters)  # type: ignore[arg-type]
    if coords is not None:
        xy = _check_coords(n, coords)
        if box is None and polygon is None and density_quantile is None:
            raise ValueError("coords given without a box, polygon or density quantile")
        if density_quantile is not None:
            mask &= _density_mask(xy, density_quantile)
        if box is not None:
            mask &= _box_mask(xy, box)
        if polygon is not None:
            mask &= _polygon_mask(xy, polygon)
    elif box is not None or polygon is not None or density_quantile is not None:
        raise ValueError("a box, polygon or density selection needs coords of shape (n, 2)")
    if index is not None:
        keep = np.zeros(n, dtype=bool)
        keep[subset_indices(index, n, "index")] = True
        mask &= keep
    if invert:
        mask = ~mask
    if not mask.any():
        raise ValueError(
            f"nothing selected: no particle out of {n} matches the criteria"
            + (" (inverted)" if invert else "")
        )
    return np.flatnonzero(mask).astype(np.int64)


# --------------------------------------------------------------------------- writers
def check_row_count(rows: int, n: int | None, source: object) -> None:
    """ParticleFileError naming both counts when a file's ``rows`` differ from ``n`` latents."""
    if n is not None and rows != n:
        raise ParticleFileError(
            f"{source}: {rows} particles in the file but {n} latents; the latents must describe "
            "the same particles, in the same order, as the file"
        )


def write_index_pkl(path: PathLike, indices: Any) -> None:
    """Write 0-based ``(k,)`` indices as a cryoDRGN index ``.pkl`` (pickled int64 array)."""
    _dump(path, subset_indices(indices, None, path))


def _particle_block(star: StarFile) -> str:
    """The name of ``star``'s particle table."""
    table = star.particles
    return next(name for name, block in star.blocks.items() if block is table)


def write_star_subset(
    src: PathLike | StarFile, indices: Any, path: PathLike, *, n: int | None = None
) -> None:
    """Write the rows ``indices`` ``(k,)`` of ``src``'s particle table, all else unchanged.

    ``src`` is a ``.star`` path or a :func:`~cryonoo.io.star.read_star_raw` result; ``n`` is the
    latents' count, checked against the file's rows.
    """
    star = src if isinstance(src, StarFile) else read_star_raw(src)
    name = _particle_block(star)
    part = star.blocks[name]
    check_row_count(len(part), n, star.path)
    idx = subset_indices(indices, len(part), star.path)
    sub = StarTable(name, {lab: col[idx] for lab, col in part.columns.items()}, dict(part.pairs))
    write_star_blocks(path, {**star.blocks, name: sub})


def write_cs_subset(
    src: PathLike | np.ndarray, indices: Any, path: PathLike, *, n: int | None = None
) -> None:
    """Write the records ``indices`` ``(k,)`` of a cryoSPARC ``.cs`` (same dtype) to ``path``.

    ``src`` is a ``.cs`` path or its structured array; ``n`` as in :func:`write_star_subset`.
    The exact file name is kept (no ``.npy`` is appended).
    """
    cs = src if isinstance(src, np.ndarray) else read_cs(src)
    where = "cryoSPARC array" if isinstance(src, np.ndarray) else Path(os.fspath(src))
    check_row_count(len(cs), n, where)
    sub = cs[subset_indices(indices, len(cs), where)]
    with atomic_write(path) as f:
        np.save(f, sub, allow_pickle=False)


def read_originals(
    star: PathLike | None, cs: PathLike | None, n: int
) -> tuple[StarFile | None, np.ndarray | None]:
    """The particles' raw ``.star`` (:func:`~cryonoo.io.star.read_star_raw`) and ``.cs``
    records (each ``None`` when not given), each checked to have ``n`` rows, one per latent."""
    meta = read_star_raw(star) if star is not None else None
    if meta is not None:
        check_row_count(len(meta), n, star)
    records = read_cs(cs) if cs is not None else None
    if records is not None:
        check_row_count(len(records), n, cs)
    return meta, records


def write_selection(
    stem: PathLike,
    indices: Any,
    n: int,
    *,
    star: StarFile | None = None,
    records: np.ndarray | None = None,
) -> list[Path]:
    """Write ``STEM.ind.pkl`` [``STEM.star``] [``STEM.cs``] for 0-based ``indices`` ``(k,)``.

    ``star`` (a :func:`~cryonoo.io.star.read_star_raw` result) and ``records`` (a ``.cs``
    structured array) must have one row per latent (``n``); every input is checked before the
    first file is written, and each file is written atomically. Returns the paths written.
    """
    n = _check_n(n)
    sel = subset_indices(indices, n, "selection")
    if star is not None:
        check_row_count(len(star.particles), n, star.path)
    if records is not None:
        check_row_count(len(records), n, "cryoSPARC records")
    base = Path(os.fspath(stem))
    paths = [Path(f"{base}.ind.pkl")]
    base.parent.mkdir(parents=True, exist_ok=True)
    write_index_pkl(paths[0], sel)
    if star is not None:
        paths.append(Path(f"{base}.star"))
        write_star_subset(star, sel, paths[-1], n=n)
    if records is not None:
        paths.append(Path(f"{base}.cs"))
        write_cs_subset(records, sel, paths[-1], n=n)
    return paths
