"""Latent-space analysis command: analyze."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cryonoo.cli import _fail, _progress, app, console


def _latent_file(run: Any, zfile: Path | None) -> Path:
    """The latents to analyze: ``--zfile`` or the run's ``z.N.pkl`` at the loaded epoch."""
    if zfile is not None:
        return zfile
    path = run.run_dir / f"z.{run.epoch}.pkl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; give the latents with --zfile (e.g. from `cryonoo encode`)"
        )
    return path


def _load_inputs(
    run: Any, zpath: Path, ks: str, labels: Path | None, color_by: Path | None
) -> tuple[Any, tuple[int, ...], Any, Any]:
    """Latents ``(N, zdim)``, cluster counts, labels ``(N,)`` and values ``(N,)``, validated."""
    from cryonoo.analysis.inputs import (
        check_ks,
        check_latents,
        check_per_particle,
        load_latents,
        load_per_particle,
        parse_ks,
    )

    z = check_latents(load_latents(zpath), run.model.zdim, name=str(zpath))
    n = z.shape[0]
    k_list = check_ks(parse_ks(ks), n)
    lab = None
    if labels is not None:
        lab = check_per_particle(load_per_particle(labels), n, f"--labels {labels}")
    col = None
    if color_by is not None:
        values = load_per_particle(color_by)
        col = check_per_particle(values, n, f"--color-by {color_by}", numeric=True)
    return z, k_list, lab, col


def _run_analysis(run: Any, z: Any, outdir: Path, options: dict[str, Any]) -> Any:
    """:func:`~cryonoo.analysis.analyze.analyze_landscape` with a progress bar over the maps."""
    from cryonoo.analysis.analyze import analyze_landscape, count_maps

    dev = next(run.model.parameters()).device

    def volume_fn(t: Any) -> Any:
        return run.model.volume(t.to(dev), norm_std=run.norm_std)

    with _progress() as progress:
        task = progress.add_task("maps", total=count_maps(options["ks"], z.shape[1]))
        try:
            return analyze_landscape(
                z,
                outdir,
                volume_fn=volume_fn,
                on_volume=lambda: progress.advance(task),
                **options,
            )
        except ValueError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"cannot write the analysis to {outdir}: {exc}")
    return None  # not reached: _fail exits


def _summary(result: Any, elapsed: float) -> None:
    """Print the table of outputs of an analysis."""
    rec, out = result.record, result.outdir
    files = rec["files"]
    table = Table(title=f"analysis of {rec['n_particles']:,} latents (zdim {rec['zdim']}): {out}")
    for col in ("output", "files", "details"):
        table.add_column(col)
    ev = ", ".join(f"{v:.1%}" for v in rec["pca"]["explained_variance_ratio"][:4])
    table.add_row("report", files["report"], f"{elapsed:.1f} s")
    table.add_row("summary", files["summary"], f"PCA explained variance {ev}")
    table.add_row("figures", f"{len(files['figures'])} PNG", ", ".join(files["figures"]))
    for name, s in files["series"].items():
        maps = f"{len(s['maps'])} maps" if s["maps"] else "no maps"
        level = f", level {s['level']:.4g}" if s["level"] is not None else ""
        if name in rec["traversals"]:
            lo, hi = rec["traversals"][name]["percentiles"]
            detail = f"PC score {lo:g}th–{hi:g}th percentile"
        else:
            detail = f"counts {rec['kmeans'][name.removeprefix('kmeans')]['counts']}"
        table.add_row(name, f"{s['directory']}/ ({maps}{level})", detail)
    console.print(table)
    if not rec["umap"]["computed"]:
        console.print(f"[yellow]{rec['umap']['note']}[/]")


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    zfile: Annotated[
        Path | None,
        typer.Option(help="Latents (z.pkl / .npy / .txt, N × zdim; default: the run's z.N.pkl)."),
    ] = None,
    outdir: Annotated[
        Path | None,
        typer.Option(
            "-o", "--outdir", help="Output directory (default: RUN/analyze.N or RUN/analyze.STEM)."
        ),
    ] = None,
    ks: Annotated[str, typer.Option(help="k-means cluster counts, comma-separated.")] = "5,20",
    labels: Annotated[
        Path | None, typer.Option(help="Per-particle labels (.pkl/.npy/.txt) to color by.")
    ] = None,
    color_by: Annotated[
        Path | None,
        typer.Option("--color-by", help="Per-particle numbers (.npy/.pkl/.txt) to color by."),
    ] = None,
    apix: Annotated[
        float | None, typer.Option(help="Voxel size in Å (default: from the data).")
    ] = None,
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of k-means, UMAP and subsamples.")] = 0,
    umap: Annotated[bool, typer.Option(help="Compute a UMAP (needs umap-learn).")] = True,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Analyze latents without ground truth: PCA, UMAP, k-means, PC traversals, maps, report.

    Writes to OUTDIR: index.html (one-page report), analysis.json, PNG figures, and for each k
    and for PC1/PC2 a folder of maps (vol_NNN.mrc) with a ChimeraX script (.cxc) opening them
    as a volume series. Centroid maps are decoded at the particle nearest each k-means centroid;
    traversals span the 5th–95th percentile of the PC scores. See docs/analysis.md.
    """
    import time

    from cryonoo.train.encode import resolve_device
    from cryonoo.train.run import load_run

    if apix is not None and not apix > 0:
        _fail(f"--apix must be > 0 Å, got {apix}")
    try:
        run = load_run(run_dir, epoch, resolve_device(device))
        zpath = _latent_file(run, zfile)
        z, k_list, lab, col = _load_inputs(run, zpath, ks, labels, color_by)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    if outdir is None:
        outdir = run.run_dir / f"analyze.{run.epoch if zfile is None else zpath.stem}"
    source = {"run": str(run.run_dir), "epoch": run.epoch, "zfile": str(zpath)}
    source["labels"] = None if labels is None else str(labels)
    source["color_by"] = None if color_by is None else str(color_by)
    options = {
        "ks": k_list,
        "labels": lab,
        "color_by": col,
        "color_by_name": color_by.stem if color_by is not None else "color-by",
        "voxel_size": float(apix or run.data.get("apix") or 1.0),
        "seed": seed,
        "use_umap": umap,
        "source": source,
    }
    t0 = time.perf_counter()
    result = _run_analysis(run, z, outdir, options)
    _summary(result, time.perf_counter() - t0)
