"""``cryonoo analyze``: compute a latent landscape, decode its maps and write the report.

:func:`analyze_landscape` writes, under ``OUTDIR`` (file names in ``docs/analysis.md``)::

    analysis.json  index.html  pca_scores.npy  [umap.npy]
    pca_explained_variance.png  pca_density.png  pca_kmeans{k}.png  [pca_color_by.png]
    [pca_labels.png]  [umap_density.png  umap_kmeans{k}.png  umap_color_by.png  umap_labels.png]
    kmeans{k}/  labels.npy  centers_ind.txt  z_values.txt  [vol_000.mrc …  kmeans{k}.cxc]
    pc1/ pc2/   pc_scores.txt  z_values.txt  [vol_000.mrc … vol_{n−1}.mrc  pc1.cxc]

The centroid maps are decoded at the latents of the on-data particles nearest the k-means
centroids. Maps (bracketed: only with ``decode=True``) are float32 MRC with the voxel size in the
header; each ``.cxc`` opens its series in ChimeraX as one volume series at the level
``mean + 2·std`` of the series' first map. Every file is written atomically
(:mod:`cryonoo.io.atomic`), and all inputs are validated before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.analysis.chimerax import chimerax_script, map_level
from cryonoo.analysis.figures import write_figures
from cryonoo.analysis.files import relative, write_npy, write_rows, write_text
from cryonoo.analysis.inputs import check_ks, check_latents, check_per_particle
from cryonoo.analysis.landscape import DEFAULT_KS, N_TRAVERSAL, Landscape, compute_landscape
from cryonoo.analysis.report import analysis_record, html_report
from cryonoo.eval.clusters import decode_volumes
from cryonoo.io.mrc import write_mrc

__all__ = ["AnalysisResult", "VolumeFn", "analyze_landscape", "count_maps"]


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
    for i, vol in enumerate(decode_volumes(latents, volume_fn)):
        if i == 0:
            level = map_level(vol)
        path = directory / f"vol_{i:03d}.mrc"
        write_mrc(path, vol, voxel_size=voxel_size)
        paths.append(path)
        if on_volume is not None:
            on_volume()
    return paths, level


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
    write_text(script, chimerax_script([p.name for p in paths], level, name, play=play))
    return {
        "maps": [relative(p, out) for p in paths],
        "chimerax": relative(script, out),
        "level": level,
    }


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
        write_npy(d / "labels.npy", cl.labels)
        write_rows(d / "centers_ind.txt", cl.center_indices, fmt="%d")
        write_rows(d / "z_values.txt", land.z[cl.center_indices])
        entry: dict[str, Any] = {"directory": name, "labels": f"{name}/labels.npy"}
        entry["centers_ind"] = f"{name}/centers_ind.txt"
        entry["z_values"] = f"{name}/z_values.txt"
        entry.update(_series_maps(out, d, name, land.z[cl.center_indices], decode, play=False))
        series[name] = entry
    for name, tr in land.traversals.items():
        d = out / name
        d.mkdir(exist_ok=True)
        write_rows(d / "pc_scores.txt", tr.scores)
        write_rows(d / "z_values.txt", tr.latents)
        entry = {"directory": name, "pc_scores": f"{name}/pc_scores.txt"}
        entry["z_values"] = f"{name}/z_values.txt"
        entry.update(_series_maps(out, d, name, tr.latents, decode, play=True))
        series[name] = entry
    return series


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


def _write_arrays(out: Path, land: Landscape) -> dict[str, str | None]:
    """``pca_scores.npy`` and (when computed) ``umap.npy``, float32; their file entries."""
    write_npy(out / "pca_scores.npy", land.scores.astype(np.float32))
    files: dict[str, str | None] = {"pca_scores": "pca_scores.npy", "umap": None}
    if land.umap is not None:
        write_npy(out / "umap.npy", land.umap.astype(np.float32))
        files["umap"] = "umap.npy"
    return files


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
    files.update(_write_arrays(out, land))
    files["figures"] = write_figures(out, land, lab, col, color_by_name, seed)
    job = (volume_fn, float(voxel_size), on_volume) if decode and volume_fn else None
    files["series"] = _write_series(out, land, job)
    record = analysis_record(
        land, files, seed, {"voxel_size_A": float(voxel_size), **(source or {})}
    )
    write_text(out / "analysis.json", json.dumps(record, indent=1) + "\n")
    write_text(out / "index.html", html_report(record))
    return AnalysisResult(outdir=out, landscape=land, record=record)
