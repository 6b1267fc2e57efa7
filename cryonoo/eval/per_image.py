"""Per-image FSC: how good is the volume decoded from ONE particle image? (CryoBench protocol)

For every ground-truth conformation ``c`` present in the evaluated split, one image with label
``c`` is picked (seeded, uniformly among that conformation's images in the split), encoded to its
posterior mean, decoded into a volume, and compared with the ground-truth map of ``c`` by the FSC
(:mod:`cryonoo.eval.fsc`). The summary is the mean (std, ddof 0) and median of the FSC_AUC over
conformations, with the mean curve and its std band. AUCs integrate ``|FSC|`` as CryoBench's
per-image script does (``sign_rule="abs"``); the clipped variant is reported beside it, so a
contrast-inverted map cannot hide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cryonoo.eval.fsc import fsc_auc, fsc_curve
from cryonoo.io.dataset import ParticleDataset
from cryonoo.io.mrc import read_mrc

__all__ = ["PerImageFSC", "load_gt_volumes", "per_image_fsc", "pick_one_per_label"]


@dataclass(frozen=True)
class PerImageFSC:
    """Result of :func:`per_image_fsc`.

    Attributes
    ----------
    labels:
        ``(K,)`` the conformations evaluated.
    positions:
        ``(K,)`` dataset positions of the chosen images (``dataset.indices[positions]`` are the
        particle numbers).
    freq_px:
        ``(n/2,)`` frequency axis in cycles/pixel.
    curves:
        ``(K, n/2)`` FSC curves.
    auc, auc_clip:
        ``(K,)`` FSC_AUC with ``|FSC|`` and with FSC clipped to ``[0, 1]``.
    """

    labels: np.ndarray
    positions: np.ndarray
    freq_px: np.ndarray
    curves: np.ndarray
    auc: np.ndarray
    auc_clip: np.ndarray

    def summary(self) -> dict[str, Any]:
        """``{"mean", "std", "median", "mean_clip", "n", "max_auc"}`` over conformations."""
        return {
            "mean": float(self.auc.mean()),
            "std": float(self.auc.std()),
            "median": float(np.median(self.auc)),
            "mean_clip": float(self.auc_clip.mean()),
            "n": int(self.auc.size),
            "max_auc": float(0.5 - 1.0 / (2 * len(self.freq_px))),
        }

    def save_curves(self, path: str | Path) -> None:
        """Mean and std curve as text: columns ``freq_px mean std`` (CryoBench-like)."""
        table = np.stack([self.freq_px, self.curves.mean(0), self.curves.std(0)], axis=1)
        np.savetxt(path, table, fmt="%.6f", header="freq_px fsc_mean fsc_std")


def pick_one_per_label(
    labels: np.ndarray, *, seed: int = 0, classes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One position per distinct label, drawn uniformly with a seeded generator.

    ``labels`` are the labels of the dataset's images in dataset order. Returns ``(classes,
    positions)`` sorted by class; classes without any image are skipped.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)  # a random image of each class comes first
    shuffled = labels[order]
    present, first = np.unique(shuffled, return_index=True)
    positions = order[first]
    if classes is not None:
        keep = np.isin(present, np.asarray(classes))
        present, positions = present[keep], positions[keep]
    return present, positions


def load_gt_volumes(paths: Sequence[str | Path]) -> Tensor:
    """``(K, n, n, n)`` float32 ground-truth maps (one per conformation, in label order)."""
    if not paths:
        raise ValueError("no ground-truth volumes given (the dataset has no gt/vol_*.mrc)")
    vols = [torch.from_numpy(np.array(read_mrc(p, mmap=False)[0], dtype=np.float32)) for p in paths]
    shapes = {tuple(v.shape) for v in vols}
    if len(shapes) != 1:
        raise ValueError(f"ground-truth volumes differ in shape: {sorted(shapes)}")
    return torch.stack(vols)


@torch.no_grad()
def per_image_fsc(
    model: Any,
    dataset: ParticleDataset,
    labels: np.ndarray,
    gt_volumes: Tensor,
    *,
    norm_std: float,
    seed: int = 0,
    device: torch.device | str = "cpu",
    chunk: int = 8,
    latents: np.ndarray | Tensor | None = None,
) -> PerImageFSC:
    """Per-image FSC of ``model`` on ``dataset`` (see the module docstring).

    Parameters
    ----------
    model:
        A trained model with ``encode(images, ctf, trans)`` and ``volume(z, norm_std)``; a
        model with ``needs_pose = True`` (pose-conditioned encoder) is also given ``rot=`` the
        images' ``(B, 3, 3)`` poses.
    dataset:
        The evaluated split.
    labels:
        ``(N_total,)`` conformation label of every particle of the stack (``labels.npy``).
    gt_volumes:
        ``(K, n, n, n)`` ground-truth maps indexed by label.
    norm_std:
        The training data's normalization (the decoded map is un-normalized with it).
    latents:
        ``(len(dataset), zdim)`` latents of the split in dataset order, used instead of
        ``model.encode`` (e.g. fitted by an autodecoder's test-time optimization); then
        ``model`` needs only ``volume``.
    """
    labels = np.asarray(labels)
    split_labels = labels[dataset.indices]
    if split_labels.size == 0:
        raise ValueError("the evaluated split is empty")
    if split_labels.max() >= gt_volumes.shape[0]:
        raise ValueError(
            f"label {split_labels.max()} has no ground-truth map ({gt_volumes.shape[0]} given)"
        )
    classes, positions = pick_one_per_label(split_labels, seed=seed)
    model.eval()
    if latents is not None:
        if len(latents) != len(dataset):
            raise ValueError(
                f"latents must have one row per image of the split ({len(dataset)}), "
                f"got {len(latents)}"
            )
        rows = torch.as_tensor(latents, dtype=torch.float32)[torch.from_numpy(positions)]
        z = rows.to(device)
    else:
        batch = dataset[positions].to(device)
        # the poses only for a pose-conditioned encoder (other models' encode may not take them)
        pose = {"rot": batch.rot} if getattr(model, "needs_pose", False) else {}
        z = model.encode(batch.images, batch.ctf, batch.trans, **pose)
    curves, aucs, clips = [], [], []
    freq = None
    for start in range(0, len(classes), chunk):
        part = slice(start, start + chunk)
        vols = torch.stack([model.volume(zi, norm_std=norm_std).float() for zi in z[part]])
        gt = gt_volumes[torch.as_tensor(classes[part])].to(vols.device)
        curve = fsc_curve(vols, gt)
        freq = curve.freq_px
        curves.append(curve.fsc.cpu())
        aucs.append(fsc_auc(curve, "abs").cpu())
        clips.append(fsc_auc(curve, "clip").cpu())
    return PerImageFSC(
        labels=classes,
        positions=positions,
        freq_px=freq.cpu().numpy(),
        curves=torch.cat(curves).numpy(),
        auc=torch.cat(aucs).numpy(),
        auc_clip=torch.cat(clips).numpy(),
    )
