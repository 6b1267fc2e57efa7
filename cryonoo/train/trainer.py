"""The training loop: a plain function, no framework.

``train(config, dataset, run_dir)`` builds the model named by the config (``MODELS[config.model]``:
the VAE, wrapped in :class:`~cryonoo.ssl.distill.SelfDistillation` when the recipe has an SSL
term, or the autodecoder), then for each epoch: shuffles with a seeded generator, runs
``training_step`` on every batch (autocast per ``config.precision``), checks every loss term
for NaN/Inf, steps Adam (the autodecoder's latents at ``config.latent_lr``), and at the end of
the epoch encodes all training particles (posterior means and log-variances, dataset order; the
autodecoder's learned latent table) and writes ``z.N.pkl``, ``weights.N.pt`` (atomic) and a
line of ``stats.jsonl``. ``resume=True`` continues from the newest checkpoint with the saved
optimizer, scheduler and generator states, so an interrupted run loses at most the epoch in
progress.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cryonoo
from cryonoo.io.atomic import atomic_write
from cryonoo.io.cryodrgn import save_z_pkl
from cryonoo.io.dataset import ParticleDataset, make_loader
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.base import build_component
from cryonoo.models.vae import HetVAE
from cryonoo.models.zoo import MODELS, RECONSTRUCTION_MODELS
from cryonoo.physics.noise import estimate_noise_sigma
from cryonoo.ssl.augment import AUGMENTERS
from cryonoo.ssl.distill import SelfDistillation
from cryonoo.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_run_config,
    save_checkpoint,
    write_run_config,
)
from cryonoo.train.distributed import (
    ShardedBatchSampler,
    all_reduce_sums,
    barrier,
    init_distributed,
)
from cryonoo.train.precision import resolve_precision
from cryonoo.train.recipes import TrainConfig
from cryonoo.types import Batch

INTERRUPTED = "interrupted.pt"  # mid-epoch checkpoint written on Ctrl-C

__all__ = [
    "INTERRUPTED",
    "NonFiniteLossError",
    "TrainResult",
    "build_model",
    "encode_dataset",
    "estimate_data_sigma",
    "resolve_device",
    "train",
]

logger = logging.getLogger(__name__)


def _uses_data_sigma(augment: str) -> bool:
    """Whether augmenter ``augment`` takes the data's noise σ (its ``uses_data_sigma`` flag)."""
    return bool(getattr(AUGMENTERS.get(augment), "uses_data_sigma", False))


ProgressHook = Callable[[dict[str, Any]], None]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the message names the term, epoch, batch and particles."""


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: nn.Module
    stats: list[dict[str, Any]] = field(default_factory=list)
    last_epoch: int = 0


class _SigintFlag:
    """While installed, Ctrl-C sets a flag that the loop checks after each step (so the state it
    saves is consistent); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    @classmethod
    def install(cls) -> _SigintFlag | None:
        if threading.current_thread() is not threading.main_thread():
            return None  # signal handlers can only be set from the main thread
        flag = cls()
        flag._previous = signal.signal(signal.SIGINT, flag._handle)
        return flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; errors name the missing device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def estimate_data_sigma(dataset: ParticleDataset, max_images: int = 10_000) -> float:
    """Noise σ of the raw particle images (stack units) from evenly spaced dataset particles."""
    n = len(dataset)
    pick = np.unique(np.linspace(0, n - 1, min(n, max_images)).astype(np.int64))
    images = dataset.source.images(dataset.indices[pick])
    return estimate_noise_sigma(images, batch_size=2048).sigma


