"""Load a trained model back from its run directory (for ``encode``, ``volumes``, ``evaluate``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.vae import HetVAE
from cryonoo.models.zoo import MODELS
from cryonoo.train.checkpoint import checkpoint_epochs, load_checkpoint, read_run_config
from cryonoo.train.recipes import TrainConfig

__all__ = ["TrainedRun", "load_run"]


@dataclass
class TrainedRun:
    """A trained model with everything needed to use it on new particles."""

    run_dir: Path
    model: HetVAE | AutoDecoder
    epoch: int
    train: TrainConfig
    data: dict[str, Any]

    @property
    def norm_std(self) -> float:
        """The normalization its training data used (new particles must use the same)."""
        return float(self.data["norm_std"])


def load_run(
    run_dir: str | os.PathLike[str],
    epoch: int | None = None,
    device: str | torch.device = "cpu",
) -> TrainedRun:
    """Rebuild the reconstruction model of ``run_dir`` at ``epoch`` (default: the newest).

    Errors name the run directory and the available epochs.
    """
    root = Path(run_dir)
    config = read_run_config(root)
    epochs = checkpoint_epochs(root)
    if not epochs:
        raise FileNotFoundError(f"{root} has no checkpoint (weights.N.pt); has training started?")
    if epoch is None or epoch == -1:
        epoch = epochs[-1]
    if epoch not in epochs:
        raise ValueError(f"{root} has no checkpoint for epoch {epoch}; available: {epochs}")
    state = load_checkpoint(root / f"weights.{epoch}.pt", map_location="cpu")
    train = TrainConfig.from_dict(config["train"])
    model = MODELS.get(train.model.kind)(**config["model"])
    model.load_state_dict(state["vae"])
    model.to(device).eval()
    return TrainedRun(root, model, epoch, train, config["data"])
