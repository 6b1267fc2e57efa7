"""``cryonoo evaluate``: every generalization measurement of one trained run, in one report.

For a run and a dataset directory (``cryonoo simulate`` layout) it computes, on the training
split ("seen") and a held-out split ("unseen", default ``test``):

* **per-image FSC_AUC** (:mod:`cryonoo.eval.per_image`) when ground-truth maps and labels exist;
* **latent shift** train↔test (KLD, TV, JSD, Hellinger, sliced W₂, exact W₁; :mod:`.latent`) with
  the train↔train **null** beside it;
* **label recovery** (kNN R² or accuracy, seen vs unseen; |Spearman(PC1, label)|) when labels
  exist;

and writes ``metrics.json``, figures (latent PCA/UMAP, FSC curves, training curves) and k-means
centroid maps of the held-out latents (``kmeans{k}/vol_*.mrc``). Without labels or ground truth
(real data) the latent, shift and clustering parts still run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.eval.clusters import kmeans, write_cluster_volumes
from cryonoo.eval.labels import label_recovery
from cryonoo.eval.latent import latent_shift_with_null
from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc
from cryonoo.eval.plots import (
    plot_fsc_curves,
    plot_latent_pca,
    plot_latent_umap,
    plot_training_curves,
)
from cryonoo.io.atomic import atomic_write
from cryonoo.io.cryodrgn import save_z_pkl
from cryonoo.io.dataset import open_dataset
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.train.encode import encode_dataset, resolve_device
from cryonoo.train.run import load_run

__all__ = ["evaluate_run"]

Log = Callable[[str], None]


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def evaluate_run(
    run_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    kmeans_k: Sequence[int] = (5, 20),
    bandwidth: float | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluate a run on a dataset directory; returns the ``metrics.json`` content."""
    say = log or (lambda _msg: None)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    run = load_run(run_dir, epoch, dev)
    data = load_dataset_dir(dataset_dir)
    if split not in data.split or "train" not in data.split:
        raise ValueError(
            f"{data.root / 'split.npz'} has splits {sorted(data.split)}; need 'train' and {split!r}"
        )
    cfg = run.train
    prep = cfg.preprocessing()
    sets = {
        name: open_dataset(data.root, ind=name, preprocessing=prep, norm_std=run.norm_std)
        for name in ("train", split)
    }
    if sets["train"].D != run.model.D:
        raise ValueError(
            f"the run was trained on {run.model.D - 1}-px images, the dataset has "
            f"{sets['train'].box}-px images"
        )
    say(f"encoding {len(sets['train']):,} train and {len(sets[split]):,} {split} particles")
    z = {name: encode_dataset(run.model, ds, dev)[0] for name, ds in sets.items()}
    for name, latents in z.items():
        save_z_pkl(out / f"z.{name}.pkl", latents)
    apix = float(data.config.get("apix") or run.data.get("apix") or 1.0)
    metrics: dict[str, Any] = {
        "run": str(run.run_dir),
        "recipe": cfg.name,
        "epoch": run.epoch,
        "dataset": str(data.root),
        "split": split,
        "n": {name: len(ds) for name, ds in sets.items()},
        "figures": {},
    }
    labels = data.labels
    if labels is not None and data.gt_volumes:
        say("per-image FSC against the ground-truth maps")
        gt = load_gt_volumes(data.gt_volumes)
        fsc = {
            name: per_image_fsc(
                run.model, ds, labels, gt, norm_std=run.norm_std, seed=seed, device=dev
            )
            for name, ds in sets.items()
        }
        metrics["per_image_fsc"] = {
            ("test" if name == split else name): result.summary() for name, result in fsc.items()
        }
        for name, result in fsc.items():
            result.save_curves(out / f"fsc_{name}.txt")
        metrics["figures"]["fsc"] = str(
            plot_fsc_curves(
                {
                    f"{cfg.name} {name}": (result.freq_px, result.curves)
                    for name, result in fsc.items()
                },
                out / "fsc_per_image.png",
                apix=apix,
                title="per-image FSC",
            )
        )
    say("latent shift (KDE divergences, Wasserstein) with the train↔train null")
    shift = latent_shift_with_null(z["train"], z[split], bandwidth=bandwidth, seed=seed)
    metrics["latent_shift"] = shift["shift"]
    metrics["latent_shift_null"] = shift["null"]
    y = {name: None if labels is None else labels[ds.indices] for name, ds in sets.items()}
    if labels is not None:
        metrics["label_recovery"] = label_recovery(
            z["train"], y["train"], z[split], y[split], seed=seed
        )
    metrics["latent_norm"] = {
        name: float(np.linalg.norm(latents, axis=1).mean()) for name, latents in z.items()
    }
    plot_kw = {"labels_train": y["train"], "labels_test": y[split], "method_name": cfg.name}
    metrics["figures"]["latent_pca"] = str(
        plot_latent_pca(z["train"], z[split], out / "latent_pca.png", **plot_kw)
    )
    umap_png = plot_latent_umap(z["train"], z[split], out / "latent_umap.png", **plot_kw)
    if umap_png is not None:
        metrics["figures"]["latent_umap"] = str(umap_png)
    stats = run.run_dir / "stats.jsonl"
    if stats.is_file():
        metrics["figures"]["training"] = str(plot_training_curves(stats, out / "training.png"))
    volume_fn = lambda zi: run.model.volume(zi.to(dev), norm_std=run.norm_std)  # noqa: E731
    for k in kmeans_k:
        if k > len(z[split]):
            continue
        say(f"k-means (k={k}) of the {split} latents and centroid maps")
        result = kmeans(z[split], k, seed=seed)
        with torch.no_grad():
            write_cluster_volumes(
                z[split][result.center_indices], volume_fn, out / f"kmeans{k}", voxel_size=apix
            )
        np.savetxt(out / f"kmeans{k}" / "labels.txt", result.labels, fmt="%d")
    metrics = _json_ready(metrics)
    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
    return metrics
