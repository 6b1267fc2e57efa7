"""The training loop: a plain function, no framework.

``train(config, dataset, run_dir)`` reads top-down as its phases:

1. :func:`~cryonoo.train.plan.plan_run`: the device, the checkpoint to continue from (refusing to
   overwrite a run, or to resume it with another recipe), the resume state, the data's noise σ;
2. :func:`~cryonoo.train.build.build_training`: the model named by the config
   (``MODELS[config.model.kind]``: the VAE, wrapped in
   :class:`~cryonoo.ssl.distill.SelfDistillation` when the recipe has an SSL term, or the
   autodecoder), Adam (the autodecoder's latents at ``config.model.latent_lr``), the scheduler,
   the seeded generators and the loader, with a resume state restored into them;
3. ``config.json`` and ``train_indices.npy`` (:mod:`cryonoo.train.state`);
4. for each epoch, :func:`~cryonoo.train.loop.fit_epoch` (shuffled batches, NaN/Inf checks,
   optimizer steps), then the end of the epoch: the scheduler steps on the epoch loss, a line of
   ``stats.jsonl`` is written, and every ``config.output.checkpoint_every`` epochs all training
   particles are encoded (posterior means and log-variances, dataset order; the autodecoder's
   learned latent table) into ``z.N.pkl`` and the state into ``weights.N.pt`` (atomic).

``resume=True`` continues from the newest checkpoint with the saved optimizer, scheduler and
generator states, so an interrupted run loses at most the epoch in progress (nothing, after a
Ctrl-C, which saves ``interrupted.pt``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cryonoo.io.cryodrgn import save_z_pkl
from cryonoo.io.dataset import ParticleDataset
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.train.build import Training, base_model, build_model, build_training
from cryonoo.train.checkpoint import INTERRUPTED, save_checkpoint
from cryonoo.train.distributed import all_reduce_sums, barrier
from cryonoo.train.encode import encode_dataset, resolve_device
from cryonoo.train.loop import (
    EpochProgress,
    NonFiniteLossError,
    ProgressHook,
    SigintFlag,
    fit_epoch,
)
from cryonoo.train.plan import RunPlan, estimate_data_sigma, plan_run
from cryonoo.train.recipes import TrainConfig
from cryonoo.train.state import (
    append_stats,
    epoch_state,
    run_data,
    truncate_stats,
    write_run_files,
)

__all__ = [
    "INTERRUPTED",
    "NonFiniteLossError",
    "TrainResult",
    "base_model",
    "build_model",
    "encode_dataset",
    "estimate_data_sigma",
    "resolve_device",
    "train",
]


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: nn.Module
    stats: list[dict[str, Any]] = field(default_factory=list)
    last_epoch: int = 0


def _prepare_run_dir(
    plan: RunPlan,
    dataset: ParticleDataset,
    config: TrainConfig,
    training: Training,
    data_info: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Write the run files and cut ``stats.jsonl`` back to the resume state (rank 0) → the
    stats records kept (empty on other ranks)."""
    stats: list[dict[str, Any]] = []
    if plan.info.is_main:
        data = run_data(dataset, plan, training, data_info)
        write_run_files(plan.run_dir, dataset, config, data, training)
        stats = truncate_stats(plan.run_dir / "stats.jsonl", training.start_epoch)
    barrier(plan.info)
    return stats


def _epoch_means(progress: EpochProgress, training: Training) -> tuple[dict[str, float], int, int]:
    """``(mean of every logged term, images seen, batches skipped)`` of the epoch, all ranks."""
    totals = all_reduce_sums(
        {**progress.sums, "__seen": float(progress.seen), "__skip": float(progress.skipped)},
        training.info,
    )
    seen, skipped = int(totals.pop("__seen")), int(totals.pop("__skip"))
    return {k: v / max(seen, 1) for k, v in totals.items()}, seen, skipped


