"""The ``cryonoo`` command-line interface (Typer).

Each command's docstring is its ``--help`` text. Heavy modules are imported inside the commands so
that ``cryonoo --help`` stays fast.
"""

from __future__ import annotations

import enum
import os
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


def _recipe_names() -> list[str]:
    from cryonoo.train.recipes import RECIPES

    return list(RECIPES)


RecipeName = enum.Enum("RecipeName", {n: n for n in _recipe_names()}, type=str)


def _resolve_particles(particles: Path, ind: str | None) -> str | None:
    """Dataset directories train on their 'train' split unless told otherwise."""
    from cryonoo.io.dataset_dir import is_dataset_dir

    if ind is None and is_dataset_dir(particles):
        return "train"
    return None if ind == "all" else ind


def _run_training(
    config,
    particles: Path,
    poses: Path | None,
    ctf: Path | None,
    ind: str | None,
    outdir: Path,
    device: str,
    resume: bool,
    force: bool,
    datadir: Path | None,
    drop_bad: bool = False,
) -> None:
    """Shared body of ``train`` and ``ablate``."""
    import numpy as np

    from cryonoo.io.dataset import Preprocessing, open_dataset
    from cryonoo.train.checkpoint import checkpoint_epochs, read_run_config
    from cryonoo.train.trainer import NonFiniteLossError, train

    ind = _resolve_particles(particles, ind)
    norm_std, done_epochs = None, 0
    if resume and checkpoint_epochs(outdir):
        norm_std = read_run_config(outdir)["data"]["norm_std"]
        done_epochs = checkpoint_epochs(outdir)[-1]
    try:
        dataset = open_dataset(
            particles,
            poses,
            ctf,
            ind=ind,
            datadir=datadir,
            lazy=config.lazy,
            preprocessing=Preprocessing(
                invert=config.invert, window=config.window, window_inner=config.window_r
            ),
            norm_std=norm_std,
            ctf_rescale=config.ctf_rescale,
            drop_bad=drop_bad,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    if dataset.dropped.size:
        outdir.mkdir(parents=True, exist_ok=True)
        np.savetxt(outdir / "dropped_particles.txt", dataset.dropped, fmt="%d")
        console.print(
            f"[yellow]left out {dataset.dropped.size} particles with NaN/Inf or constant "
            f"pixels[/] (listed in {outdir / 'dropped_particles.txt'})"
        )
    info = {"particles": str(particles), "poses": str(poses), "ctf": str(ctf), "ind": ind}
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun worker: rank 0 reports
        try:
            train(
                config, dataset, outdir, device=device, resume=resume, force=force, data_info=info
            )
        except (FileExistsError, ValueError, NonFiniteLossError) as exc:
            _fail(str(exc))
        return
    console.print(
        f"[bold]{config.name}[/]: {len(dataset):,} particles of {dataset.box} px "
        f"({'lazy' if dataset.lazy else 'in memory'}), {config.epochs} epochs → {outdir}"
    )
    with _progress() as progress:
        task = progress.add_task(
            "training", total=config.epochs * len(dataset), completed=done_epochs * len(dataset)
        )

        def on_step(event: dict) -> None:
            terms = event["terms"]
            shown = " ".join(
                f"{k}={terms[k]:.4g}" for k in ("loss", "recon", "ssl/loss") if k in terms
            )
            progress.update(
                task,
                advance=event["images"],
                description=f"epoch {event['epoch']}/{config.epochs} {shown}",
            )

        try:
            result = train(
                config,
                dataset,
                outdir,
                device=device,
                resume=resume,
                force=force,
                data_info=info,
                on_step=on_step,
            )
        except (FileExistsError, ValueError) as exc:
            _fail(str(exc))
        except NonFiniteLossError as exc:
            _fail(f"{exc}. Lower the learning rate or check those particles.")
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted[/]: the last complete epoch's checkpoint is in {outdir}; "
                f"continue with the same command plus --resume"
            )
            raise typer.Exit(code=130) from None
    table = Table(title=f"{config.name}: {outdir}")
    keys = [
        k for k in ("loss", "recon", "kld", "ssl/loss") if result.stats and k in result.stats[-1]
    ]
    for col in ["epoch", *keys, "lr", "images/s"]:
        table.add_column(col, justify="right")
    for rec in result.stats[-min(5, len(result.stats)) :]:
        table.add_row(
            str(rec["epoch"]),
            *(f"{rec[k]:.5g}" if k in rec else "–" for k in keys),
            f"{rec['lr']:.2g}",
            f"{rec['images_per_s'] or 0:.1f}",
        )
    console.print(table)


