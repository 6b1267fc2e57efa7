"""Data commands: simulate, estimate-noise, parse, downsample."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cryonoo.cli import _fail, _progress, app, console
from cryonoo.data.phantoms import PHANTOMS

PhantomName = enum.Enum("PhantomName", {n: n for n in PHANTOMS.names()}, type=str)


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
            ph = PHANTOMS.build(phantom.value, n_conformations=n_conformations)
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


@app.command()
def parse(
    metadata: Annotated[Path, typer.Argument(help="RELION .star or cryoSPARC .cs file.")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Where to write the .pkl files.")],
    box: Annotated[
        int | None, typer.Option("-D", "--box", help="Image size in px (default: from the file).")
    ] = None,
    apix: Annotated[float | None, typer.Option(help="Pixel size in Å (override).")] = None,
    hetrefine: Annotated[bool, typer.Option(help="cryoSPARC heterogeneous refinement.")] = False,
    abinit: Annotated[bool, typer.Option(help="cryoSPARC ab-initio (alignments_class_0).")] = False,
) -> None:
    """Convert .star/.cs metadata into cryoDRGN poses.pkl and ctf.pkl.

    Poses: RELION Euler angles → matrices as cryoDRGN does; shifts in box fractions.
    CTF: (N, 9) [D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase].
    """
    import numpy as np

    from cryonoo.io.cryodrgn import save_ctf_pkl, save_poses
    from cryonoo.io.cryosparc import cs_ctf, cs_poses, read_cs
    from cryonoo.io.star import read_star, star_ctf, star_poses

    suffix = metadata.suffix.lower()
    try:
        if suffix == ".star":
            star = read_star(metadata)
            rots, trans = star_poses(star, box=box, apix=apix)
            ctf = star_ctf(star, box=box, apix=apix)
        elif suffix == ".cs":
            cs = read_cs(metadata)
            rots, trans = cs_poses(cs, box=box, abinit=abinit, hetrefine=hetrefine)
            ctf = cs_ctf(cs)
            if apix is not None:
                ctf[:, 1] = apix
        else:
            _fail(f"{metadata}: expected a .star or .cs file")
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    outdir.mkdir(parents=True, exist_ok=True)
    save_poses(outdir / "poses.pkl", rots, trans)
    save_ctf_pkl(outdir / "ctf.pkl", ctf)
    console.print(
        f"{len(rots):,} particles → {outdir / 'poses.pkl'}, {outdir / 'ctf.pkl'} "
        f"(box {int(np.unique(ctf[:, 0])[0])}, {float(np.median(ctf[:, 1])):.4g} Å/px)"
    )


@app.command()
def downsample(
    particles: Annotated[Path, typer.Argument(help="Stack (.mrcs/.txt/.star/.cs).")],
    box: Annotated[int, typer.Option("-D", "--box", help="New image size in px (even).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .mrcs stack.")],
    chunk: Annotated[int, typer.Option(help="Images per chunk (bounds memory).")] = 1000,
    datadir: Annotated[Path | None, typer.Option(help="Where .star/.cs image paths live.")] = None,
) -> None:
    """Downsample a particle stack by Fourier cropping (cryoDRGN's ``downsample``).

    Values are not rescaled, as in cryoDRGN; the pixel size becomes Apix · old / new. The stack is
    streamed in chunks and written atomically.
    """
    import mrcfile
    import numpy as np
    import torch

    from cryonoo.io.atomic import atomic_path
    from cryonoo.io.stack import open_images
    from cryonoo.physics.fft import fourier_crop

    source = open_images(particles, datadir=datadir)
    if box % 2 or not 0 < box <= source.box:
        _fail(f"--box must be even and ≤ the current box {source.box}, got {box}")
    n = len(source)
    apix = (source.apix or 1.0) * source.box / box
    with atomic_path(output) as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = apix
            with _progress() as progress:
                task = progress.add_task("downsampling", total=n)
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    images = torch.from_numpy(source.images(np.arange(start, stop)))
                    mrc.data[start:stop] = fourier_crop(images, box).numpy()
                    progress.update(task, completed=stop)
            mrc.update_header_stats()
    console.print(f"{n:,} images {source.box} → {box} px ({apix:.4g} Å/px) → {output}")
