"""What semi-amortized refinement buys over the encoder's latent, and what it costs.

For a trained run with an encoder (:class:`~cryonoo.models.vae.HetVAE`) and a dataset directory
(``cryonoo simulate`` layout) with labels and ground-truth maps:

* the **train** split is encoded (posterior means, amortized): these latents stand for the
  latents a user gets from training, and the kNN of :func:`~cryonoo.eval.labels.label_recovery`
  is fitted on (half of) them, as in ``cryonoo evaluate``;
* the held-out split (default ``test``) is encoded and then refined
  (:meth:`HetVAE.refine <cryonoo.models.vae.HetVAE.refine>`: the posterior mean, then ``K``
  Adam steps of each image's point objective against the frozen decoder at its pose) in **one**
  pass per batch of ``max(K)`` steps; the latents and wall time after step ``k`` are recorded for
  every budget ``k`` (the latents after step ``k`` are exactly those of a ``k``-step run).

Per row (``amortized`` = 0 steps, ``refine K`` …) it reports the unseen label score of the
held-out latents against the kNN fitted on the amortized train latents (kNN R² for continuous
labels, accuracy for discrete ones), the per-image FSC_AUC of the held-out split with those
latents (:func:`~cryonoo.eval.per_image.per_image_fsc`), the inference wall time in seconds and
images/s, and the mean distance ``|z_K − μ|`` from the encoder's latent. Times are
``time.perf_counter`` around the model calls of each batch only (encoder pass, then the refinement
steps; data loading and host↔device copies are not counted; CUDA is synchronized), so the
``refine K`` time includes its encoder pass.

With ``autodecoder_run`` (an ``autodecoder`` recipe run on the same data) its test-time fit at
its default budget (``fit_steps`` Adam steps at ``fit_lr``) is timed as
:func:`cryonoo.train.inference.infer_latents` (``method="autodecode"``) over the held-out split
(loading included: negligible beside the optimization), scored the same way against its own
learned training latents (its latent table, labels from its ``train_indices.npy``), and every row
gets ``speed_vs_autodecoder`` = autodecoder seconds / row seconds (> 1: faster).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.eval.labels import label_recovery
from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc
from cryonoo.experiments.machine import describe_device
from cryonoo.experiments.report import _json_ready
from cryonoo.io.dataset import ParticleDataset, make_loader, open_dataset
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.refine import REFINE_LR, check_lr, frozen
from cryonoo.models.vae import HetVAE
from cryonoo.physics.lattice import check_band
from cryonoo.train.encode import encode_dataset, resolve_device
from cryonoo.train.inference import infer_latents
from cryonoo.train.run import TrainedRun, load_run

__all__ = [
    "DEFAULT_STEPS",
    "check_steps",
    "evaluate_refinement",
    "format_refinement",
    "refine_budgets",
]

Log = Callable[[str], None]

#: default refinement budgets (Adam steps) compared with the amortized latent
DEFAULT_STEPS = (5, 10, 20)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_steps(steps: int | Sequence[int], *, allow_zero: bool = False) -> tuple[int, ...]:
    """Refinement budgets as sorted unique ``int`` s, each ≥ 1 (≥ 0 with ``allow_zero``).

    Raises ``ValueError`` for an empty sequence, a non-integer or a budget below the minimum.
    """
    items = (steps,) if isinstance(steps, int) else tuple(steps)
    low = 0 if allow_zero else 1
    if not items:
        raise ValueError("steps must name at least one refinement budget, got none")
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < low:
            why = "the amortized row is K = 0, always included" if not allow_zero else ""
            raise ValueError(
                f"refinement budgets must be integers ≥ {low}, got {k!r} in {list(items)}"
                + (f" ({why})" if why else "")
            )
    return tuple(sorted({int(k) for k in items}))


def _check_bands(bands: Sequence[float | None]) -> tuple[float | None, ...]:
    """``bands`` as a tuple, each ``None`` or a number in ``(0, 0.5]`` cycles/pixel."""
    items = tuple(bands)
    if not items:
        raise ValueError("bands must name at least one entry (None: the whole loss disk)")
    return tuple(None if b is None else check_band(b, "each band (or None)") for b in items)


def refine_budgets(
    model: HetVAE,
    dataset: ParticleDataset,
    device: torch.device,
    steps: int | Sequence[int],
    *,
    lr: float = REFINE_LR,
    band: float | None = None,
    batch_size: int = 1024,
) -> dict[int, tuple[np.ndarray, float]]:
    """``{K: ((N, zdim) float32 latents after K Adam steps, seconds to reach step K)}``.

    One pass over ``dataset`` (dataset order) per batch: the encoder's posterior means (budget
    ``K = 0``, exactly :func:`~cryonoo.train.encode.encode_dataset`'s), then ``max(steps)``
    refinement steps at learning rate ``lr`` (latent units per step; ``band``: on the
    frequencies ``|k| ≤ band`` cycles/pixel only) with the latents of every budget recorded on
    the way, equal to separate ``model.refine(..., steps=K, band=band)`` runs. Seconds
    are wall time around the model calls only (module docstring), summed over batches.
    """
    if not isinstance(model, HetVAE):
        raise ValueError(f"refinement needs a HetVAE (an encoder), got {type(model).__name__}")
    budgets = check_steps(steps, allow_zero=True)
    lr = check_lr(lr)
    wanted = set(budgets)
    latents: dict[int, list[torch.Tensor]] = {k: [] for k in budgets}
    seconds = dict.fromkeys(budgets, 0.0)
    for cpu_batch in make_loader(dataset, batch_size, shuffle=False, pin_memory=False):
        b = cpu_batch.to(device)
        _sync(device)
        t0 = time.perf_counter()

        def record(k: int, z: torch.Tensor, t0: float = t0) -> None:
            if k in wanted:
                _sync(device)
                seconds[k] += time.perf_counter() - t0
                latents[k].append(z.detach().float().cpu())

        # HetVAE.refine, split so that the encoder's latent (step 0) is recorded too
        with frozen(model), torch.no_grad():
            mu = model.encode(b.images, b.ctf, b.trans, rot=b.rot)
        record(0, mu)
        if budgets[-1] > 0:
            model.refine_latents(
                b.images, b.rot, b.ctf, b.trans, z0=mu, steps=budgets[-1], lr=lr, band=band,
                on_step=record,
            )  # fmt: skip
    empty = np.zeros((0, model.zdim), np.float32)
    return {
        k: (torch.cat(latents[k]).numpy() if latents[k] else empty, seconds[k]) for k in budgets
    }


def _open(run: TrainedRun, root: Path, split: str) -> ParticleDataset:
    prep = run.train.preprocessing()
    dataset = open_dataset(root, ind=split, preprocessing=prep, norm_std=run.norm_std)
    if dataset.D != run.model.D:
        raise ValueError(
            f"{run.run_dir} was trained on {run.model.D - 1}-px images, the dataset has "
            f"{dataset.box}-px images"
        )
    return dataset


def _score(
    run: TrainedRun,
    z_fit: np.ndarray,
    y_fit: np.ndarray | None,
    z_test: np.ndarray,
    test_set: ParticleDataset,
    truth: tuple[np.ndarray | None, torch.Tensor | None],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Label recovery (kNN on ``z_fit``) and per-image FSC of ``z_test``; ``None`` parts when
    the dataset has no labels / maps."""
    labels, gt = truth
    out: dict[str, Any] = {"unseen": None, "label_recovery": None, "per_image_fsc": None}
    if labels is not None and y_fit is not None:
        rec = label_recovery(z_fit, y_fit, z_test, labels[test_set.indices], seed=seed)
        out.update(unseen=rec["unseen"], label_recovery=rec)
    if labels is not None and gt is not None:
        fsc = per_image_fsc(
            run.model, test_set, labels, gt, norm_std=run.norm_std, seed=seed, device=device,
            latents=z_test,
        )  # fmt: skip
        out["per_image_fsc"] = fsc.summary()
    return out