_PARTICLES = typer.Argument(help="Stack (.mrcs/.txt/.star/.cs) or a dataset directory.")
_OUT = typer.Option("-o", "--outdir", help="Run directory for checkpoints, latents, stats.")


@app.command("train")
def train_command(
    particles: Annotated[Path, _PARTICLES],
    outdir: Annotated[Path, _OUT],
    poses: Annotated[Path | None, typer.Option(help="cryoDRGN poses.pkl.")] = None,
    ctf: Annotated[Path | None, typer.Option(help="cryoDRGN ctf.pkl.")] = None,
    recipe: Annotated[RecipeName, typer.Option(help="Training recipe.")] = RecipeName["cryonoo"],  # type: ignore[valid-type]
    ind: Annotated[
        str | None,
        typer.Option(help="Index file (.pkl/.npy/.txt) or a split name ('train', 'test', 'all')."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="SPLIT.npz:KEY, e.g. split.npz:train.")] = None,
    epochs: Annotated[int | None, typer.Option("-n", "--epochs", help="Number of epochs.")] = None,
    zdim: Annotated[int | None, typer.Option(help="Latent dimension.")] = None,
    enc_layers: Annotated[int | None, typer.Option(help="Encoder hidden layers.")] = None,
    enc_dim: Annotated[int | None, typer.Option(help="Encoder width.")] = None,
    dec_layers: Annotated[int | None, typer.Option(help="Decoder hidden layers.")] = None,
    dec_dim: Annotated[int | None, typer.Option(help="Decoder width.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("-b", "--batch-size", help="Batch size.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Epochs before self-distillation starts.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw.")] = None,
    noise_sigma: Annotated[
        float | None, typer.Option(help="Noise σ of the stack (default: estimated).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto.")] = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in OUTDIR.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Resume even if the settings differ.")] = False,
    lazy: Annotated[
        bool | None, typer.Option(help="Stream particles from disk (default: by size).")
    ] = None,
    datadir: Annotated[Path | None, typer.Option(help="Where .star/.cs image paths live.")] = None,
    ctf_rescale: Annotated[
        bool, typer.Option(help="Particles were downsampled from ctf.pkl's box.")
    ] = False,
    drop_bad: Annotated[
        bool, typer.Option(help="Leave out particles with NaN/Inf or constant pixels.")
    ] = False,
) -> None:
    """Train a model (default: the CryoNOO recipe) on particles with known poses and CTF.

    PARTICLES may be a dataset directory from `cryonoo simulate`; then poses and CTF are found
    there and training uses its 'train' split (override with --ind test/all or a file).
    Outputs: OUTDIR/config.json, stats.jsonl, weights.N.pt and z.N.pkl (cryoDRGN layout).
    """
    from dataclasses import replace

    from cryonoo.train.recipes import get_recipe

    overrides = {
        "epochs": epochs,
        "zdim": zdim,
        "enc_layers": enc_layers,
        "enc_dim": enc_dim,
        "dec_layers": dec_layers,
        "dec_dim": dec_dim,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_epochs": warmup,
        "seed": seed,
        "noise_sigma": noise_sigma,
        "lazy": lazy,
    }
    try:
        config = replace(
            get_recipe(recipe.value), **{k: v for k, v in overrides.items() if v is not None}
        )
        if ctf_rescale:
            config = replace(config, ctf_rescale=True)
    except (KeyError, ValueError) as exc:
        _fail(str(exc))
    _run_training(
        config,
        particles,
        poses,
        ctf,
        split or ind,
        outdir,
        device,
        resume,
        force,
        datadir,
        drop_bad,
    )


@app.command()
def ablate(
    particles: Annotated[Path, _PARTICLES],
    outdir: Annotated[Path, _OUT],
    poses: Annotated[Path | None, typer.Option(help="cryoDRGN poses.pkl.")] = None,
    ctf: Annotated[Path | None, typer.Option(help="cryoDRGN ctf.pkl.")] = None,
    ssl: Annotated[
        str | None, typer.Option(help="SSL objective (see `cryonoo list`); 'none' turns SSL off.")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="Head spec ('1024-1024-1024') or 'none'.")
    ] = None,
    noise_factors: Annotated[
        str | None,
        typer.Option(
            "--noise-factors",
            "--views",
            help="Comma-separated noise factors, one view each, e.g. '1,2,3'.",
        ),
    ] = None,
    weight: Annotated[float | None, typer.Option(help="λ, the SSL weight.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up epochs.")] = None,
    augment: Annotated[str | None, typer.Option(help="Augmenter (see `cryonoo list`).")] = None,
    decoder_freeze: Annotated[bool, typer.Option(help="Freeze the decoder after warm-up.")] = False,
    epochs: Annotated[int | None, typer.Option("-n", "--epochs")] = None,
    zdim: Annotated[int | None, typer.Option()] = None,
    enc_dim: Annotated[int | None, typer.Option()] = None,
    dec_dim: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option("-b", "--batch-size")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    ind: Annotated[str | None, typer.Option(help="Index file or split name.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    resume: Annotated[bool, typer.Option()] = False,
    force: Annotated[bool, typer.Option()] = False,
) -> None:
    """Run one ablation arm: the CryoNOO recipe with one or more parts replaced.

    Example: `cryonoo ablate data/ -o runs/simsiam --ssl simsiam`.
    """
    from dataclasses import replace

    from cryonoo.ssl.augment import AUGMENTERS
    from cryonoo.ssl.objectives import SSL
    from cryonoo.train.recipes import get_recipe

    changes: dict = {"name": "ablate"}
    if ssl is not None:
        if ssl != "none" and ssl not in SSL:
            _fail(f"unknown ssl objective {ssl!r}; choose from: {', '.join(SSL.names())}, none")
        changes["ssl"] = None if ssl == "none" else ssl
    if augment is not None and augment not in AUGMENTERS:
        _fail(f"unknown augmenter {augment!r}; choose from: {', '.join(AUGMENTERS.names())}")
    if noise_factors is not None:
        try:
            changes["noise_factors"] = tuple(float(f) for f in noise_factors.split(","))
        except ValueError:
            _fail(f"--noise-factors must be comma-separated numbers, got {noise_factors!r}")
    extra = {
        "head": head,
        "ssl_weight": weight,
        "warmup_epochs": warmup,
        "augment": augment,
        "epochs": epochs,
        "zdim": zdim,
        "enc_dim": enc_dim,
        "dec_dim": dec_dim,
        "batch_size": batch_size,
        "seed": seed,
    }
    changes.update({k: v for k, v in extra.items() if v is not None})
    if decoder_freeze:
        changes["decoder_freeze"] = True
    try:
        config = replace(get_recipe("cryonoo"), **changes)
    except ValueError as exc:
        _fail(str(exc))
    _run_training(config, particles, poses, ctf, ind, outdir, device, resume, force, None)


@app.command()
def encode(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    particles: Annotated[Path, _PARTICLES],
    output: Annotated[Path, typer.Option("-o", "--output", help="Latents, cryoDRGN z.pkl layout.")],
    poses: Annotated[Path | None, typer.Option(help="poses.pkl (for shifts).")] = None,
    ctf: Annotated[Path | None, typer.Option(help="ctf.pkl (for the phase flip).")] = None,
    ind: Annotated[
        str | None, typer.Option(help="Index file or split name (default: all).")
    ] = None,
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size")] = 1024,
    device: Annotated[str, typer.Option()] = "auto",
    datadir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Amortized inference: latents for any particle stack in one encoder pass (no training).

    The particles are preprocessed exactly as the training data were (same normalization,
    inversion and window) and streamed from disk in batches.
    """
    import time

    import numpy as np

    from cryonoo.io.cryodrgn import save_z_pkl
    from cryonoo.io.dataset import Preprocessing, open_dataset
    from cryonoo.train.run import load_run
    from cryonoo.train.trainer import encode_dataset, resolve_device

    try:
        dev = resolve_device(device)
        run = load_run(run_dir, epoch, dev)
        cfg = run.train
        dataset = open_dataset(
            particles,
            poses,
            ctf,
            ind=None if ind == "all" else ind,
            datadir=datadir,
            lazy=True,
            preprocessing=Preprocessing(
                invert=cfg.invert, window=cfg.window, window_inner=cfg.window_r
            ),
            norm_std=run.norm_std,
            require_poses=False,
        )
        if dataset.D != run.model.D:
            box = run.model.D - 1
            raise ValueError(
                f"the model was trained on {box}-px images but {particles} has "
                f"{dataset.box}-px images; downsample them with `cryonoo downsample -D {box}`"
            )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    mu, logvar = encode_dataset(run.model, dataset, dev, batch_size=batch_size)
    elapsed = time.perf_counter() - t0
    save_z_pkl(output, mu, logvar)
    rate = len(mu) / max(elapsed, 1e-9)
    console.print(
        f"{len(mu):,} latents (zdim {mu.shape[1]}) → {output} in {elapsed:.1f} s "
        f"({rate:,.0f} images/s); mean |z| {np.linalg.norm(mu, axis=1).mean():.3f}"
    )


@app.command()
def volumes(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Directory for vol_NNN.mrc.")],
    z: Annotated[
        str | None,
        typer.Option(
            help="Latent values separated by spaces (zdim each; several latents one after another)."
        ),
    ] = None,
    zfile: Annotated[
        Path | None, typer.Option(help="z.pkl / .npy / .txt of latents (N, zdim).")
    ] = None,
    ind: Annotated[Path | None, typer.Option(help="Rows of --zfile to use.")] = None,
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    apix: Annotated[
        float | None, typer.Option(help="Voxel size in Å (default: from the data).")
    ] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Generate density maps (.mrc, voxel size set) for given latents."""
    import numpy as np
    import torch

    from cryonoo.io.cryodrgn import load_indices, load_z_pkl
    from cryonoo.io.mrc import write_mrc
    from cryonoo.train.run import load_run
    from cryonoo.train.trainer import resolve_device

    if (z is None) == (zfile is None):
        _fail("give exactly one of --z or --zfile")
    try:
        run = load_run(run_dir, epoch, resolve_device(device))
        zdim = run.model.zdim
        if z is not None:
            values = np.array([float(v) for v in z.replace(",", " ").split()], dtype=np.float32)
            if values.size == 0 or values.size % zdim:
                raise ValueError(f"--z needs a multiple of zdim={zdim} numbers, got {values.size}")
            lat = values.reshape(-1, zdim)
        else:
            suffix = zfile.suffix
            lat = (
                np.load(zfile)
                if suffix == ".npy"
                else np.loadtxt(zfile, ndmin=2)
                if suffix == ".txt"
                else load_z_pkl(zfile)[0]
            )
            lat = np.asarray(lat, dtype=np.float32).reshape(len(lat), -1)
            if lat.shape[1] != zdim:
                raise ValueError(
                    f"{zfile} has latents of width {lat.shape[1]}; the model's zdim is {zdim}"
                )
            if ind is not None:
                lat = lat[load_indices(ind, n=len(lat))]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    voxel = apix or run.data.get("apix") or 1.0
    outdir.mkdir(parents=True, exist_ok=True)
    dev = next(run.model.parameters()).device
    with torch.no_grad():
        for i, row in enumerate(lat):
            vol = run.model.volume(torch.from_numpy(row).to(dev), norm_std=run.norm_std)
            write_mrc(outdir / f"vol_{i:03d}.mrc", vol.float().cpu().numpy(), voxel_size=voxel)
    console.print(f"{len(lat)} maps ({run.model.D - 1}³, {voxel:.4g} Å) → {outdir}")


bench_app = typer.Typer(help="Benchmarks: generalization (and more).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _print_metrics_table(title: str, per_recipe: dict) -> None:
    """Paper-style tables (Table 1 FSC, Table 3 shift, label recovery) for one seed."""
    fsc = Table(title=f"{title} — per-image FSC_AUC, mean (std) / median")
    for col in ("recipe", "train", "test"):
        fsc.add_column(col, justify="right" if col != "recipe" else "left")
    shift = Table(title=f"{title} — train↔test latent shift (null: train↔train)")
    shift_keys = ("kld", "tv", "jsd", "hellinger", "wd")
    for col in ("recipe", *shift_keys, "labels seen/unseen"):
        shift.add_column(col, justify="right" if col != "recipe" else "left")

    def auc(m: dict, split: str) -> str:
        s = m.get("per_image_fsc", {}).get(split)
        return f"{s['mean']:.3f} ({s['std']:.3f}) / {s['median']:.3f}" if s else "–"

    for recipe, m in per_recipe.items():
        fsc.add_row(recipe, auc(m, "train"), auc(m, "test"))
        sh, null = m.get("latent_shift", {}), m.get("latent_shift_null", {})
        cells = [
            f"{sh[k]:.3f} ({null.get(k, float('nan')):.3f})" if sh.get(k) is not None else "–"
            for k in shift_keys
        ]
        lab = m.get("label_recovery")
        cells.append(f"{lab['seen']:.2f} / {lab['unseen']:.2f}" if lab else "–")
        shift.add_row(recipe, *cells)
    console.print(fsc)
    console.print(shift)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory (`cryonoo simulate` layout).")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Report directory.")],
    split: Annotated[str, typer.Option(help="Held-out split to compare with 'train'.")] = "test",
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of image picks, KDE folds, k-means.")] = 0,
    bandwidth: Annotated[
        float | None, typer.Option(help="KDE bandwidth (default: cross-validated).")
    ] = None,
    kmeans: Annotated[str, typer.Option(help="Comma-separated k for k-means maps.")] = "5,20",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Measure generalization: per-image FSC_AUC, train↔test latent shift, label recovery.

    Writes REPORT_DIR/metrics.json, latent PCA (and UMAP) and FSC figures, training curves and
    k-means centroid maps of the held-out latents (kmeansK/vol_*.mrc).
    """
    from cryonoo.eval.report import evaluate_run

    try:
        ks = tuple(int(k) for k in kmeans.split(",") if k.strip())
        metrics = evaluate_run(
            run_dir,
            dataset,
            outdir,
            epoch=epoch,
            split=split,
            seed=seed,
            device=device,
            kmeans_k=ks,
            bandwidth=bandwidth,
            log=lambda msg: console.print(f"[dim]{msg}[/]"),
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    _print_metrics_table(str(run_dir), {metrics["recipe"]: metrics})
    for name, path in metrics["figures"].items():
        console.print(f"{name}: {path}")
    console.print(f"metrics: {outdir / 'metrics.json'}")


def _benchmark_config(**kw):
    from cryonoo.eval.benchmark import BenchmarkConfig

    return BenchmarkConfig(**{k: v for k, v in kw.items() if v is not None})


@app.command()
def demo(
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Where everything goes.")] = Path(
        "cryonoo_demo"
    ),
    box: Annotated[int | None, typer.Option("-D", "--box", help="Image size (default 32).")] = None,
    n_images: Annotated[int, typer.Option("-n", "--n-images", help="Images.")] = 3000,
    epochs: Annotated[int | None, typer.Option(help="Epochs per recipe.")] = None,
    enc_dim: Annotated[int | None, typer.Option(help="Encoder width.")] = None,
    dec_dim: Annotated[int | None, typer.Option(help="Decoder width.")] = None,
    zdim: Annotated[int | None, typer.Option(help="Latent dimension.")] = None,
    snr: Annotated[float | None, typer.Option(help="Signal-to-noise ratio.")] = None,
    n_conformations: Annotated[
        int | None, typer.Option(help="Conformations of the phantom (default 100).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of data and training.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """The main job: does self-distillation generalize better than the plain VAE?

    Simulates the built-in igg-1d dataset, trains the `cryodrgn` and `cryonoo` recipes with the
    same seed, architecture and epochs on its train split, evaluates both on train and test, and
    prints the paper's tables. Writes OUTDIR/summary.json ({recipe: metrics}) and figures.
    Defaults finish in about ten minutes on a 2-core CPU; flags scale it up.
    """
    import json

    from cryonoo.io.atomic import atomic_write

    config = _benchmark_config(
        box=box,
        n_images=n_images,
        epochs=epochs,
        enc_dim=enc_dim,
        dec_dim=dec_dim,
        zdim=zdim,
        snr=snr,
        n_conformations=n_conformations,
    )
    results = _run_with_progress(outdir, ["cryodrgn", "cryonoo"], [seed], config, device)
    per_recipe = results[str(seed)]
    with atomic_write(outdir / "summary.json", "w") as fh:
        json.dump(per_recipe, fh, indent=2)
    _print_metrics_table("demo", per_recipe)
    for recipe, m in per_recipe.items():
        for name, path in m["figures"].items():
            console.print(f"{recipe} {name}: {path}")
    console.print(f"summary: {outdir / 'summary.json'}")


def _run_with_progress(outdir: Path, recipes: list[str], seeds: list[int], config, device: str):
    from cryonoo.eval.benchmark import run_benchmark

    n_train = round(config.n_images * 0.8)
    total = len(recipes) * len(seeds) * config.epochs * n_train
    with _progress() as progress:
        task = progress.add_task("benchmark", total=total)

        def on_step(event: dict) -> None:
            progress.update(task, advance=event["images"])

        def log(msg: str) -> None:
            progress.update(task, description=msg)

        try:
            return run_benchmark(
                outdir, recipes, seeds, config, device=device, log=log, on_step=on_step
            )
        except (KeyError, ValueError) as exc:
            _fail(str(exc))


@bench_app.command("generalization")
def bench_generalization(
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("cryonoo_bench"),
    recipes: Annotated[str, typer.Option(help="Comma-separated recipes.")] = (
        "cryodrgn,cryonoo,simsiam,invariance-only"
    ),
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 … seeds−1).")] = 3,
    phantom: Annotated[str | None, typer.Option(help="Built-in phantom.")] = None,
    box: Annotated[int | None, typer.Option("-D", "--box")] = None,
    n_images: Annotated[int | None, typer.Option("-n", "--n-images")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    enc_dim: Annotated[int | None, typer.Option()] = None,
    dec_dim: Annotated[int | None, typer.Option()] = None,
    snr: Annotated[float | None, typer.Option()] = None,
    n_conformations: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Generalization over several seeds and recipes: mean ± std across seeds.

    Saves OUTDIR/results.json (every metric of every run), summary.json and summary.md.
    """
    import json

    from cryonoo.eval.benchmark import format_tables, summarize_seeds
    from cryonoo.io.atomic import atomic_write

    names = [r.strip() for r in recipes.split(",") if r.strip()]
    config = _benchmark_config(
        phantom=phantom,
        box=box,
        n_images=n_images,
        epochs=epochs,
        enc_dim=enc_dim,
        dec_dim=dec_dim,
        snr=snr,
        n_conformations=n_conformations,
    )
    results = _run_with_progress(outdir, names, list(range(seeds)), config, device)
    summary = summarize_seeds(results)
    with atomic_write(outdir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    markdown = format_tables(summary)
    with atomic_write(outdir / "summary.md", "w") as fh:
        fh.write(markdown)
    console.print(markdown)
    console.print(f"results: {outdir / 'results.json'}, {outdir / 'summary.md'}")


if __name__ == "__main__":  # pragma: no cover
    app()