def _step_scheduler(training: Training, config: TrainConfig, means: dict[str, float]) -> None:
    """Step the plateau scheduler on the epoch's mean loss (``config.optim.plateau_on``), if
    finite."""
    watched = means.get("loss" if config.optim.plateau_on == "total" else "model_loss")
    if training.scheduler is not None and watched is not None and math.isfinite(watched):
        training.scheduler.step(watched)


def _save_epoch(run: Path, training: Training, dataset: ParticleDataset, epoch_no: int) -> None:
    """``z.N.pkl`` (the training particles' latents) and ``weights.N.pt`` after epoch N."""
    vae = training.vae
    mu, logvar = (
        (vae.latent_table().cpu().numpy(), None)  # the autodecoder's learned table
        if isinstance(vae, AutoDecoder)
        else encode_dataset(vae, dataset, training.device)
    )
    save_z_pkl(run / f"z.{epoch_no}.pkl", mu, logvar)
    save_checkpoint(run / f"weights.{epoch_no}.pt", epoch_state(training, epoch_no))


def _finish_epoch(
    plan: RunPlan,
    training: Training,
    config: TrainConfig,
    dataset: ParticleDataset,
    epoch: int,
    progress: EpochProgress,
) -> dict[str, Any] | None:
    """The end of epoch ``epoch`` (0-based): scheduler step, then on rank 0 the stats line,
    the checkpoint when due, and removing a superseded ``interrupted.pt`` → the stats record
    (``None`` on other ranks)."""
    means, seen, skipped = _epoch_means(progress, training)
    _step_scheduler(training, config, means)
    if not plan.info.is_main:
        return None  # rank 0 writes the epoch's files
    epoch_no, elapsed = epoch + 1, progress.elapsed_s
    record = {
        "epoch": epoch_no,
        **means,
        "lr": training.optimizer.param_groups[0]["lr"],
        "time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else None,
        "ssl_active": bool(getattr(training.model, "active", False)),
        "skipped_nonfinite": skipped,
    }
    # the stats line before the checkpoint: a run killed in between has a line past its last
    # checkpoint, which --resume drops and rewrites (never a checkpoint without one)
    append_stats(plan.run_dir / "stats.jsonl", record)
    if epoch_no % config.output.checkpoint_every == 0 or epoch_no == config.optim.epochs:
        _save_epoch(plan.run_dir, training, dataset, epoch_no)
    (plan.run_dir / INTERRUPTED).unlink(missing_ok=True)  # superseded by the complete epoch
    return record


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
    run continues from its own checkpoint instead. ``config`` and ``dataset`` are used as given:
    :func:`~cryonoo.train.cryodrgn_init.start_from_cryodrgn` makes the config with the cryoDRGN
    run's architecture, preprocessing and no warm-up, and says the ``norm_std`` to open the
    particles with (what ``cryonoo train --init-from-cryodrgn`` does).
    """
    plan = plan_run(
        config, dataset, run_dir, resume=resume, force=force, init_from=init_from, device=device
    )
    training = build_training(config, dataset, plan)
    stats = _prepare_run_dir(plan, dataset, config, training, data_info)
    progress = EpochProgress.resumed(plan.state)
    stop = SigintFlag.install() if not plan.info.enabled else None
    try:
        for epoch in range(training.start_epoch, config.optim.epochs):
            progress = fit_epoch(
                training,
                config,
                dataset,
                epoch,
                progress,
                stop=stop,
                on_step=on_step,
                interrupted=plan.run_dir / INTERRUPTED,
            )
            record = _finish_epoch(plan, training, config, dataset, epoch, progress)
            if record is not None:
                stats.append(record)
                if on_epoch is not None:
                    on_epoch(record)
            barrier(plan.info)
            progress = EpochProgress()
    finally:
        if stop is not None:
            stop.restore()
    return TrainResult(
        plan.run_dir,
        training.model,
        stats,
        last_epoch=max(training.start_epoch, config.optim.epochs),
    )
