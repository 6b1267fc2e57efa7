"""Training and inference commands: train, config, ablate, encode, volumes."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer
from rich.table import Table

from cryonoo.cli import PRECISION_OPTION, _fail, _progress, app, console

if TYPE_CHECKING:
    from cryonoo.train.cryodrgn_init import CryoDRGNStart
    from cryonoo.train.plan import ParticleSource


def _recipe_names() -> list[str]:
    from cryonoo.train.recipes import RECIPES

    return list(RECIPES)


RecipeName = enum.Enum("RecipeName", {n: n for n in _recipe_names()}, type=str)


def _run_training(
    config,
    source: ParticleSource,
    outdir: Path,
    *,
    device: str,
    resume: bool,
    force: bool,
    cryodrgn: CryoDRGNStart | None = None,
) -> None:
    """Shared body of ``train`` and ``ablate`` (``cryodrgn``: the cryoDRGN run to start from)."""
    from cryonoo.train.distributed import shutdown_distributed
    from cryonoo.train.plan import DROPPED_LIST, open_training_data
    from cryonoo.train.trainer import NonFiniteLossError, train

    try:
        dataset = open_training_data(
            config,
            source,
            run_dir=outdir,
            resume=resume,
            cryodrgn_norm_std=None if cryodrgn is None else cryodrgn.norm_std,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    if dataset.dropped.size:
        console.print(
            f"[yellow]left out {dataset.dropped.size} particles with NaN/Inf or constant "
            f"pixels[/] (listed in {outdir / DROPPED_LIST})"
        )
    run_kw = {
        "device": device,
        "resume": resume,
        "force": force,
        "data_info": source.describe(),
        "init_from": None if cryodrgn is None else cryodrgn.run_dir,
    }
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun worker: rank 0 reports
        try:
            train(config, dataset, outdir, **run_kw)
        except (FileExistsError, ValueError, NonFiniteLossError) as exc:
            _fail(str(exc))
        shutdown_distributed()
        return
    console.print(
        f"[bold]{config.name}[/]: {len(dataset):,} particles of {dataset.box} px "
        f"({'lazy' if dataset.lazy else 'in memory'}), {config.optim.epochs} epochs → {outdir}"
    )
    result = _train_with_progress(config, dataset, outdir, resume, run_kw)
    shutdown_distributed()
    console.print(_summary_table(config.name, outdir, result.stats))


def _train_with_progress(config, dataset, outdir: Path, resume: bool, run_kw: dict):
    """``train`` under a progress bar; every failure a clear message (and what is kept)."""
    from cryonoo.train.checkpoint import checkpoint_epochs
    from cryonoo.train.trainer import NonFiniteLossError, train

    done = checkpoint_epochs(outdir)[-1] if resume and checkpoint_epochs(outdir) else 0
    with _progress() as progress:
        task = progress.add_task(
            "training", total=config.optim.epochs * len(dataset), completed=done * len(dataset)
        )

        def on_step(event: dict) -> None:
            terms = event["terms"]
            shown = " ".join(
                f"{k}={terms[k]:.4g}" for k in ("loss", "recon", "ssl/loss") if k in terms
            )
            progress.update(
                task,
                advance=event["images"],
                description=f"epoch {event['epoch']}/{config.optim.epochs} {shown}",
            )

        try:
            return train(config, dataset, outdir, on_step=on_step, **run_kw)
        except (FileExistsError, ValueError) as exc:
            _fail(str(exc))
        except NonFiniteLossError as exc:
            _fail(
                f"{exc}. Lower the learning rate, check those particles, or pass "
                "--skip-nonfinite to drop such batches"
            )
        except torch.cuda.OutOfMemoryError:
            _fail(
                f"out of GPU memory at batch size {config.optim.batch_size}; use a smaller "
                "--batch-size (or --lazy). The last complete epoch's checkpoint in "
                f"{outdir} is intact: continue with --resume"
            )
        except OSError as exc:
            _fail(
                f"cannot write the run to {outdir}: {exc}. Free space or choose another -o; "
                "checkpoints already written are intact (continue with --resume)"
            )
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted[/]: the state at the interruption is saved in "
                f"{outdir / 'interrupted.pt'}; continue with the same command plus --resume"
            )
            raise typer.Exit(code=130) from None


def _summary_table(name: str, outdir: Path, stats: list[dict]) -> Table:
    """The last five epochs: losses, learning rate, throughput."""
    table = Table(title=f"{name}: {outdir}")
    keys = [k for k in ("loss", "recon", "kld", "ssl/loss") if stats and k in stats[-1]]
    for col in ["epoch", *keys, "lr", "images/s"]:
        table.add_column(col, justify="right")
    for rec in stats[-min(5, len(stats)) :]:
        table.add_row(
            str(rec["epoch"]),
            *(f"{rec[k]:.5g}" if k in rec else "–" for k in keys),
            f"{rec['lr']:.2g}",
            f"{rec['images_per_s'] or 0:.1f}",
        )
    return table


_PARTICLES = typer.Argument(help="Stack (.mrcs/.txt/.star/.cs) or a dataset directory.")
_OUT = typer.Option("-o", "--outdir", help="Run directory for checkpoints, latents, stats.")


@app.command("train")
def train_command(
    particles: Annotated[Path, _PARTICLES],
    outdir: Annotated[Path, _OUT],
    poses: Annotated[Path | None, typer.Option(help="cryoDRGN poses.pkl.")] = None,
    ctf: Annotated[Path | None, typer.Option(help="cryoDRGN ctf.pkl.")] = None,
    recipe: Annotated[
        RecipeName | None,  # type: ignore[valid-type]
        typer.Option(help="Training recipe (default: the config file's, else cryonoo)."),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file (.yaml/.json: sections model/optim/ssl/data/output, or a run's "
            "config.json); see `cryonoo config`.",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="One setting, section.key=value (e.g. ssl.weight=0.1, "
            "optim.lr_plateau=false); repeatable; over --config, under the flags.",
        ),
    ] = None,
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
    skip_nonfinite: Annotated[
        bool, typer.Option(help="Drop batches whose loss is NaN/Inf (counted in stats.jsonl).")
    ] = False,
    num_workers: Annotated[
        int, typer.Option(help="DataLoader worker processes reading and preprocessing batches.")
    ] = 0,
    precision: Annotated[str | None, PRECISION_OPTION] = None,
    init_from_cryodrgn: Annotated[
        Path | None,
        typer.Option(
            "--init-from-cryodrgn",
            help="A `cryodrgn train_vae` directory: start from its weights.pkl, with its "
            "architecture and preprocessing; SSL from epoch 0 unless --warmup is given.",
        ),
    ] = None,
) -> None:
    """Train a model (default: the CryoNOO recipe) on particles with known poses and CTF.

    PARTICLES may be a dataset directory from `cryonoo simulate`; then poses and CTF are found
    there and training uses its 'train' split (override with --ind test/all or a file).
    Outputs: OUTDIR/config.json, stats.jsonl, weights.N.pt and z.N.pkl (cryoDRGN layout).
    With --init-from-cryodrgn DIR the run starts from that cryoDRGN model (the paper's warm-up
    is such a run); architecture flags that are given must equal the checkpoint's.
    """
    from cryonoo.train.config_file import resolve_config
    from cryonoo.train.cryodrgn_init import start_from_cryodrgn
    from cryonoo.train.plan import ParticleSource

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
        "precision": precision,
        "ctf_rescale": ctf_rescale or None,  # a switch given only to turn it on
        "skip_nonfinite": skip_nonfinite or None,
        "num_workers": num_workers or None,
    }
    try:
        name = None if recipe is None else recipe.value
        config = resolve_config(name, config_file, sets or (), overrides)
        cryodrgn = None
        if init_from_cryodrgn is not None:
            cryodrgn = start_from_cryodrgn(config, init_from_cryodrgn, overrides)
            config = cryodrgn.config
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    source = ParticleSource(particles, poses, ctf, split or ind, datadir, drop_bad)
    _run_training(
        config, source, outdir, device=device, resume=resume, force=force, cryodrgn=cryodrgn
    )


@app.command("config")
def config_command(
    recipe: Annotated[
        RecipeName,  # type: ignore[valid-type]
        typer.Argument(help="The recipe to start from."),
    ] = RecipeName["cryonoo"],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="One setting, section.key=value; repeatable."),
    ] = None,
    full: Annotated[
        bool, typer.Option(help="Every setting, not only those that differ from RECIPE.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (.yaml/.json).")
    ] = None,
) -> None:
    """Print (or write) a recipe's settings as a file `cryonoo train --config` reads.

    Example: `cryonoo config sleep-4v-pv --set ssl.weight=0.1 -o run.yaml`, then
    `cryonoo train data/ -o runs/a --config run.yaml`.
    """
    import json

    import yaml

    from cryonoo.io.atomic import atomic_write
    from cryonoo.train.config_file import nested_config, resolve_config

    try:
        config = resolve_config(recipe.value, None, sets or ())
    except (KeyError, ValueError) as exc:
        _fail(str(exc))
    nested = nested_config(config, None if full else recipe.value)
    if full:
        nested = {"recipe": recipe.value, **nested}
    if output is not None and output.suffix == ".json":
        text = json.dumps(nested, indent=2) + "\n"
    else:
        text = yaml.safe_dump(nested, sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
        return
    with atomic_write(output, "w") as fh:
        fh.write(text)
    console.print(f"settings of {config.name} → {output}")


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
            help="Comma-separated noise factors (× the data's σ), one view each, e.g. "
            "'0.5,1,1.5' (the default).",
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
    precision: Annotated[str | None, PRECISION_OPTION] = None,
    resume: Annotated[bool, typer.Option()] = False,
    force: Annotated[bool, typer.Option()] = False,
) -> None:
    """Run one ablation arm: the CryoNOO recipe with one or more parts replaced.

    Example: `cryonoo ablate data/ -o runs/simsiam --ssl simsiam`.
    """
    from cryonoo.ssl.augment import AUGMENTERS
    from cryonoo.ssl.objectives import SSL
    from cryonoo.train.plan import ParticleSource
    from cryonoo.train.recipes import get_recipe

    changes: dict = {"name": "ablate"}
    if ssl is not None:
        if ssl != "none" and ssl not in SSL:
            _fail(f"unknown ssl objective {ssl!r}; choose from: {', '.join(SSL.names())}, none")
        changes["ssl.objective"] = None if ssl == "none" else ssl
    if augment is not None and augment not in AUGMENTERS:
        _fail(f"unknown augmenter {augment!r}; choose from: {', '.join(AUGMENTERS.names())}")
    if noise_factors is not None:
        try:
            changes["ssl.noise_factors"] = tuple(float(f) for f in noise_factors.split(","))
        except ValueError:
            _fail(f"--noise-factors must be comma-separated numbers, got {noise_factors!r}")
    extra = {
        "ssl.head": head,
        "ssl.weight": weight,
        "ssl.warmup": warmup,
        "ssl.augment": augment,
        "optim.epochs": epochs,
        "model.zdim": zdim,
        "model.enc_dim": enc_dim,
        "model.dec_dim": dec_dim,
        "optim.batch_size": batch_size,
        "optim.seed": seed,
        "optim.precision": precision,
    }
    changes.update({k: v for k, v in extra.items() if v is not None})
    if decoder_freeze:
        changes["ssl.decoder_freeze"] = True
    try:
        config = get_recipe("cryonoo").replace(changes)
    except ValueError as exc:
        _fail(str(exc))
    source = ParticleSource(particles, poses, ctf, ind)
    _run_training(config, source, outdir, device=device, resume=resume, force=force)


def _encode_budget(
    method: str, refine: int | None, steps: int | None, lr: float | None
) -> tuple[str, int | None]:
    """``encode``'s (method, Adam steps) from --method/--refine/--steps/--lr; ``ValueError``
    naming the fix if they do not fit together."""
    from cryonoo.models.refine import REFINE_STEPS

    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps}")
    if lr is not None and not lr > 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    if refine is None:
        if method == "amortized" and (steps is not None or lr is not None):
            raise ValueError(
                "--steps/--lr set the Adam budget of fitted latents, and amortized encoding "
                "fits none: add --refine K (or --method autodecode for an autodecoder run)"
            )
        return method, REFINE_STEPS if method == "refine" and steps is None else steps
    if refine < 1:
        raise ValueError(
            f"--refine K must be ≥ 1 (the number of Adam steps refining each encoder latent), "
            f"got {refine}; leave --refine out for the plain amortized latents"
        )
    if method not in ("amortized", "refine") or steps is not None:
        raise ValueError(
            "--refine K sets the refinement steps of the encoder's latents; do not combine it "
            "with --steps or --method autodecode (an autodecoder run's fitting: --method "
            "autodecode --steps K)"
        )
    return "refine", refine


def _check_refine_band(band: float | None, method: str) -> None:
    """``ValueError`` unless ``band`` is ``None`` or in ``(0, 0.5]`` with ``method`` refine."""
    if band is None:
        return
    from cryonoo.physics.lattice import check_band

    if method != "refine":
        raise ValueError("--refine-band sets the band of --refine K; add --refine K")
    check_band(band, "--refine-band")


@app.command()
def encode(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    particles: Annotated[Path, _PARTICLES],
    output: Annotated[Path, typer.Option("-o", "--output", help="Latents, cryoDRGN z.pkl layout.")],
    poses: Annotated[
        Path | None, typer.Option(help="poses.pkl (shifts; needed by --refine, autodecode).")
    ] = None,
    ctf: Annotated[Path | None, typer.Option(help="ctf.pkl (for the phase flip).")] = None,
    ind: Annotated[
        str | None, typer.Option(help="Index file or split name (default: all).")
    ] = None,
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size")] = 1024,
    device: Annotated[str, typer.Option()] = "auto",
    datadir: Annotated[Path | None, typer.Option()] = None,
    method: Annotated[
        str,
        typer.Option(
            help="amortized (one encoder pass), autodecode (test-time optimization of each "
            "latent; autodecoder runs, needs poses) or refine (= --refine; --steps sets K)."
        ),
    ] = "amortized",
    refine: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help="Semi-amortized: refine each encoder latent with K ≥ 1 Adam steps against the "
            "frozen decoder at the particle's pose (needs poses; lr: --lr, default 0.05).",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="autodecode/refine: Adam steps per batch (default: the model's; refine: 20)."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="autodecode/--refine: Adam learning rate (default: the model's; refine: 0.05)."
        ),
    ] = None,
    refine_band: Annotated[
        float | None,
        typer.Option(
            metavar="B",
            help="--refine: fit only the frequencies |k| ≤ B cycles/pixel (0 < B ≤ 0.5), "
            "about (2B)² of the work per step (default: the whole loss disk).",
        ),
    ] = None,
    precision: Annotated[str, PRECISION_OPTION] = "auto",
) -> None:
    """Latents for any particle stack: amortized (one encoder pass, no training) by default.

    The particles are preprocessed exactly as the training data were (same normalization,
    inversion and window) and streamed from disk in batches. --refine K starts from the encoder's
    latent and takes K Adam steps on each particle's loss (reconstruction at its pose plus the
    Gaussian prior) against the frozen decoder, so it needs poses. An autodecoder run has no
    encoder: use --method autodecode, which optimizes every latent from zero the same way
    (--steps Adam steps).
    """
    import time

    import numpy as np

    from cryonoo.io.cryodrgn import save_z_pkl
    from cryonoo.io.dataset import open_dataset
    from cryonoo.train.encode import resolve_device
    from cryonoo.train.inference import POSED_METHODS, check_method, infer_latents
    from cryonoo.train.precision import resolve_precision
    from cryonoo.train.run import load_run

    try:
        method, steps = _encode_budget(method, refine, steps, lr)
        _check_refine_band(refine_band, method)
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        run = load_run(run_dir, epoch, dev)
        check_method(run.model, method)
        cfg = run.train
        dataset = open_dataset(
            particles,
            poses,
            ctf,
            ind=None if ind == "all" else ind,
            datadir=datadir,
            lazy=True,
            preprocessing=cfg.preprocessing(),
            norm_std=run.norm_std,
            require_poses=method in POSED_METHODS,
        )
        if dataset.D != run.model.D:
            box = run.model.D - 1
            raise ValueError(
                f"the model was trained on {box}-px images but {particles} has "
                f"{dataset.box}-px images; downsample them with `cryonoo downsample -D {box}`"
            )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    if dataset.trans_px is None:
        console.print(
            "[yellow]no shifts known for these particles[/]: they are encoded as if centred; "
            "pass --poses (the particles' poses.pkl) unless they are centred"
        )
    t0 = time.perf_counter()
    with prec.autocast():
        mu, logvar = infer_latents(
            run.model, dataset, dev, method, batch_size=batch_size, steps=steps, lr=lr,
            band=refine_band,
        )  # fmt: skip
    elapsed = time.perf_counter() - t0
    save_z_pkl(output, mu, logvar)
    rate = len(mu) / max(elapsed, 1e-9)
    how = method if method == "amortized" else f"{method}, {steps or run.model.fit_steps} steps"
    how += "" if refine_band is None else f" on |k| ≤ {refine_band:g}"
    how += f", {prec.name}"
    console.print(
        f"{len(mu):,} latents (zdim {mu.shape[1]}, {how}) → {output} in {elapsed:.1f} s "
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
    from cryonoo.train.encode import resolve_device
    from cryonoo.train.run import load_run

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


@app.command("export-cryodrgn")
def export_cryodrgn(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="cryoDRGN directory to write.")],
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
) -> None:
    """Write a run as a cryoDRGN 4.x training directory (config.yaml, weights.N.pkl, z.N.pkl).

    Then `cryodrgn analyze OUTDIR N` and `cryodrgn eval_vol OUTDIR/weights.N.pkl -c
    OUTDIR/config.yaml` work on it. Only cryoDRGN's architecture (residual-MLP encoder, Fourier
    decoder) can be exported.
    """
    import json

    from cryonoo.interop.cryodrgn_model import save_cryodrgn_run
    from cryonoo.io.cryodrgn import load_z_pkl
    from cryonoo.io.dataset_dir import is_dataset_dir, load_dataset_dir
    from cryonoo.models.vae import HetVAE
    from cryonoo.train.run import load_run

    try:
        run = load_run(run_dir, epoch, "cpu")
        if not isinstance(run.model, HetVAE):
            raise ValueError(f"{run_dir}: only VAE runs can be exported to cryoDRGN")
        z_path = run.run_dir / f"z.{run.epoch}.pkl"
        mu, logvar = load_z_pkl(z_path) if z_path.is_file() else (None, None)
        stats = run.run_dir / "stats.jsonl"
        lines = stats.read_text().splitlines() if stats.is_file() else []
        history = [json.loads(line) for line in lines if line.strip()]
        cfg, data = run.train, run.data

        files = {
            key: None if data.get(key) in (None, "None") else Path(data[key]).resolve()
            for key in ("particles", "poses", "ctf")
        }
        if files["particles"] is not None and is_dataset_dir(files["particles"]):
            found = load_dataset_dir(files["particles"])
            ctf = found.ctf if found.ctf.is_file() else None
            files = {"particles": found.particles, "poses": found.poses, "ctf": ctf, **{
                k: v for k, v in files.items() if k != "particles" and v is not None
            }}  # fmt: skip
        save_cryodrgn_run(
            run.model,
            outdir,
            epoch=run.epoch,
            norm_std=run.norm_std,
            z=mu,
            logvar=logvar,
            history=[r for r in history if r.get("epoch", 0) <= run.epoch],
            dataset_args={
                **{k: None if v is None else str(v) for k, v in files.items()},
                "invert_data": cfg.data.invert,
                "window": cfg.data.window,
                "window_r": cfg.data.window_r,
            },
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    z_note = f", z.{run.epoch}.pkl" if mu is not None else ""
    console.print(
        f"{run.run_dir} epoch {run.epoch} → {outdir} (config.yaml, weights.{run.epoch}.pkl"
        f"{z_note}); next: cryodrgn analyze {outdir} {run.epoch}"
    )
