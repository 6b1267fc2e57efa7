"""What a run writes besides its latents: checkpoint contents, ``stats.jsonl``, ``config.json``.

* :func:`epoch_state` / :func:`interrupted_state`: the checkpoint dicts after a complete epoch
  (``weights.N.pt``) and at a Ctrl-C mid-epoch (``interrupted.pt``: also the position in the
  epoch and its running sums). Both hold the optimizer, scheduler and every generator state, so
  a resumed run continues bit-exactly on CPU.
* :func:`append_stats` / :func:`truncate_stats`: one JSON line per epoch, fsynced; a resumed run
  drops the lines past its checkpoint.
* :func:`run_data` / :func:`write_run_files`: ``config.json`` (recipe, data description, model
  constructor arguments, version, command line) and ``train_indices.npy``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import cryonoo
from cryonoo.io.atomic import atomic_write
from cryonoo.io.dataset import ParticleDataset
from cryonoo.train.build import Training
from cryonoo.train.checkpoint import write_run_config
from cryonoo.train.recipes import TrainConfig

if TYPE_CHECKING:
    from cryonoo.train.loop import EpochProgress
    from cryonoo.train.plan import RunPlan

__all__ = [
    "append_stats",
    "epoch_state",
    "interrupted_state",
    "run_data",
    "truncate_stats",
    "write_run_files",
]

logger = logging.getLogger(__name__)


def _optimization_state(training: Training, loader_generator: torch.Tensor) -> dict[str, Any]:
    """Optimizer, scheduler and generator states (``loader_generator``: the shuffle's state)."""
    t = training
    return {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else {},
        "loader_generator": loader_generator,
        "aug_generator": t.aug_generator.get_state().cpu(),
        # the global generator drives the VAE's reparameterization noise
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if t.device.type == "cuda" else [],
    }


def epoch_state(training: Training, epoch_no: int) -> dict[str, Any]:
    """The checkpoint after complete epoch ``epoch_no`` (1-based): ``epoch``, ``model`` (what
    is trained), ``vae`` (the reconstruction model, what ``load_run`` reads) and the
    optimization state."""
    return {
        "epoch": epoch_no,
        "model": training.model.state_dict(),
        "vae": training.vae.state_dict(),
        **_optimization_state(training, training.loader_generator.get_state()),
    }


def interrupted_state(
    training: Training, epoch: int, progress: EpochProgress, epoch_shuffle: torch.Tensor
) -> dict[str, Any]:
    """The checkpoint at an interruption in epoch ``epoch`` (0-based) after
    ``progress.batches_done`` batches: the running ``sums`` and ``seen`` of the epoch, and the
    shuffle generator's state at the start of the epoch (``epoch_shuffle``), from which the
    resumed run redraws the same order."""
    return {
        "epoch": epoch,
        "batches_done": progress.batches_done,
        "sums": progress.sums,
        "seen": progress.seen,
        "model": training.model.state_dict(),
        **_optimization_state(training, epoch_shuffle),
    }


def append_stats(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` and fsync it."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_stats(path: Path, last_epoch: int) -> list[dict[str, Any]]:
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


def run_data(
    dataset: ParticleDataset,
    plan: RunPlan,
    training: Training,
    data_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``data`` section of ``config.json``: box, normalization, noise σ (stack units and
    data domain), preprocessing, world size, the caller's ``data_info`` (the input files) and
    the cryoDRGN checkpoint the run started from."""
    data = {
        "D": dataset.D,
        "box": dataset.box,
        "apix": getattr(dataset.source, "apix", None),
        "n_particles": len(dataset),
        "norm_std": dataset.norm_std,
        "noise_sigma": plan.noise_sigma,
        "noise_sigma_data": plan.noise_sigma_data,
        "preprocessing": vars(dataset.preprocessing)
        if hasattr(dataset.preprocessing, "__dict__")
        else {},
        "world_size": plan.info.world_size,
        **(data_info or {}),
    }
    if training.cryodrgn_weights is not None:
        data["init_from_cryodrgn"] = training.cryodrgn_weights
    return data


def write_run_files(
    run: Path,
    dataset: ParticleDataset,
    config: TrainConfig,
    data: dict[str, Any],
    training: Training,
) -> None:
    """Write ``config.json`` and ``train_indices.npy`` (the dataset's particle indices)."""
    write_run_config(
        run,
        {
            "train": config.to_dict(),
            "data": data,
            "model": training.vae.config(),
            "cryonoo_version": cryonoo.__version__,
            "argv": sys.argv,
        },
    )
    np.save(run / "train_indices.npy", dataset.indices)
