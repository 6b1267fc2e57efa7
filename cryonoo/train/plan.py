"""What a call of :func:`~cryonoo.train.trainer.train` will do, decided before anything is built.

:func:`plan_run` resolves the device and this process's place in a distributed job, finds the
checkpoint a resumed run continues from (a mid-epoch ``interrupted.pt`` newer than the last
complete epoch wins), refuses to overwrite a run or to resume it with another recipe, loads the
resume state and resolves the noise σ of the data that the augmenter needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.io.dataset import ParticleDataset
from cryonoo.physics.noise import estimate_noise_sigma
from cryonoo.train.build import needs_data_sigma
from cryonoo.train.checkpoint import (
    INTERRUPTED,
    checkpoint_epochs,
    latest_checkpoint,
    load_checkpoint,
    read_run_config,
)
from cryonoo.train.distributed import DistInfo, init_distributed
from cryonoo.train.encode import resolve_device
from cryonoo.train.recipes import TrainConfig

__all__ = [
    "DROPPED_LIST",
    "ParticleSource",
    "RunPlan",
    "estimate_data_sigma",
    "open_training_data",
    "plan_run",
    "resumed_norm_std",
]

#: the particles ``drop_bad`` left out, one dataset index per line
DROPPED_LIST = "dropped_particles.txt"


@dataclass(frozen=True)
class RunPlan:
    """The decisions of :func:`plan_run`.

    Attributes
    ----------
    run_dir:
        The run directory (created).
    info, device:
        This process's place in the job and its device (``cuda:LOCAL_RANK`` under torchrun).
    saved_config:
        The ``config.json`` of the run being resumed (``None`` for a fresh start).
    state:
        The checkpoint it continues from, on the CPU (``None`` for a fresh start).
    noise_sigma:
        The noise σ of the raw particle images (stack units) when the augmenter needs it.
    noise_sigma_data:
        The same σ in the data domain, ``noise_sigma / dataset.norm_std``.
    cryodrgn_run:
        A cryoDRGN run whose weights start the model (fresh starts given ``init_from`` only).
    """

    run_dir: Path
    info: DistInfo
    device: torch.device
    saved_config: dict[str, Any] | None
    state: dict[str, Any] | None
    noise_sigma: float | None
    noise_sigma_data: float | None
    cryodrgn_run: Path | None

    @property
    def recorded_cryodrgn_weights(self) -> str | None:
        """The cryoDRGN checkpoint a resumed run started from (its ``config.json`` says)."""
        if not self.saved_config:
            return None
        return self.saved_config["data"].get("init_from_cryodrgn")


def estimate_data_sigma(dataset: ParticleDataset, max_images: int = 10_000) -> float:
    """Noise σ of the raw particle images (stack units) from evenly spaced dataset particles."""
    n = len(dataset)
    pick = np.unique(np.linspace(0, n - 1, min(n, max_images)).astype(np.int64))
    images = dataset.source.images(dataset.indices[pick])
    return estimate_noise_sigma(images, batch_size=2048).sigma


def resumed_norm_std(run_dir: str | os.PathLike[str]) -> float | None:
    """The normalization a run to be resumed was trained with (``None`` without a checkpoint):
    its particles must be opened with the same ``norm_std``."""
    if not checkpoint_epochs(run_dir):
        return None
    return read_run_config(run_dir)["data"]["norm_std"]


def _checkpoint_to_continue(run: Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from: the newest complete epoch, or ``interrupted.pt``
    when it is not older. ``FileExistsError`` when there is one and ``resume`` is off."""
    ckpt_path = latest_checkpoint(run)
    interrupted = run / INTERRUPTED
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
    return ckpt_path


