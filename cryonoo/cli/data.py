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
        int | None,
        typer.Option("-D", "--box", help="Image size in px of the stack you train on."),
    ] = None,
    apix: Annotated[float | None, typer.Option(help="Pixel size in Å (override).")] = None,
    kv: Annotated[float | None, typer.Option("--kv", help="Voltage in kV (override).")] = None,
    cs_mm: Annotated[
        float | None, typer.Option("--cs", help="Spherical aberration in mm (override).")
    ] = None,
    amp: Annotated[
        float | None, typer.Option("-w", "--amp-contrast", help="Amplitude contrast (override).")
    ] = None,
    ps: Annotated[
        float | None, typer.Option("--ps", help="Phase shift in degrees (override).")
    ] = None,
    hetrefine: Annotated[bool, typer.Option(help="cryoSPARC heterogeneous refinement.")] = False,
    abinit: Annotated[bool, typer.Option(help="cryoSPARC ab-initio (alignments_class_0).")] = False,
) -> None:
    """Convert .star/.cs metadata into cryoDRGN poses.pkl and ctf.pkl.

    Writes each table the file carries: a file without angles (a RELION 3.0 CTF-only .star, a
    cryoSPARC import or 2-D job's .cs) gives ctf.pkl alone, one without CTF gives poses.pkl
    alone. Poses: RELION Euler angles → matrices as cryoDRGN does; shifts in box fractions.
    CTF: (N, 9) [D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]; --kv, --cs, -w, --ps override
    the file. A .cs carries its box and pixel size: its shifts are divided by its own box
    (blob/shape), and -D (a downsampled stack's box) sets the ctf.pkl box and scales its pixel
    size by blob/shape / D (unless --apix is given).
    """
    from cryonoo.io.mrc import ParticleFileError

    suffix = metadata.suffix.lower()
    if suffix not in (".star", ".cs"):
        _fail(f"{metadata}: expected a .star or .cs file")
    overrides = {"kv": kv, "cs": cs_mm, "w": amp, "ps": ps}
    try:
        if suffix == ".star":
            poses, ctf = _parse_star(metadata, box, apix, overrides)
        else:
            poses, ctf = _parse_cs(metadata, box, apix, abinit, hetrefine)
            ctf = _override_ctf(ctf, overrides)
    except (ValueError, KeyError, ParticleFileError) as exc:
        _fail(str(exc))
    _write_parsed(outdir, metadata, poses, ctf)


def _parse_star(metadata: Path, box, apix, overrides: dict):
    """``(poses | None, ctf | None)`` of a .star; ``None`` for a table it does not carry."""
    from cryonoo.io.star import read_star, star_ctf, star_poses

    star = read_star(metadata)
    angles = ("_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi")
    poses = ctf = None
    if all(star.values(c) is not None for c in angles):
        poses = star_poses(star, box=box, apix=apix)
    if star.values("_rlnDefocusU") is not None:
        ctf = star_ctf(star, box=box, apix=apix, **overrides)
    if poses is None and ctf is None:
        _fail(f"{metadata}: neither poses ({', '.join(angles)}) nor CTF (_rlnDefocusU) found")
    return poses, ctf


def _parse_cs(metadata: Path, box, apix, abinit: bool, hetrefine: bool):
    """``(poses | None, ctf | None)`` of a .cs (module docstring of ``parse`` for -D/--apix)."""
    from cryonoo.io.cryosparc import cs_ctf, cs_poses, read_cs

    cs = read_cs(metadata)
    names = set(cs.dtype.names or ())
    group = "alignments_class_0" if abinit else "alignments3D"
    poses = ctf = None
    if f"{group}/pose" in names:
        poses = cs_poses(cs, abinit=abinit, hetrefine=hetrefine, where=metadata)
    if "ctf/df1_A" in names:
        ctf = cs_ctf(cs, where=metadata)
        if box is not None:
            ctf[:, 1] *= ctf[:, 0] / box
            ctf[:, 0] = box
        if apix is not None:
            ctf[:, 1] = apix
    if poses is None and ctf is None:
        _fail(f"{metadata}: neither poses ({group}/pose) nor CTF (ctf/df1_A) found")
    return poses, ctf


def _override_ctf(ctf, values: dict):
    """``ctf (N, 9)`` with the given kV, Cs, w, phase-shift columns set (``None``: keep)."""
    if ctf is not None:
        for column, key in ((5, "kv"), (6, "cs"), (7, "w"), (8, "ps")):
            if values[key] is not None:
                ctf[:, column] = values[key]
    return ctf


def _write_parsed(outdir: Path, metadata: Path, poses, ctf) -> None:
    import numpy as np

    from cryonoo.io.cryodrgn import save_ctf_pkl, save_poses

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    if poses is not None:
        save_poses(outdir / "poses.pkl", *poses)
        written.append(str(outdir / "poses.pkl"))
    if ctf is not None:
        save_ctf_pkl(outdir / "ctf.pkl", ctf)
        written.append(str(outdir / "ctf.pkl"))
    n = len(poses[0]) if poses is not None else len(ctf)
    detail = (
        f" (box {int(np.unique(ctf[:, 0])[0])}, {float(np.median(ctf[:, 1])):.4g} Å/px)"
        if ctf is not None
        else ""
    )
    console.print(f"{n:,} particles of {metadata} → {', '.join(written)}{detail}")
    if poses is None:
        console.print("no poses in the file: ctf.pkl only")
    if ctf is None:
        console.print("no CTF in the file: poses.pkl only")


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
