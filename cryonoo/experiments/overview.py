"""The benchmark's overview figure: what each recipe's latents know about seen and unseen images.

One PNG per seed (``overview.png``), for a person to read at a glance:

* left, one row per recipe: the latents of the **seen** (training) and **unseen** (test)
  images on the first two principal axes of the training latents, coloured by the true
  conformation, titled with the kNN label R² of each set and the oracle's ceiling;
* right: central sections (the ``z = box/2`` plane) of the ground-truth maps of a few unseen
  images (top row) and, below, of the map each recipe decodes from its one-pass latent of that
  same image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryonoo.eval.per_image import load_gt_volumes
from cryonoo.io.atomic import atomic_path
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.train.run import load_run

__all__ = ["plot_overview"]


def _pca_axes(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and the top two principal axes ``(d, 2)`` (one axis for ``d = 1``)."""
    mean = z.mean(axis=0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    return mean, vt[: min(2, vt.shape[0])].T


def _project(z: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    p = (z - mean) @ axes
    return p if p.shape[1] == 2 else np.column_stack([p[:, 0], np.zeros(len(p))])


def _examples(labels: np.ndarray, n: int) -> np.ndarray:
    """Positions of ``n`` test images whose labels spread over the label range."""
    order = np.argsort(labels, kind="stable")
    return order[np.linspace(0, len(order) - 1, n).round().astype(int)]


def _section(volume: np.ndarray) -> np.ndarray:
    """The central ``z`` plane, cropped to its middle 60 % (where the molecule is)."""
    n = volume.shape[0]
    lo, hi = round(0.2 * n), round(0.8 * n)
    return volume[n // 2, lo:hi, lo:hi]


def _scatter_row(fig, gs, row: int, name: str, data: dict[str, Any]) -> None:
    mean, axes = _pca_axes(data["z_train"])
    lims = _project(np.vstack([data["z_train"], data["z_test"]]), mean, axes)
    lo, hi = lims.min(axis=0), lims.max(axis=0)
    vmin, vmax = data["label_range"]
    for col, (split, score) in enumerate((("train", "seen"), ("test", "unseen"))):
        ax = fig.add_subplot(gs[row, col])
        p = _project(data[f"z_{split}"], mean, axes)
        ax.scatter(p[:, 0], p[:, 1], c=data[f"y_{split}"], s=3, cmap="viridis", vmin=vmin,
                   vmax=vmax, linewidths=0, rasterized=True)  # fmt: skip
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        r2 = data.get(score)
        ax.set_title(f"{score}" + (f", R² {r2:.2f}" if r2 is not None else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(name, fontsize=9)


def _legend(fig, gs, ceiling: float | None) -> None:
    ax = fig.add_subplot(gs[0, :2])
    ax.axis("off")
    lines = [
        "latents on the first two principal axes of the seen latents,",
        "coloured by the true conformation; R²: kNN label recovery",
    ]
    if ceiling is not None:
        lines.append(f"ceiling (supervised encoder, fresh images): R² {ceiling:.2f}")
    ax.text(0.0, 0.5, "\n".join(lines), fontsize=8, va="center")


def _sections(fig, gs, rows: Sequence[tuple[str, list[np.ndarray]]], labels: np.ndarray):
    for r, (name, maps) in enumerate(rows):
        scale = max(float(np.abs(m).max()) for m in maps) or 1.0
        for c, volume in enumerate(maps):
            ax = fig.add_subplot(gs[r, 2 + c])
            ax.imshow(_section(volume), cmap="gray", vmin=-0.2 * scale, vmax=scale,
                      origin="lower")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"unseen image, label {labels[c]:g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)


def plot_overview(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    runs: dict[str, str | os.PathLike[str]],
    metrics: dict[str, dict[str, Any]],
    *,
    ceiling: float | None = None,
    n_examples: int = 4,
    device: str | torch.device = "cpu",
) -> Path:
    """Write the overview PNG for the recipes in ``runs`` (``{recipe: run_dir}``).

    Each run directory must hold ``eval/z.train.pkl`` and ``eval/z.test.pkl`` (written by
    :func:`cryonoo.experiments.report.evaluate_run`); ``metrics`` holds each recipe's
    ``metrics.json`` content (for the label R²); ``data_dir`` is the simulated dataset with
    ``labels.npy``, ``split.npz`` and ``gt/vol_*.mrc``. Returns the written path.
    """
    if not runs:
        raise ValueError("plot_overview needs at least one run")
    data = load_dataset_dir(data_dir)
    labels = np.load(Path(data_dir) / "labels.npy")
    y_train, y_test = labels[data.split["train"]], labels[data.split["test"]]
    pick = _examples(y_test, n_examples)
    gt = load_gt_volumes(sorted((Path(data_dir) / "gt").glob("vol_*.mrc"))).numpy()
    section_rows = [("ground truth", [gt[y_test[i]] for i in pick])]
    fig = Figure(figsize=(4.4 + 1.8 * n_examples, 2.0 * (len(runs) + 1)), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(len(runs) + 1, 2 + n_examples)
    for row, (name, run_dir) in enumerate(runs.items()):
        z_train = load_z_pkl(Path(run_dir) / "eval" / "z.train.pkl")[0]
        z_test = load_z_pkl(Path(run_dir) / "eval" / "z.test.pkl")[0]
        lab = metrics.get(name, {}).get("label_recovery") or {}
        panel = {"z_train": z_train, "z_test": z_test, "y_train": y_train, "y_test": y_test,
                 "label_range": (labels.min(), labels.max()), "seen": lab.get("seen"),
                 "unseen": lab.get("unseen")}  # fmt: skip
        _scatter_row(fig, gs, row + 1, name, panel)
        run = load_run(run_dir, device=device)
        dev = next(run.model.parameters()).device
        with torch.no_grad():
            maps = [
                run.model.volume(torch.as_tensor(z_test[i], device=dev), run.norm_std)
                .float().cpu().numpy()
                for i in pick
            ]  # fmt: skip
        section_rows.append((name, maps))
    _legend(fig, gs, ceiling)
    _sections(fig, gs, section_rows, y_test[pick])
    fig.suptitle("seen vs unseen latents (colour: true conformation) and maps of unseen images",
                 fontsize=9)  # fmt: skip
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return out
