"""The ``cryonoo`` command-line interface (Typer).

Each command's docstring is its ``--help`` text. Heavy modules are imported inside the commands so
that ``cryonoo --help`` stays fast.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import cryonoo
from cryonoo.data.phantoms import PHANTOMS

app = typer.Typer(
    name="cryonoo",
    help="Amortized heterogeneous cryo-EM reconstruction with self-distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

PhantomName = enum.Enum("PhantomName", {n: n for n in PHANTOMS.names()}, type=str)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cryonoo {cryonoo.__version__}")
        raise typer.Exit()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Amortized heterogeneous cryo-EM reconstruction with self-distillation."""


@app.command("list")
def list_components() -> None:
    """List every registry and the components registered in it."""
    from cryonoo.registries import all_registries

    table = Table(title="cryonoo components")
    table.add_column("registry", style="bold cyan")
    table.add_column("name", style="green")
    table.add_column("description")
    for reg_name, registry in all_registries().items():
        for i, name in enumerate(registry.names()):
            table.add_row(reg_name if i == 0 else "", name, registry.describe(name))
    console.print(table)


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(help="Dataset directory to write.")],
    phantom: Annotated[
        PhantomName, typer.Option(help="Built-in heterogeneous phantom.")
    ] = PhantomName["igg-1d"],  # type: ignore[valid-type]
    volumes: Annotated[
        str | None,
        typer.Option(help="Glob of your own maps (one conformation each), e.g. 'maps/*.mrc'."),
    ] = None,
    box: Annotated[int, typer.Option("-D", "--box", help="Image size in pixels (even).")] = 64,
    n_images: Annotated[int, typer.Option("-n", "--n-images", help="Number of images.")] = 20_000,
    snr: Annotated[float, typer.Option(help="Signal variance / noise variance.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    apix: Annotated[
        float | None, typer.Option(help="Pixel size in Å (default: phantom's field of view).")
    ] = None,
    shift_extent: Annotated[
        float, typer.Option(help="In-plane shifts uniform in ±this many pixels.")
    ] = 0.0,
    oversample: Annotated[
        int, typer.Option(help="Render at this multiple of the box, then Fourier-crop.")
    ] = 2,
    ctf: Annotated[bool, typer.Option(help="Apply a CTF (300 kV, Cs 2.7 mm, w 0.1).")] = True,
    defocus_min: Annotated[float, typer.Option(help="Minimum defocus (Å).")] = 10_000.0,
    defocus_max: Annotated[float, typer.Option(help="Maximum defocus (Å).")] = 25_000.0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of images held out.")] = 0.2,
    n_conformations: Annotated[
        int | None, typer.Option(help="Conformations of a continuous phantom (default 100).")
    ] = None,
) -> None:
    """Simulate a heterogeneous dataset with ground truth.

    Writes OUTDIR/particles.mrcs, poses.pkl, ctf.pkl (cryoDRGN formats), labels.npy, split.npz
    (train/test), gt/vol_NNN.mrc and config.json. Particles are white (contrast-inverted), as
    RELION and cryoSPARC export them.
    """
    from cryonoo.data.simulate import SimulationConfig, simulate_from_maps, simulate_phantom
    from cryonoo.physics.simulate import CTFDistribution

    try:
        cfg = SimulationConfig(
            box=box,
            n_images=n_images,
            snr=snr,
            seed=seed,
            apix=apix,
            ctf=CTFDistribution(defocus_min_A=defocus_min, defocus_max_A=defocus_max)
            if ctf
            else None,
            shift_extent_px=shift_extent,
            oversample=oversample,
            test_fraction=test_fraction,
        )
    except ValueError as exc:
        _fail(str(exc))
    with _progress() as progress:
        task = progress.add_task("simulating", total=2 * n_images)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        if volumes:
            result = simulate_from_maps(outdir, volumes, cfg, progress=update)
        else:
            kwargs = {} if n_conformations is None else {"n_conformations": n_conformations}
            ph = PHANTOMS.build(phantom.value, **kwargs)
            result = simulate_phantom(outdir, ph, cfg, progress=update)
    table = Table(title=f"dataset {result.root}")
    table.add_column("item")
    table.add_column("value", justify="right")
    conf = result.config
    for key in ("n_images", "box", "apix", "n_conformations", "snr", "noise_sigma"):
        value = conf[key]
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("train / test", f"{len(result.split['train'])} / {len(result.split['test'])}")
    console.print(table)


@app.command("estimate-noise")
def estimate_noise(
    particles: Annotated[Path, typer.Argument(help="Stack (.mrcs/.txt/.star/.cs) or dataset dir.")],
    k_thresh: Annotated[
        int | None, typer.Option(help="Use radial bins above this (default 0.8 × Nyquist).")
    ] = None,
    max_images: Annotated[int, typer.Option(help="Evenly spaced images to use.")] = 10_000,
    datadir: Annotated[Path | None, typer.Option(help="Where .star/.cs image paths live.")] = None,
) -> None:
    """Estimate the white-noise σ of a particle stack (radially averaged high-frequency power).

    σ is in the units of the stack's pixels, before any window or normalization.
    """
    import numpy as np

    from cryonoo.io.stack import open_images
    from cryonoo.physics.noise import estimate_noise_sigma

    path = particles / "particles.mrcs" if particles.is_dir() else particles
    source = open_images(path, datadir=datadir)
    idx = np.linspace(0, len(source) - 1, min(max_images, len(source))).astype(np.int64)
    images = source.images(np.unique(idx))
    est = estimate_noise_sigma(images, k_thresh, batch_size=1024)
    console.print(f"σ = {est.sigma:.6g}  ({len(est.per_image)} images of {len(source)})")


if __name__ == "__main__":  # pragma: no cover
    app()
