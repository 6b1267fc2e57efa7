"""The generalization benchmark: simulate → train several recipes → evaluate each, over seeds.

``cryonoo demo`` is one seed of this with the ``cryodrgn`` and ``cryonoo`` recipes at a size a
2-core CPU finishes in about ten minutes; ``cryonoo bench generalization`` runs any recipes over
several seeds and reports mean ± std across seeds. Every recipe of one seed trains on the same
simulated dataset with the same seed, architecture, batch size and number of epochs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.experiments.ceiling import CeilingConfig, label_ceiling
from cryonoo.experiments.jobs import run_tasks
from cryonoo.experiments.overview import plot_overview
from cryonoo.experiments.report import evaluate_run
from cryonoo.io.atomic import atomic_write
from cryonoo.io.dataset import open_dataset
from cryonoo.models.zoo import MODELS, has_encoder
from cryonoo.train.config_file import apply_overrides, config_from_mapping
from cryonoo.train.recipes import TrainConfig, get_recipe
from cryonoo.train.trainer import train

__all__ = [
    "BenchmarkConfig",
    "BenchmarkTask",
    "benchmark_recipe",
    "format_tables",
    "run_benchmark",
    "run_task",
    "simulate_dataset",
    "summarize_ceiling",
    "summarize_seeds",
    "task_cost",
]

Log = Callable[[str], None]
CEILING = "ceiling"  # the key of the oracle's result in each seed's results
StepHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BenchmarkConfig:
    """Dataset and training scale shared by every recipe (CPU-sized defaults)."""

    phantom: str = "igg-1d"
    n_conformations: int | None = None  # None: the phantom's default (100 for igg-1d/igg-rl)
    box: int = 32
    n_images: int = 4000
    snr: float = 0.1
    epochs: int = 20
    warmup_epochs: int | None = None  # None → epochs // 4 (the paper: 10 of 50 epochs)
    zdim: int = 8
    enc_layers: int = 3
    enc_dim: int = 256
    dec_layers: int = 3
    dec_dim: int = 256
    batch_size: int = 64
    precision: str = "auto"  # the networks' precision (cryonoo.train.precision)
    kmeans_k: tuple[int, ...] = (5,)
    ceiling: bool = True  # also train the supervised oracle encoder (cryonoo.experiments.ceiling)
    #: ``section.key=value`` settings applied to every recipe after the scale (``--set``)
    settings: tuple[str, ...] = ()

    @property
    def warmup(self) -> int:
        return self.epochs // 4 if self.warmup_epochs is None else self.warmup_epochs

    def training_settings(self) -> dict[str, dict[str, Any]]:
        """The scale every recipe trains at, in the settings file's nested sections
        (:mod:`cryonoo.train.config_file`): architecture, schedule, batch size, precision."""
        return {
            "model": {
                "zdim": self.zdim,
                "enc_layers": self.enc_layers,
                "enc_dim": self.enc_dim,
                "dec_layers": self.dec_layers,
                "dec_dim": self.dec_dim,
            },
            "optim": {
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "precision": self.precision,
            },
            "ssl": {"warmup": self.warmup},
            "output": {"checkpoint_every": self.epochs},  # only the final model is evaluated
        }


def simulate_dataset(
    data_dir: str | os.PathLike[str], config: BenchmarkConfig, seed: int, log: Log | None = None
) -> Path:
    """Simulate ``config``'s phantom dataset into ``data_dir`` unless it is already there."""
    data_dir = Path(data_dir)
    if not (data_dir / "config.json").is_file():
        if log is not None:
            log(f"simulating {config.phantom} ({config.n_images:,} images, seed {seed})")
        # None keeps the phantom's own count (discrete phantoms have a fixed one)
        phantom = PHANTOMS.build(config.phantom, n_conformations=config.n_conformations)
        sim = SimulationConfig(box=config.box, n_images=config.n_images, snr=config.snr, seed=seed)
        simulate_phantom(data_dir, phantom, sim)
    return data_dir


def benchmark_recipe(name: str, config: BenchmarkConfig, seed: int) -> TrainConfig:
    """Recipe ``name`` at the benchmark's scale (epochs, widths, batch size) and ``seed``,
    then ``config.settings`` (``section.key=value`` strings, as ``cryonoo train --set``).
    """
    recipe = get_recipe(name).replace({"optim.seed": seed})
    scaled = config_from_mapping(config.training_settings(), base=recipe)
    return apply_overrides(scaled, config.settings)


