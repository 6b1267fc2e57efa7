"""Dataset directories: the layout ``cryonoo simulate`` writes and every command accepts.

::

    ROOT/particles.mrcs   (N, box, box) float32 image stack, voxel size set
    ROOT/poses.pkl        cryoDRGN (rots (N, 3, 3), trans (N, 2) box fractions)
    ROOT/ctf.pkl          cryoDRGN (N, 9) float32 (optional)
    ROOT/labels.npy       (N,) int ground-truth conformation of each image (optional)
    ROOT/split.npz        index arrays, at least 'train' and 'test'
    ROOT/gt/vol_000.mrc … ground-truth maps, one per conformation (optional)
    ROOT/config.json      how the data were made
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryonoo.io.cryodrgn import load_ctf_pkl, load_poses
from cryonoo.io.mrc import read_mrc_header

__all__ = ["DatasetDir", "is_dataset_dir", "load_dataset_dir"]

REQUIRED = ("particles.mrcs", "poses.pkl", "split.npz", "config.json")


def is_dataset_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding a particle stack in the dataset layout."""
    return Path(path).is_dir() and (Path(path) / "particles.mrcs").is_file()


@dataclass(frozen=True)
class DatasetDir:
    """Paths and contents of a dataset directory (see the module docstring)."""

    root: Path
    particles: Path
    poses: Path
    ctf: Path
    labels: np.ndarray | None
    split: dict[str, np.ndarray]
    gt_volumes: tuple[Path, ...]
    config: dict

    @property
    def n_images(self) -> int:
        return int(self.config.get("n_images", 0)) or (
            len(self.labels) if self.labels is not None else 0
        )


def load_dataset_dir(path: str | os.PathLike[str]) -> DatasetDir:
    """Open a dataset directory and check it is complete and consistent."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a dataset directory: missing {', '.join(missing)} "
            "(write one with `cryonoo simulate`)"
        )
    config = json.loads((root / "config.json").read_text())
    with np.load(root / "split.npz", allow_pickle=False) as z:
        split = {key: z[key] for key in z.files}
    labels_path = root / "labels.npy"
    labels = np.load(labels_path, allow_pickle=False) if labels_path.is_file() else None
    n = read_mrc_header(root / "particles.mrcs").shape[0]
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"{root / 'labels.npy'} has {labels.shape[0]} labels for {n} particles")
    for key, idx in split.items():
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{root / 'split.npz'}['{key}'] has indices outside [0, {n})")
    load_poses(root / "poses.pkl", n=n)
    ctf = root / "ctf.pkl"
    if ctf.is_file():
        load_ctf_pkl(ctf, n=n)
    gt = tuple(sorted((root / "gt").glob("vol_*.mrc")))
    return DatasetDir(
        root, root / "particles.mrcs", root / "poses.pkl", ctf, labels, split, gt, config
    )
