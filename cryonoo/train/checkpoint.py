"""Checkpoints and run directories.

A run directory holds::

    RUN/config.json      the resolved TrainConfig, data description and model constructor args
    RUN/stats.jsonl      one JSON line per epoch (loss terms, learning rate, images/s)
    RUN/weights.N.pt     checkpoint after epoch N (model, optimizer, scheduler, RNG states)
    RUN/z.N.pkl          latents of the training particles after epoch N (cryoDRGN layout)
    RUN/interrupted.pt   the state at a Ctrl-C mid-epoch (removed by the next complete epoch)

Checkpoints are written atomically (temporary file → fsync → rename) and loaded with
``torch.load(weights_only=True)``: they contain tensors, numbers, strings, lists and dicts only,
so a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from cryonoo.io.atomic import atomic_path, atomic_write

__all__ = [
    "INTERRUPTED",
    "checkpoint_epochs",
    "latest_checkpoint",
    "load_checkpoint",
    "read_run_config",
    "save_checkpoint",
    "write_run_config",
]

INTERRUPTED = "interrupted.pt"  # mid-epoch checkpoint written on Ctrl-C

_WEIGHTS = re.compile(r"^weights\.(\d+)\.pt$")


def checkpoint_epochs(run_dir: str | os.PathLike[str]) -> list[int]:
    """Epochs with a checkpoint in ``run_dir``, ascending."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = (_WEIGHTS.match(p.name) for p in root.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Path of the newest ``weights.N.pt`` (``None`` if there is none)."""
    epochs = checkpoint_epochs(run_dir)
    return Path(run_dir) / f"weights.{epochs[-1]}.pt" if epochs else None


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically with ``torch.save``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ValueError(
            f"cannot load checkpoint {path}: {exc}. It is corrupt, truncated or contains "
            "objects other than tensors and plain data (refused for safety)."
        ) from exc


def write_run_config(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    with atomic_write(Path(run_dir) / "config.json", "w") as fh:
        json.dump(config, fh, indent=2, default=str)


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run directory's ``config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a cryonoo run directory (no config.json); train one with "
            "`cryonoo train`"
        )
    return json.loads(path.read_text())
