"""Selection command: select (particles by cluster, PCA region or index, written back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cryonoo.cli import _fail, app, console


def _numbers(text: str, flag: str, kind: type = float) -> list[Any]:
    """``"1,2.5"`` → ``[1.0, 2.5]``; ValueError naming ``flag`` on anything else."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def _box(text: str | None) -> list[float] | None:
    if text is None:
        return None
    box = _numbers(text, "--pca-box")
    if len(box) != 4:
        raise ValueError(f"--pca-box needs 4 numbers xmin,xmax,ymin,ymax, got {len(box)}")
    return box


def _polygon(text: str | None) -> Any:
    if text is None:
        return None
    import numpy as np

    xy = _numbers(text, "--pca-polygon")
    if len(xy) % 2 or len(xy) < 6:
        raise ValueError(
            f"--pca-polygon needs x,y pairs of at least 3 vertices (6+ numbers), got {len(xy)}"
        )
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _labels(z: Any, labels: Path | None, k: int | None, seed: int) -> Any:
    """Per-particle labels ``(N,)``: from the file, from k-means, or None."""
    from cryonoo.analysis.inputs import check_per_particle, load_per_particle
    from cryonoo.eval.clusters import kmeans

    if labels is not None and k is not None:
        raise ValueError("give --labels or --kmeans, not both")
    if labels is not None:
        return check_per_particle(load_per_particle(labels), z.shape[0], str(labels))
    if k is not None:
        return kmeans(z, k, seed=seed).labels
    return None


def _pca_coords(z: Any, needed: bool) -> Any:
    """PC1/PC2 scores ``(N, 2)`` of the latents, or None when not ``needed``."""
    from cryonoo.analysis.landscape import fit_pca

    if not needed:
        return None
    pca = fit_pca(z)
    if pca.n_components < 2:
        raise ValueError(f"--pca-box/--pca-polygon need zdim ≥ 2 latents, got {z.shape[1]}")
    return pca.transform(z)[:, :2]


def _select(
    z: Any,
    labels: Path | None,
    clusters: str | None,
    k: int | None,
    seed: int,
    box: str | None,
    polygon: str | None,
    index: Path | None,
    density: float | None,
    invert: bool,
) -> Any:
    """The selected 0-based indices (every input checked)."""
    from cryonoo.analysis.selection import select_indices
    from cryonoo.io.cryodrgn import load_indices

    lab = _labels(z, labels, k, seed)
    if (lab is None) != (clusters is None):
        raise ValueError("--clusters goes with --labels or --kmeans (and they need --clusters)")
    ids = None if clusters is None else _numbers(clusters, "--clusters", int)
    b, poly = _box(box), _polygon(polygon)
    coords = _pca_coords(z, b is not None or poly is not None or density is not None)
    ind = None if index is None else load_indices(index, z.shape[0])
    if lab is None and coords is None and ind is None:
        raise ValueError(
            "give a criterion: --labels/--kmeans with --clusters, --pca-box, --pca-polygon, "
            "--density-quantile or --index"
        )
    n = z.shape[0]
    return select_indices(
        n, labels=lab, clusters=ids, coords=coords, box=b, polygon=poly, index=ind,
        density_quantile=density, invert=invert,
    )  # fmt: skip


@app.command("select")
def select(
    zfile: Annotated[Path, typer.Argument(help="Latents: cryoDRGN z.pkl, .npy or .txt (N, d).")],
    out_stem: Annotated[
        Path,
        typer.Option("-o", "--out", help="Output stem: STEM.ind.pkl [STEM.star] [STEM.cs]."),
    ],
    labels: Annotated[
        Path | None, typer.Option(help="Per-particle labels (.pkl/.npy/.txt), with --clusters.")
    ] = None,
    clusters: Annotated[
        str | None, typer.Option(help="Cluster ids to keep, e.g. 0,3 (--labels or --kmeans).")
    ] = None,
    kmeans_k: Annotated[
        int | None, typer.Option("--kmeans", help="Label by k-means with K clusters.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the k-means.")] = 0,
    pca_box: Annotated[
        str | None, typer.Option(help="PC1/PC2 box xmin,xmax,ymin,ymax (inclusive).")
    ] = None,
    pca_polygon: Annotated[
        str | None, typer.Option(help="PC1/PC2 polygon x1,y1,x2,y2,x3,y3,… (≥ 3 vertices).")
    ] = None,
    index: Annotated[
        Path | None, typer.Option(help="0-based index file (.pkl/.npy/.txt) to intersect.")
    ] = None,
    density_quantile: Annotated[
        float | None,
        typer.Option(
            help="Keep particles whose PC1/PC2 density is ≥ this quantile (0.1 drops the "
            "sparsest ~10 %)."
        ),
    ] = None,
    invert: Annotated[
        bool, typer.Option("--invert", help="Keep the particles NOT selected.")
    ] = False,
    star: Annotated[
        Path | None, typer.Option(help="The particles' .star: write the selected rows.")
    ] = None,
    cs: Annotated[
        Path | None, typer.Option(help="The particles' cryoSPARC .cs: write the selected rows.")
    ] = None,
) -> None:
    """Select particles from their latents and write the selection where they came from.

    Criteria intersect: clusters of --labels (or of a seeded --kmeans), a box or polygon in
    the PC1/PC2 plane of the latents, a --density-quantile there, an --index file; --invert
    complements. Writes OUT_STEM.ind.pkl (0-based indices, cryoDRGN --ind) and, when given,
    OUT_STEM.star (every block and column of --star, selected rows only, image names
    unchanged) and OUT_STEM.cs.
    The .star/.cs must have one row per latent, in the same order.
    """
    from cryonoo.analysis.inputs import check_latents, load_latents
    from cryonoo.analysis.selection import read_originals

    try:
        z = check_latents(load_latents(zfile), name=str(zfile))
        sel = _select(
            z, labels, clusters, kmeans_k, seed, pca_box, pca_polygon, index, density_quantile,
            invert,
        )  # fmt: skip
        meta, records = read_originals(star, cs, len(z))
    except (ValueError, KeyError, OSError) as exc:
        _fail(str(exc))
    written = _write(out_stem, sel, meta, records, len(z))
    console.print(f"selected {len(sel):,} / {len(z):,} particles")
    for path in written:
        console.print(f"  {path}")


def _write(stem: Path, sel: Any, meta: Any, records: Any, n: int) -> list[Path]:
    """Write STEM.ind.pkl [STEM.star] [STEM.cs]; returns the paths."""
    from cryonoo.analysis.selection import write_selection

    try:
        return write_selection(stem, sel, n, star=meta, records=records)
    except (ValueError, OSError) as exc:
        _fail(f"cannot write the selection {stem}: {exc}")
    return []  # not reached: _fail exits