def _differences(saved: dict[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved, current)}`` of the recipe name and architecture fields that differ."""
    old = TrainConfig.from_dict(saved)
    fields_ = {**old.model_fields(), "name": old.name}
    new = {**current.model_fields(), "name": current.name}
    return {k: (fields_[k], new[k]) for k in fields_ if fields_[k] != new[k]}


def _check_same_recipe(run: Path, saved: dict[str, Any], config: TrainConfig, force: bool) -> None:
    """``ValueError`` listing the differences unless ``config`` is the saved recipe or ``force``."""
    diff = _differences(saved["train"], config)
    if diff and not force:
        listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume {run} with a different recipe/architecture ({listed}); "
            "use the original settings, or --force to override"
        )


def _raw_noise_sigma(
    config: TrainConfig, dataset: ParticleDataset, saved: dict[str, Any] | None
) -> float | None:
    """The augmenter's noise σ in stack units: a resumed run's own, else ``config.ssl.noise_sigma``,
    else estimated from the particles; ``None`` when the augmenter takes none."""
    if not needs_data_sigma(config):
        return None
    if saved is not None:
        return saved["data"]["noise_sigma"]
    return config.ssl.noise_sigma or estimate_data_sigma(dataset)


def plan_run(
    config: TrainConfig,
    dataset: ParticleDataset,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool,
    force: bool,
    init_from: str | os.PathLike[str] | None,
    device: str | torch.device | None,
) -> RunPlan:
    """Decide where and from what state the run starts (see the module docstring).

    Raises ``FileExistsError`` when ``run_dir`` holds checkpoints and ``resume`` is off, and
    ``ValueError`` when a resumed run's recipe or architecture differs (unless ``force``).
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    info, dev = init_distributed(resolve_device(device))
    ckpt_path = _checkpoint_to_continue(run, resume)
    saved = read_run_config(run) if (resume and ckpt_path is not None) else None
    state = None
    if saved is not None:
        _check_same_recipe(run, saved, config, force)
        state = load_checkpoint(ckpt_path, map_location="cpu")
    sigma = _raw_noise_sigma(config, dataset, saved)
    return RunPlan(
        run_dir=run,
        info=info,
        device=dev,
        saved_config=saved,
        state=state,
        noise_sigma=sigma,
        noise_sigma_data=None if sigma is None else sigma / dataset.norm_std,
        cryodrgn_run=Path(init_from) if init_from is not None and state is None else None,
    )


@dataclass(frozen=True)
class ParticleSource:
    """Where a run's particles come from.

    ``particles`` is a stack (``.mrcs``/``.mrc``), a ``.star``, a ``.cs``, a ``.txt`` list of
    stacks or a dataset directory (``cryonoo simulate``); ``poses`` / ``ctf`` the cryoDRGN
    pickles that go with it; ``ind`` an index file (``.pkl``/``.npy``/``.txt``) or a split name
    of a dataset directory (``train``, ``test``, ``all``; a directory alone trains on
    ``train``); ``datadir`` where a ``.star``/``.cs`` file's image paths are found; with
    ``drop_bad`` particles with NaN/Inf or constant pixels are left out.
    """

    particles: str | os.PathLike[str]
    poses: str | os.PathLike[str] | None = None
    ctf: str | os.PathLike[str] | None = None
    ind: str | None = None
    datadir: str | os.PathLike[str] | None = None
    drop_bad: bool = False

    def index(self) -> str | None:
        """The index the run trains on (``None``: every particle)."""
        from cryonoo.io.dataset_dir import is_dataset_dir

        if self.ind is None and is_dataset_dir(self.particles):
            return "train"
        return None if self.ind == "all" else self.ind

    def describe(self) -> dict[str, str | None]:
        """The source as the run's ``config.json`` records it (``data``)."""
        return {
            "particles": str(self.particles),
            "poses": None if self.poses is None else str(self.poses),
            "ctf": None if self.ctf is None else str(self.ctf),
            "ind": self.index(),
        }


def open_training_data(
    config: TrainConfig,
    source: ParticleSource,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    cryodrgn_norm_std: float | None = None,
) -> ParticleDataset:
    """The particles of ``source``, opened as the run needs them.

    The recipe's preprocessing, laziness and CTF rescaling; the normalization a resumed run was
    trained with (else the one of the cryoDRGN run it starts from, ``cryodrgn_norm_std``, else
    estimated from the images). With ``source.drop_bad`` the particles left out (NaN/Inf or
    constant pixels) are listed in ``run_dir/dropped_particles.txt``.
    """
    from cryonoo.io.dataset import open_dataset

    norm_std = resumed_norm_std(run_dir) if resume and run_dir is not None else None
    if norm_std is None:
        norm_std = cryodrgn_norm_std
    dataset = open_dataset(
        source.particles,
        source.poses,
        source.ctf,
        ind=source.index(),
        datadir=source.datadir,
        lazy=config.data.lazy,
        preprocessing=config.preprocessing(),
        norm_std=norm_std,
        ctf_rescale=config.data.ctf_rescale,
        drop_bad=source.drop_bad,
    )
    if dataset.dropped.size and run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        np.savetxt(Path(run_dir) / DROPPED_LIST, dataset.dropped, fmt="%d")
    return dataset