def run_benchmark(
    outdir: str | os.PathLike[str],
    recipes: Sequence[str],
    seeds: Sequence[int],
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    device: str | None = None,
    log: Log | None = None,
    on_step: StepHook | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every recipe for every seed; returns ``{seed: {recipe: metrics}}`` (also saved).

    With ``config.ceiling`` each seed's results also hold ``"ceiling"``: the held-out label
    recovery of a supervised encoder of the recipes' size trained on fresh images with the true
    labels (:func:`cryonoo.experiments.ceiling.label_ceiling`), the figure unseen recovery is read
    against. ``overview_seed{seed}.png`` shows every recipe's seen and unseen latents and the
    maps decoded from a few unseen images (:func:`cryonoo.experiments.overview.plot_overview`).
    ``results.json`` holds everything.

    ``jobs > 1`` trains the (seed, recipe) runs and the ceilings side by side in that many
    worker processes (:mod:`cryonoo.experiments.jobs`; the usable CPUs shared between them), the
    costliest first; each run is the same as when trained alone with that many threads.
    """
    say = log or (lambda _msg: None)
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    for name in recipes:  # fail before any work on a typo (listing the choices) or a bad setting
        recipe = benchmark_recipe(name, config, seeds[0] if seeds else 0)
        if not has_encoder(MODELS.get(recipe.model.kind)):
            raise ValueError(
                f"recipe {name!r} has no encoder: this benchmark scores one-pass latents; "
                "measure an autodecoder's test-time fit with cryonoo bench inference (or "
                "benchmarks/refine.py --autodecoder RUN)"
            )
    PHANTOMS.get(config.phantom)

    def simulate_all() -> None:  # while the workers start
        for seed in seeds:
            simulate_dataset(root / f"data_seed{seed}", config, seed, say)

    tasks = [BenchmarkTask(root, seed, name, config, device) for seed in seeds for name in recipes]
    if config.ceiling:
        tasks += [BenchmarkTask(root, seed, CEILING, config, device) for seed in seeds]
    tasks.sort(key=task_cost, reverse=True)
    done = run_tasks(run_task, tasks, jobs=jobs, log=say, on_step=on_step, prepare=simulate_all)
    results: dict[str, Any] = {}
    for seed in seeds:
        per_seed = {t.name: m for t, m in zip(tasks, done, strict=True) if t.seed == seed}
        per_seed = {
            name: per_seed[name] for name in [*recipes, CEILING] if name in per_seed
        }  # recipes in the order given, then the ceiling
        runs = {name: root / f"{name}_seed{seed}" for name in recipes}
        oracle = per_seed.get(CEILING, {}).get("label_r2")
        data_dir = root / f"data_seed{seed}"
        plot_overview(root / f"overview_seed{seed}.png", data_dir, runs, per_seed, ceiling=oracle)
        results[str(seed)] = per_seed
    record = {
        "config": asdict(config),
        "recipes": list(recipes),
        "seeds": list(seeds),
        "results": results,
    }
    with atomic_write(root / "results.json", "w") as fh:
        json.dump(record, fh, indent=2)
    return results


@dataclass(frozen=True)
class BenchmarkTask:
    """One recipe (or, with ``name == "ceiling"``, the label ceiling) of one benchmark seed."""

    root: Path
    seed: int
    name: str
    config: BenchmarkConfig
    device: str | None = None


def task_cost(task: BenchmarkTask) -> float:
    """Relative training cost (plain-VAE epochs): the post-warm-up epochs of a recipe with an
    SSL term count once more per rendered view; the ceiling counts as a few epochs."""
    if task.name == CEILING:
        return 4.0
    recipe = benchmark_recipe(task.name, task.config, task.seed)
    epochs, ssl = recipe.optim.epochs, recipe.ssl
    if ssl.objective is None:
        return float(epochs)
    views = len(ssl.noise_factors) / max(1, int(ssl.augment_options.get("draws", 1)))
    return epochs + (epochs - ssl.warmup) * 0.5 * views


def run_task(task: BenchmarkTask, log: Log, on_step: StepHook | None) -> dict[str, Any]:
    """Train and evaluate one recipe of one seed (resuming a run already there), or measure the
    seed's label ceiling → its metrics. The seed's dataset must have been simulated."""
    data_dir = task.root / f"data_seed{task.seed}"
    if task.name == CEILING:
        log(f"measuring the label ceiling (seed {task.seed})")
        return label_ceiling(
            task.root / f"ceiling_seed{task.seed}",
            data_dir,
            task.config,
            task.seed,
            config=CeilingConfig(),
            device=task.device,
            log=log,
        )
    recipe = benchmark_recipe(task.name, task.config, task.seed)
    run_dir = task.root / f"{task.name}_seed{task.seed}"
    log(f"training {task.name} (seed {task.seed}) → {run_dir}")
    train(
        recipe,
        open_dataset(data_dir, ind="train"),
        run_dir,
        device=task.device,
        resume=(run_dir / "config.json").is_file(),
        on_step=on_step,
        data_info={"particles": str(data_dir), "ind": "train"},
    )
    log(f"evaluating {task.name} (seed {task.seed})")
    return evaluate_run(
        run_dir,
        data_dir,
        run_dir / "eval",
        seed=task.seed,
        device=task.device,
        kmeans_k=task.config.kmeans_k,
    )


_FIELDS: dict[str, tuple[str, ...]] = {
    "fsc_train": ("per_image_fsc", "train", "mean"),
    "fsc_train_median": ("per_image_fsc", "train", "median"),
    "fsc_test": ("per_image_fsc", "test", "mean"),
    "fsc_test_median": ("per_image_fsc", "test", "median"),
    "kld": ("latent_shift", "kld"),
    "tv": ("latent_shift", "tv"),
    "jsd": ("latent_shift", "jsd"),
    "hellinger": ("latent_shift", "hellinger"),
    "wd": ("latent_shift", "wd"),
    "kld_null": ("latent_shift_null", "kld"),
    "wd_null": ("latent_shift_null", "wd"),
    "seen": ("label_recovery", "seen"),
    "unseen": ("label_recovery", "unseen"),
}


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return None if metrics is None else float(metrics)


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarize_ceiling(results: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """``{"label_r2": stats, "train": stats}`` of the oracle across seeds (``None`` if absent)."""
    runs = [per_seed[CEILING] for per_seed in results.values() if CEILING in per_seed]
    if not runs:
        return None
    return {key: _stats([float(r[key]) for r in runs]) for key in ("label_r2", "train")}


def summarize_seeds(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{recipe: {field: {"mean", "std", "n"}}}`` across seeds (std with ddof 0)."""
    recipes = sorted({r for per_seed in results.values() for r in per_seed if r != CEILING})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for recipe in recipes:
        out[recipe] = {}
        for field, path in _FIELDS.items():
            values = [
                _get(per_seed[recipe], path) for per_seed in results.values() if recipe in per_seed
            ]
            values = [v for v in values if v is not None]
            if values:
                out[recipe][field] = _stats(values)
    return out


def format_tables(
    summary: dict[str, dict[str, dict[str, float]]],
    ceiling: dict[str, dict[str, float]] | None = None,
) -> str:
    """Markdown tables in the paper's layout (Table 1 FSC, Table 3 shift) plus label recovery,
    with the oracle's ceiling (``summarize_ceiling``) under the last table when given."""

    def cell(stats: dict[str, dict[str, float]], field: str, digits: int = 3) -> str:
        if field not in stats:
            return "–"
        s = stats[field]
        return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")

    lines = [
        "### Per-image FSC_AUC (Table 1; mean over conformations; ± across seeds)",
        "",
        "| recipe | train mean | train median | test mean | test median |",
        "| --- | --- | --- | --- | --- |",
    ]
    for recipe, stats in summary.items():
        lines.append(
            f"| {recipe} | {cell(stats, 'fsc_train')} | {cell(stats, 'fsc_train_median')}"
            f" | {cell(stats, 'fsc_test')} | {cell(stats, 'fsc_test_median')} |"
        )
    lines += [
        "",
        "### Train↔test latent shift (Table 3; null = train↔train)",
        "",
        "| recipe | KLD | TV | JSD | Hellinger | WD (sliced W2) | KLD null | WD null |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for recipe, stats in summary.items():
        row = " | ".join(
            cell(stats, f) for f in ("kld", "tv", "jsd", "hellinger", "wd", "kld_null", "wd_null")
        )
        lines.append(f"| {recipe} | {row} |")
    lines += [
        "",
        "### Label recovery (kNN R² or accuracy; seen = train, unseen = test)",
        "",
        "| recipe | seen | unseen |",
        "| --- | --- | --- |",
    ]
    for recipe, stats in summary.items():
        lines.append(f"| {recipe} | {cell(stats, 'seen')} | {cell(stats, 'unseen')} |")
    if ceiling is not None:
        lines.append(
            f"| ceiling (supervised encoder, fresh images) | {cell(ceiling, 'train')} | "
            f"{cell(ceiling, 'label_r2')} |"
        )
    return "\n".join(lines) + "\n"