def evaluate_refinement(
    run_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    steps: int | Sequence[int] = DEFAULT_STEPS,
    lr: float | None = None,
    bands: Sequence[float | None] = (None,),
    split: str = "test",
    epoch: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    autodecoder_run: str | os.PathLike[str] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Amortized vs refined (vs autodecoded) latents of a held-out split (module docstring).

    Parameters
    ----------
    run_dir:
        A run with an encoder (``HetVAE``: ``cryodrgn``, ``cryonoo`` … recipes).
    data_dir:
        Its dataset directory; needs a ``train`` split and ``split``; ``labels.npy`` and
        ``gt/vol_*.mrc`` for the label and FSC columns (``None`` without them).
    steps:
        Refinement budgets ``K`` (Adam steps, each ≥ 1; the amortized row is ``K = 0``).
    lr:
        Refinement learning rate (latent units per step); ``None``: ``REFINE_LR``.
    bands:
        Refine once per entry: ``None`` fits the whole loss disk, a number ``b`` the
        frequencies ``|k| ≤ b`` cycles/pixel only (rows ``refine K, |k| ≤ b``).
    split:
        The held-out split that is refined and scored (not ``train``).
    epoch:
        Checkpoint of ``run_dir`` (``None``: the newest); ``autodecoder_run`` uses its newest.
    seed:
        Seeds the kNN fit/seen halves and the per-image FSC's image choice.
    batch_size:
        Images encoded / refined at once (the latents do not depend on it).
    autodecoder_run:
        Optional ``autodecoder`` run on the same data, timed and scored as one more row.

    Returns
    -------
    dict
        JSON-ready: ``run``, ``recipe``, ``epoch``, ``dataset``, ``split``, ``device``, ``lr``,
        ``steps``, ``bands``, ``batch_size``, ``n`` (``{"train", split}`` image counts),
        ``label_metric`` (``"r2"``/``"accuracy"``/``None``), ``seen_amortized_train`` (seen
        score of the amortized train latents), ``encode_train_s``, ``rows`` (``amortized``,
        ``refine K`` …, ``autodecoder``; each ``method``, ``steps``, ``infer_s``,
        ``images_per_s``, ``unseen``, ``band``, ``label_recovery``, ``per_image_fsc``,
        ``shift_from_amortized``, ``speed_vs_autodecoder``) and ``autodecoder`` (its run,
        steps, lr; or ``None``).
    """
    say = log or (lambda _msg: None)
    budgets = check_steps(steps)
    lr = REFINE_LR if lr is None else check_lr(lr)
    bands = _check_bands(bands)
    dev = resolve_device(device)
    run = load_run(run_dir, epoch, dev)
    if not isinstance(run.model, HetVAE):
        raise ValueError(
            f"{run.run_dir} is a {run.train.name!r} run whose model ({type(run.model).__name__}) "
            "has no encoder: refinement starts from the encoder's latent, so it needs a HetVAE "
            "run; pass an autodecoder run as autodecoder_run= (--autodecoder) instead"
        )
    data = load_dataset_dir(data_dir)
    if split == "train" or split not in data.split or "train" not in data.split:
        raise ValueError(
            f"{data.root / 'split.npz'} has splits {sorted(data.split)}; need 'train' and a "
            f"held-out split other than 'train', got split={split!r}"
        )
    ad_run = None
    if autodecoder_run is not None:
        ad_run = load_run(autodecoder_run, None, dev)
        if not isinstance(ad_run.model, AutoDecoder):
            raise ValueError(
                f"autodecoder_run {ad_run.run_dir} is a {ad_run.train.name!r} run with a "
                f"{type(ad_run.model).__name__}, not an autodecoder (recipe 'autodecoder')"
            )
    labels = data.labels
    gt = load_gt_volumes(data.gt_volumes) if labels is not None and data.gt_volumes else None
    truth = (labels, gt)
    train_set, test_set = _open(run, data.root, "train"), _open(run, data.root, split)
    n_test = len(test_set)

    say(f"encoding {len(train_set):,} train particles (amortized)")
    _sync(dev)
    t0 = time.perf_counter()
    z_train = encode_dataset(run.model, train_set, dev, batch_size=batch_size)[0]
    _sync(dev)
    encode_train_s = time.perf_counter() - t0
    y_train = None if labels is None else labels[train_set.indices]

    def score(z: np.ndarray) -> dict[str, Any]:
        return _score(run, z_train, y_train, z, test_set, truth, dev, seed)

    rows: list[dict[str, Any]] = []
    mu: np.ndarray | None = None
    for band in bands:
        where = "" if band is None else f", |k| ≤ {band:g}"
        say(f"encoding and refining {n_test:,} {split} particles, budgets {list(budgets)}{where}")
        fits = refine_budgets(
            run.model, test_set, dev, (0, *budgets), lr=lr, band=band, batch_size=batch_size
        )
        if mu is None:
            mu = fits[0][0]
        else:
            del fits[0]  # one amortized row
        for k, (z, secs) in fits.items():
            say(f"scoring the {_method(k, band)} latents")
            rows.append(_row(k, z, secs, lr=lr, band=band, mu=mu, score=score))
    seen = rows[0]["label_recovery"]
    result: dict[str, Any] = {
        "run": str(run.run_dir),
        "recipe": run.train.name,
        "epoch": run.epoch,
        "dataset": str(data.root),
        "split": split,
        "device": describe_device(dev),
        "lr": lr,
        "steps": list(budgets),
        "bands": list(bands),
        "batch_size": batch_size,
        "n": {"train": len(train_set), split: n_test},
        "label_metric": None if seen is None else seen["metric"],
        "seen_amortized_train": None if seen is None else seen["seen"],
        "encode_train_s": encode_train_s,
        "rows": rows,
        "autodecoder": None,
    }
    if ad_run is not None:
        rows.append(_autodecoder_row(ad_run, data.root, split, truth, dev, seed, batch_size, say))
        result["autodecoder"] = {
            "run": str(ad_run.run_dir),
            "epoch": ad_run.epoch,
            "steps": ad_run.model.fit_steps,
            "lr": ad_run.model.fit_lr,
        }
    ad_s = rows[-1]["infer_s"] if ad_run is not None else None
    for row in rows:
        row["speed_vs_autodecoder"] = None if ad_s is None else ad_s / max(row["infer_s"], 1e-12)
    return _json_ready(result)


def _method(steps: int, band: float | None) -> str:
    """A row's name: ``amortized``, ``refine K`` or ``refine K, |k| ≤ b``."""
    if steps == 0:
        return "amortized"
    return f"refine {steps}" + ("" if band is None else f", |k| ≤ {band:g}")


def _row(
    steps: int,
    z: np.ndarray,
    seconds: float,
    *,
    lr: float,
    band: float | None,
    mu: np.ndarray,
    score: Callable[[np.ndarray], dict[str, Any]],
) -> dict[str, Any]:
    """One row of the table: the latents ``z`` after ``steps`` Adam steps (0: amortized)."""
    return {
        "method": _method(steps, band),
        "steps": steps,
        "lr": None if steps == 0 else lr,
        "band": None if steps == 0 else band,
        "infer_s": seconds,
        "images_per_s": len(z) / max(seconds, 1e-12),
        **score(z),
        "shift_from_amortized": float(np.linalg.norm(z - mu, axis=1).mean()),
    }


def _autodecoder_row(
    ad_run: TrainedRun,
    root: Path,
    split: str,
    truth: tuple[np.ndarray | None, torch.Tensor | None],
    device: torch.device,
    seed: int,
    batch_size: int,
    say: Log,
) -> dict[str, Any]:
    model = ad_run.model
    if not isinstance(model, AutoDecoder):  # checked by evaluate_refinement
        raise TypeError(f"expected an AutoDecoder, got {type(model).__name__}")
    test_set = _open(ad_run, root, split)
    table = model.latent_table().cpu().numpy()
    labels = truth[0]
    y_table = None
    if labels is not None:
        idx_file = ad_run.run_dir / "train_indices.npy"
        idx = np.load(idx_file) if idx_file.is_file() else None
        if idx is None or len(idx) != len(table):
            raise ValueError(
                f"{ad_run.run_dir}: cannot match its {len(table)} learned latents to labels "
                f"({idx_file} is missing or has another length)"
            )
        y_table = labels[idx]
    say(f"autodecoding {len(test_set):,} {split} particles ({model.fit_steps} steps)")
    _sync(device)
    t0 = time.perf_counter()
    z, _ = infer_latents(model, test_set, device, "autodecode", batch_size=batch_size, seed=seed)
    _sync(device)
    secs = time.perf_counter() - t0
    return {
        "method": "autodecoder",
        "steps": model.fit_steps,
        "lr": model.fit_lr,
        "band": None,
        "infer_s": secs,
        "images_per_s": len(test_set) / max(secs, 1e-12),
        **_score(ad_run, table, y_table, z, test_set, truth, device, seed),
        "shift_from_amortized": None,
    }


def _cell(value: float | None, fmt: str = ".3f") -> str:
    if value is None or math.isnan(value):
        return "–"
    return format(value, fmt)


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_refinement(result: dict[str, Any]) -> str:
    """:func:`evaluate_refinement`'s result as a Markdown table (one row per method) with a
    header line (run, split, device, lr, seen score of the amortized train latents)."""
    metric = {"r2": "R²", "accuracy": "accuracy"}.get(result.get("label_metric") or "", "score")
    n = result["n"]
    lines = [
        f"{result['recipe']} run {result['run']} (epoch {result['epoch']}); "
        f"{n[result['split']]:,} {result['split']} images refined at lr {result['lr']:g}, kNN "
        f"fitted on {n['train']:,} amortized train latents (seen {metric} "
        f"{_cell(result['seen_amortized_train'])}); device: {result['device']}.",
        "",
        f"| method | steps | infer s | images/s | unseen {metric} | test FSC_AUC mean "
        "| speed vs autodecoder |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        fsc = r["per_image_fsc"]
        speed = r["speed_vs_autodecoder"]
        lines.append(
            f"| {r['method']} | {r['steps']} | {_seconds(r['infer_s'])} | "
            f"{_rate(r['images_per_s'])} | {_cell(r['unseen'])} | "
            f"{_cell(None if fsc is None else fsc['mean'])} | "
            f"{'–' if speed is None else f'{speed:.3g}×'} |"
        )
    return "\n".join(lines) + "\n"