def build_model(
    config: TrainConfig, D: int, *, noise_sigma: float | None = None, n_images: int | None = None
) -> nn.Module:
    """The model of a recipe: ``MODELS[config.model]`` (a :class:`HetVAE` or an
    :class:`AutoDecoder`), wrapped for self-distillation if ``config.ssl``.

    ``noise_sigma`` is the augmentation σ in the data domain (``σ_raw / norm_std``);
    ``n_images`` the number of training images (the autodecoder's latent table).
    """
    vae = build_component(
        MODELS,
        config.model,
        D=D,
        n_images=n_images,
        latent_l2=config.latent_l2,
        zdim=config.zdim,
        encoder=config.encoder,
        decoder=config.decoder,
        enc_layers=config.enc_layers,
        enc_dim=config.enc_dim,
        dec_layers=config.dec_layers,
        dec_dim=config.dec_dim,
        pe_type=config.pe_type,
        pe_dim=config.pe_dim,
        feat_sigma=config.feat_sigma,
        activation=config.activation,
        beta=config.beta,
        seed=config.seed,
    )
    if not config.uses_ssl:
        return vae
    if not isinstance(vae, HetVAE):
        raise ValueError(
            f"recipe {config.name!r}: self-distillation needs an encoder, the {config.model!r} "
            "model has none; set ssl=None (or --ssl none) for it"
        )
    aug_kwargs: dict[str, Any] = {}
    if _uses_data_sigma(config.augment):
        if noise_sigma is None:
            raise ValueError(f"augmenter {config.augment!r} needs the noise σ of the data")
        aug_kwargs = {"sigma": noise_sigma, "noise_factors": config.noise_factors}
        if config.augment == "reproject-noise":
            aug_kwargs["detach_render"] = config.detach_render
    else:
        aug_kwargs = {"num_views": len(config.noise_factors)}
    aug_kwargs.update(config.augment_options)
    return SelfDistillation(
        vae,
        objective=config.ssl,
        augmenter=config.augment,
        weight=config.ssl_weight,
        warmup_epochs=config.warmup_epochs,
        decoder_freeze=config.decoder_freeze,
        detach_target=config.detach_target,
        encoder_from_ssl_only=config.encoder_from_ssl_only,
        encoder_model_grad=config.encoder_model_grad,
        anchor_noise=config.anchor_noise,
        teacher_momentum=config.teacher_momentum,
        objective_kwargs={"head": config.head, **config.ssl_options},
        augmenter_kwargs=aug_kwargs,
    )


def base_model(model: nn.Module) -> HetVAE | AutoDecoder:
    """The reconstruction model inside a (possibly wrapped, possibly DDP) model."""
    while not isinstance(model, RECONSTRUCTION_MODELS):
        inner = getattr(model, "module", None) or getattr(model, "model", None)
        if inner is None:
            raise TypeError(f"no reconstruction model inside {type(model).__name__}")
        model = inner
    return model


