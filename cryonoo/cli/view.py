"""Viewer command: view (the latent landscape in the browser; pick particles, save them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cryonoo.cli import _fail, _progress, app, console


def _inputs(source: Path, zfile: Path | None, epoch: int | None, device: str) -> tuple[Any, Path]:
    """``(run or None, latent file)``: a run directory (its ``z.N.pkl`` or ``--zfile``) or a
    latent file."""
    from cryonoo.cli.analysis import _latent_file

    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (give a run directory or a latent file)")
    if not source.is_dir():
        if zfile is not None:
            raise ValueError("--zfile goes with a run directory; here the latents are the file")
        return None, source
    from cryonoo.train.encode import resolve_device
    from cryonoo.train.run import load_run

    run = load_run(source, epoch, resolve_device(device))
    return run, _latent_file(run, zfile)


def _load(
    source: Path, zfile: Path | None, analysis: Path | None, color_by: Path | None, opts: dict
) -> tuple[Any, Any]:
    """``(run or None, ViewData)`` with every input checked."""
    from cryonoo.analysis.inputs import check_latents, load_latents, load_per_particle
    from cryonoo.analysis.view_data import view_data

    run, zpath = _inputs(source, zfile, opts["epoch"], opts["device"])
    z = check_latents(load_latents(zpath), run.model.zdim if run else None, name=str(zpath))
    values = None if color_by is None else load_per_particle(color_by)
    source_info = {"run": run.run_dir if run else None, "zfile": zpath, "analysis": analysis}
    data = view_data(
        z, analysis=analysis, color_by=values,
        color_by_name=color_by.stem if color_by is not None else "color-by",
        k=opts["k"], seed=opts["seed"], source=source_info,
    )  # fmt: skip
    return run, data


def _write_static(run: Any, data: Any, page: Path, map_box: int) -> None:
    """Write the self-contained page (centroid maps embedded) and say what it holds."""
    from cryonoo.analysis.files import write_text
    from cryonoo.analysis.viewer import model_volume_fn, static_page

    fn = None if run is None else model_volume_fn(run.model, run.norm_std, map_box)
    if fn is None or data.clusters.maps is not None:
        html = static_page(data, fn)
    else:
        with _progress() as progress:
            task = progress.add_task("centroid maps", total=data.clusters.k)
            html = static_page(data, fn, on_map=lambda: progress.advance(task))
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text(page, html)
    has_maps = run is not None or data.clusters.maps is not None
    maps = f"maps of {data.clusters.k} k-means centroids" if has_maps else "no maps"
    console.print(f"{page}: {data.n:,} particles, {maps}, {len(html) / 2**20:.1f} MiB")


def _open_browser(url: str) -> None:
    """Open ``url`` in the default browser when there is a display."""
    import os
    import sys
    import webbrowser

    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        console.print("no display: open the URL in a browser (e.g. through an SSH tunnel)")
        return
    webbrowser.open(url)


def _serve(server: Any, url: str, stem: Path, open_browser: bool) -> None:
    """Serve until Ctrl-C."""
    console.print(f"cryonoo view at [bold]{url}[/] (Ctrl-C to stop)")
    console.print(f"'save selection' writes {stem}.ind.pkl …")
    if open_browser:
        _open_browser(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


@app.command("view")
def view(
    source: Annotated[
        Path, typer.Argument(help="Run directory (its z.N.pkl) or latents (z.pkl/.npy/.txt).")
    ],
    zfile: Annotated[
        Path | None, typer.Option(help="Latents of the run's particles (e.g. `cryonoo encode`).")
    ] = None,
    analysis: Annotated[
        Path | None,
        typer.Option(help="A `cryonoo analyze` folder of these latents: UMAP, k-means, maps."),
    ] = None,
    color_by: Annotated[
        Path | None,
        typer.Option("--color-by", help="Per-particle numbers (.npy/.pkl/.txt) to colour by."),
    ] = None,
    star: Annotated[
        Path | None, typer.Option(help="The particles' .star: saving writes the selected rows.")
    ] = None,
    cs: Annotated[
        Path | None, typer.Option(help="The particles' cryoSPARC .cs: saving writes the rows.")
    ] = None,
    out_stem: Annotated[
        Path, typer.Option("-o", "--out", help="Saving writes STEM.ind.pkl [STEM.star] [STEM.cs].")
    ] = Path("selected"),
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Write a self-contained page PAGE.html and exit."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the page in a browser.")
    ] = True,
    kmeans_k: Annotated[
        int | None, typer.Option("--kmeans", help="k-means clusters (default 20).")
    ] = None,
    map_box: Annotated[
        int, typer.Option(help="Largest box of the decoded maps (voxels; smaller is faster).")
    ] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the k-means and jitter.")] = 0,
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Look at the latent landscape in the browser, pick particles and save them.

    The page shows every particle in the PC1/PC2 plane (and the UMAP of --analysis), coloured
    by k-means cluster or --color-by; box and lasso selections, invert, and 'save selection',
    which writes what `cryonoo select` writes: STEM.ind.pkl (0-based) and, with --star/--cs,
    STEM.star/STEM.cs. Clicking a particle shows central sections of its map (decoded from its
    latent when SOURCE is a run). With --write, a self-contained offline page is written
    instead (maps of the k-means centroids; the selection is downloaded as an index .txt).
    Nothing is loaded from the internet. See docs/analysis.md.
    """
    from cryonoo.analysis.selection import read_originals
    from cryonoo.io.mrc import ParticleFileError

    if map_box < 2:
        _fail(f"--map-box must be ≥ 2 voxels, got {map_box}")
    opts = {"epoch": epoch, "device": device, "k": kmeans_k, "seed": seed}
    try:
        run, data = _load(source, zfile, analysis, color_by, opts)
        meta, records = read_originals(star, cs, data.n)
    except (ValueError, KeyError, OSError, ParticleFileError) as exc:
        _fail(str(exc))
    if write is not None:
        if star is not None or cs is not None:
            console.print("[yellow]--star/--cs are used by the served page only[/]")
        try:
            _write_static(run, data, write, map_box)
        except (ValueError, OSError) as exc:
            _fail(f"cannot write the page {write}: {exc}")
        return
    from cryonoo.analysis.view_server import build_app, make_server
    from cryonoo.analysis.viewer import model_volume_fn

    try:
        fn = None if run is None else model_volume_fn(run.model, run.norm_std, map_box)
        view_app = build_app(data, out_stem, volume_fn=fn, star=meta, records=records)
        server = make_server(view_app, port)
    except (ValueError, OSError) as exc:
        _fail(f"cannot serve on 127.0.0.1:{port}: {exc}")
    host, bound = server.server_address[:2]
    _serve(server, f"http://{host}:{bound}/", out_stem, open_browser)