@torch.no_grad()
def encode_dataset(
    model: HetVAE, dataset: ParticleDataset, device: torch.device, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mu, logvar)`` of every particle of ``dataset`` in dataset order.

    Each ``(N, zdim)`` float32. Every batch is encoded with its CTF, shifts (pixels) and poses
    (``Batch.rot``, ``(B, 3, 3)``): a pose-conditioned encoder (``pose-mlp``) needs them, the
    others ignore them. A dataset opened without poses has identity rotations, which a
    pose-conditioned encoder would take at face value."""
    if isinstance(model, AutoDecoder):
        raise ValueError(
            "an autodecoder has no encoder to encode particles with: its latents are fitted "
            "with the poses (cryonoo encode --method autodecode, cryonoo bench inference)"
        )
    was_training = model.training
    model.eval()
    mus, logvars = [], []
    for batch in make_loader(dataset, batch_size, shuffle=False, pin_memory=False):
        b = batch.to(device)
        mu, logvar = model.encode_distribution(b.images, b.ctf, b.trans, b.rot)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    model.train(was_training)
    zdim = model.zdim
    if not mus:
        return np.zeros((0, zdim), np.float32), np.zeros((0, zdim), np.float32)
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def _differences(saved: dict[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    old = TrainConfig.from_dict(saved)
    fields_ = {**old.model_fields(), "name": old.name}
    new = {**current.model_fields(), "name": current.name}
    return {k: (fields_[k], new[k]) for k in fields_ if fields_[k] != new[k]}


def _check_finite(out_terms: dict[str, torch.Tensor], loss: torch.Tensor) -> str | None:
    if bool(torch.isfinite(loss)):
        return None
    for name, value in out_terms.items():
        if not bool(torch.isfinite(value).all()):
            return name
    return "loss"


def _append_stats(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_stats(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Keep the lines of epochs ≤ ``last_epoch`` (a crash may leave a later one, or a line
    cut short mid-write, which is dropped with a warning); rewrites the file atomically."""
    if not path.is_file():
        return []
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON (a write cut short?); dropped", path, number)
            continue
        if record.get("epoch", 0) <= last_epoch:
            kept.append(record)
    with atomic_write(path, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _write_run_files(
    run: Path,
    dataset: ParticleDataset,
    config: TrainConfig,
    data: dict[str, Any],
    vae: HetVAE | AutoDecoder,
) -> None:
    write_run_config(
        run,
        {
            "train": config.to_dict(),
            "data": data,
            "model": vae.config(),
            "cryonoo_version": cryonoo.__version__,
            "argv": sys.argv,
        },
    )
    np.save(run / "train_indices.npy", dataset.indices)


def _init_from_cryodrgn(
    vae: nn.Module, run_dir: str | os.PathLike[str], dataset: ParticleDataset
) -> str:
    """Copy a cryoDRGN run's weights into ``vae`` → the checkpoint path.

    Raises ``ValueError`` listing every architecture setting that differs from the checkpoint.
    """
    from cryonoo.io.cryodrgn_model import CONFIG_KEYS, load_cryodrgn_run

    if not isinstance(vae, HetVAE):
        raise ValueError(
            f"a cryoDRGN checkpoint initializes a VAE, this recipe builds {type(vae).__name__}"
        )
    init = load_cryodrgn_run(run_dir)

    def resolved(cfg: dict[str, Any]) -> dict[str, Any]:
        half = cfg["D"] // 2
        radius = cfg["enc_mask_radius"]
        return {
            **cfg,
            "pe_dim": cfg["pe_dim"] or half,
            "enc_mask_radius": half if radius is None else radius,
        }

    ours, theirs = resolved(vae.config()), resolved(init.model.config())
    keys = [k for k in CONFIG_KEYS if k != "feat_sigma"]  # the frequencies are loaded
    diff = {k: (ours[k], theirs[k]) for k in keys if ours[k] != theirs[k]}
    if diff:
        listed = "; ".join(
            f"{k}: {a!r} here, {b!r} in {CONFIG_KEYS[k]}" for k, (a, b) in diff.items()
        )
        raise ValueError(
            f"{init.run_dir}: the recipe's architecture differs from the cryoDRGN checkpoint "
            f"({listed}); use the checkpoint's settings"
        )
    vae.load_state_dict(init.model.state_dict())
    if not math.isclose(dataset.norm_std, init.norm_std, rel_tol=1e-6):
        logger.warning(
            "the data are normalized by %.6g, the cryoDRGN run used %.6g (dataset_args.norm)",
            dataset.norm_std,
            init.norm_std,
        )
    return str(init.weights)


def train(
    config: TrainConfig,
    dataset: ParticleDataset,
    run_dir: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    resume: bool = False,
    force: bool = False,
    data_info: dict[str, Any] | None = None,
    on_step: ProgressHook | None = None,
    on_epoch: ProgressHook | None = None,
    init_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``config`` on ``dataset``, writing outputs to ``run_dir`` (see module docstring).

    ``on_step`` / ``on_epoch`` receive dicts of progress (``images``, ``terms``, ``epoch``…) for
    progress bars. Raises :class:`NonFiniteLossError` naming the term, epoch, batch and particle
    indices when the loss becomes NaN/Inf, and ``FileExistsError`` when ``run_dir`` already has
    checkpoints and ``resume`` is off.

    ``init_from`` is a cryoDRGN ``train_vae`` directory whose final weights start the VAE (the
    architecture must match; ``ValueError`` lists what differs); the optimizer starts afresh and
    the run's ``config.json`` records the checkpoint under ``data.init_from_cryodrgn``. A resumed
    run continues from its own checkpoint instead.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    info, dev = init_distributed(resolve_device(device))
    ckpt_path = latest_checkpoint(run)
    interrupted = run / INTERRUPTED
    state: dict[str, Any] | None = None
    if (ckpt_path is not None or interrupted.is_file()) and not resume:
        name = ckpt_path.name if ckpt_path is not None else INTERRUPTED
        raise FileExistsError(
            f"{run} already holds checkpoints (latest {name}); pass --resume to "
            "continue that run or choose another output directory"
        )
    if resume and interrupted.is_file():
        done = int(ckpt_path.name.split(".")[1]) if ckpt_path is not None else 0
        if int(load_checkpoint(interrupted)["epoch"]) >= done:
            ckpt_path = interrupted  # newer than the last complete epoch: continue mid-epoch
    saved_cfg = read_run_config(run) if (resume and ckpt_path is not None) else None
    if saved_cfg is not None:
        diff = _differences(saved_cfg["train"], config)
        if diff and not force:
            listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"cannot resume {run} with a different recipe/architecture ({listed}); "
                "use the original settings, or --force to override"
            )
        state = load_checkpoint(ckpt_path, map_location="cpu")

    torch.manual_seed(config.seed)
    noise_sigma_raw = None
    if config.uses_ssl and _uses_data_sigma(config.augment):
        noise_sigma_raw = (
            saved_cfg["data"]["noise_sigma"]
            if saved_cfg is not None
            else (config.noise_sigma or estimate_data_sigma(dataset))
        )
    sigma_data = None if noise_sigma_raw is None else noise_sigma_raw / dataset.norm_std
    model = build_model(config, dataset.D, noise_sigma=sigma_data, n_images=len(dataset)).to(dev)
    vae = base_model(model)
    vae.check_finite = False  # checked below, where the particle indices are known
    init_weights = saved_cfg["data"].get("init_from_cryodrgn") if saved_cfg else None
    if init_from is not None and state is None:
        init_weights = _init_from_cryodrgn(vae, init_from, dataset)
    if info.rank:  # other reparameterization noise on every rank (rank 0 as a single process)
        torch.manual_seed(config.seed + 7919 * info.rank)
    params = (
        vae.param_groups(config.latent_lr) if isinstance(vae, AutoDecoder) else model.parameters()
    )
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, "min", factor=config.plateau_factor, patience=config.plateau_patience
        )
        if config.lr_plateau
        else None
    )
    loader_gen = torch.Generator().manual_seed(config.seed)
    aug_gen = torch.Generator(device=dev).manual_seed(config.seed + 1 + 7919 * info.rank)
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        loader_gen.set_state(state["loader_generator"])  # the same order on every rank
        start_epoch = int(state["epoch"])
        if info.is_main:  # exact continuation; other ranks re-derive their own streams
            aug_gen.set_state(state["aug_generator"].to(aug_gen.get_state().device))
            torch.set_rng_state(state["torch_rng"])
            if dev.type == "cuda" and state.get("cuda_rng"):
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            aug_gen.manual_seed(config.seed + 1 + 7919 * info.rank + start_epoch)
            torch.manual_seed(config.seed + 7919 * info.rank + start_epoch)
    step_model: nn.Module = model
    if info.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dev] if dev.type == "cuda" else None,
            find_unused_parameters=config.uses_ssl,  # the SSL heads idle during warm-up
        )

    data = {
        "D": dataset.D,
        "box": dataset.box,
        "apix": getattr(dataset.source, "apix", None),
        "n_particles": len(dataset),
        "norm_std": dataset.norm_std,
        "noise_sigma": noise_sigma_raw,
        "noise_sigma_data": sigma_data,
        "preprocessing": vars(dataset.preprocessing)
        if hasattr(dataset.preprocessing, "__dict__")
        else {},
        "world_size": info.world_size,
        **(data_info or {}),
    }
    if init_weights is not None:
        data["init_from_cryodrgn"] = init_weights
    if info.is_main:
        _write_run_files(run, dataset, config, data, vae)
    stats = _truncate_stats(run / "stats.jsonl", start_epoch) if info.is_main else []
    barrier(info)
    precision = resolve_precision(config.precision, dev)
    scaler = precision.grad_scaler()
    loader = make_loader(
        dataset,
        config.batch_size,
        generator=loader_gen,
        num_workers=config.num_workers,
        pin_memory=dev.type == "cuda",
        shard=(lambda batches: ShardedBatchSampler(batches, info)) if info.enabled else None,
    )

    resume_steps = int(state.get("batches_done", 0)) if state is not None else 0
    stop = _SigintFlag.install() if not info.enabled else None
    try:
        for epoch in range(start_epoch, config.epochs):
            if isinstance(model, SelfDistillation):
                model.set_epoch(epoch)
            model.train()
            sums: dict[str, float] = dict(state["sums"]) if resume_steps else {}
            seen = int(state["seen"]) if resume_steps else 0
            skipped, t0 = 0, time.perf_counter()
            epoch_gen_state = loader_gen.get_state()  # this epoch's shuffle is drawn from it
            completed = resume_steps
            try:
                for i, cpu_batch in enumerate(loader):
                    if i < resume_steps:
                        continue  # completed before the interruption
                    if stop is not None and stop.raised:
                        raise KeyboardInterrupt
                    batch: Batch = cpu_batch.to(dev, non_blocking=True)
                    with precision.autocast():
                        # through forward(), so DistributedDataParallel can synchronize gradients
                        out = (
                            step_model(batch, aug_gen)
                            if isinstance(model, SelfDistillation)
                            else step_model(batch)
                        )
                    bad = _check_finite(out.terms, out.loss)
                    if config.skip_nonfinite and info.enabled:  # every rank must skip the same step
                        flag = torch.tensor(float(bad is not None), device=dev)
                        torch.distributed.all_reduce(flag)
                        bad = bad or ("loss" if float(flag) > 0 else None)
                    if bad is not None:
                        ids = dataset.indices[batch.index.cpu().numpy()].tolist()
                        message = (
                            f"non-finite {bad!r} at epoch {epoch + 1}, batch {i + 1}; "
                            f"particles {ids}"
                        )
                        if not config.skip_nonfinite:
                            raise NonFiniteLossError(message)
                        skipped += 1
                        logger.warning("skipped batch: %s", message)
                        completed = i + 1
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(out.loss).backward()
                    if config.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    b = len(batch)
                    seen += b
                    terms = {k: float(v) for k, v in out.terms.items()}
                    total = float(out.loss.detach())  # the optimized loss (model + λ·SSL)
                    terms["model_loss"] = terms.get("loss", total)  # the model's own term
                    terms["loss"] = total
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v * b
                    completed = i + 1  # the optimizer step is done
                    if on_step is not None and info.is_main:
                        on_step({"epoch": epoch + 1, "images": b * info.world_size, "terms": terms})
            except KeyboardInterrupt:
                if stop is not None:  # one process: save exactly where it stopped, then re-raise
                    save_checkpoint(
                        interrupted,
                        {
                            "epoch": epoch,
                            "batches_done": completed,
                            "sums": sums,
                            "seen": seen,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else {},
                            "loader_generator": epoch_gen_state,
                            "aug_generator": aug_gen.get_state().cpu(),
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all()
                            if dev.type == "cuda"
                            else [],
                        },
                    )
                raise
            resume_steps = 0
            elapsed = time.perf_counter() - t0
            totals = all_reduce_sums(
                {**sums, "__seen": float(seen), "__skip": float(skipped)}, info
            )
            seen, skipped = int(totals.pop("__seen")), int(totals.pop("__skip"))
            means = {k: v / max(seen, 1) for k, v in totals.items()}
            watched = means.get("loss" if config.plateau_on == "total" else "model_loss")
            if scheduler is not None and watched is not None and math.isfinite(watched):
                scheduler.step(watched)
            epoch_no = epoch + 1
            if not info.is_main:
                barrier(info)  # rank 0 writes the epoch's files
                continue
            record = {
                "epoch": epoch_no,
                **means,
                "lr": optimizer.param_groups[0]["lr"],
                "time_s": elapsed,
                "images_per_s": seen / elapsed if elapsed > 0 else None,
                "ssl_active": bool(getattr(model, "active", False)),
                "skipped_nonfinite": skipped,
            }
            # the stats line before the checkpoint: a run killed in between has a line past its
            # last checkpoint, which --resume drops and rewrites (never a checkpoint without one)
            _append_stats(run / "stats.jsonl", record)
            if epoch_no % config.checkpoint_every == 0 or epoch_no == config.epochs:
                mu, logvar = (
                    (vae.latent_table().cpu().numpy(), None)  # the autodecoder's learned table
                    if isinstance(vae, AutoDecoder)
                    else encode_dataset(vae, dataset, dev)
                )
                save_z_pkl(run / f"z.{epoch_no}.pkl", mu, logvar)
                save_checkpoint(
                    run / f"weights.{epoch_no}.pt",
                    {
                        "epoch": epoch_no,
                        "model": model.state_dict(),
                        "vae": vae.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "loader_generator": loader_gen.get_state(),
                        "aug_generator": aug_gen.get_state().cpu(),
                        # the global generator drives the VAE's reparameterization noise
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
                    },
                )
            interrupted.unlink(missing_ok=True)  # superseded by the complete epoch
            stats.append(record)
            if on_epoch is not None:
                on_epoch(record)
            barrier(info)
    finally:
        if stop is not None:
            stop.restore()
    return TrainResult(run, model, stats, last_epoch=max(start_epoch, config.epochs))
