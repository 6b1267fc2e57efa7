"""Amortized vs autodecoder inference (paper Table 2): what does a latent for a new image cost?

On one simulated dataset (:func:`~cryonoo.experiments.benchmark.simulate_dataset`), the ``cryodrgn``
recipe (amortized VAE) and the ``autodecoder`` recipe train with the same decoder, seed, batch
size and epochs on the train split. On the **test** split:

* amortized: one encoder pass over the split (posterior means);
* autodecoder: test-time optimization of every test latent with the frozen decoder, at each
  budget of ``steps`` Adam steps (one optimization per batch; the latents after step ``k`` are
  exactly those of a ``k``-step run, and its wall time is the time to reach step ``k``).

Per row: inference wall time (s) over the split, training time (the sum of the epochs' loop time
in ``stats.jsonl``, so a resumed run counts its earlier epochs), total = train + inference,
per-image FSC_AUC of the split (:mod:`cryonoo.eval.per_image`, latents as inferred) and the
train↔test latent shift with its train↔train null (:mod:`cryonoo.eval.latent`; the
autodecoder's training latents are its learned table). The comparison takes the smallest budget
whose mean FSC_AUC reaches the amortized one (else the best budget) and reports the time ratios
autodecoder / amortized. Writes ``inference.json`` and ``inference.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.eval.latent import latent_shift_with_null
from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc
from cryonoo.experiments.benchmark import BenchmarkConfig, benchmark_recipe, simulate_dataset
from cryonoo.experiments.machine import describe_device
from cryonoo.experiments.report import _json_ready
from cryonoo.io.atomic import atomic_write
from cryonoo.io.dataset import ParticleDataset, make_loader, open_dataset
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.train.encode import encode_dataset, resolve_device
from cryonoo.train.run import TrainedRun, load_run
from cryonoo.train.trainer import train

__all__ = [
    "InferenceBenchConfig",
    "format_comparison",
    "format_inference_markdown",
    "rate",
    "run_inference_bench",
    "seconds",
]

Log = Callable[[str], None]
StepHook = Callable[[dict[str, Any]], None]

_SHIFT_KEYS = ("kld", "tv", "jsd", "hellinger", "wd")


@dataclass(frozen=True)
class InferenceBenchConfig(BenchmarkConfig):
    """The generalization benchmark's scale (smaller defaults) plus the test-time budgets.

    ``steps`` are the autodecoder's Adam budgets, ``fit_lr`` its test-time learning rate and
    ``fit_batch_size`` the images optimized (or encoded) at once.
    """

    n_images: int = 2000
    epochs: int = 10
    steps: tuple[int, ...] = (5, 20, 50)
    fit_lr: float = 0.05
    fit_batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        steps = tuple(sorted({int(k) for k in self.steps}))
        if not steps or steps[0] < 1:
            raise ValueError(f"steps must be positive integers, got {self.steps!r}")
        if not self.fit_lr > 0 or self.fit_batch_size < 1:
            raise ValueError(
                f"fit_lr must be > 0 and fit_batch_size ≥ 1, got {self.fit_lr}, "
                f"{self.fit_batch_size}"
            )
        object.__setattr__(self, "steps", steps)


#: the recipes compared: the amortized VAE and the autodecoder, same decoder
MODELS_COMPARED = ("cryodrgn", "autodecoder")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_seconds(run_dir: Path) -> float:
    lines = (run_dir / "stats.jsonl").read_text().splitlines()
    return float(sum(json.loads(line)["time_s"] for line in lines if line.strip()))


def _open_split(run: TrainedRun, data_dir: Path, split: str) -> ParticleDataset:
    prep = run.train.preprocessing()
    return open_dataset(data_dir, ind=split, preprocessing=prep, norm_std=run.norm_std)


def _fit_budgets(
    model: AutoDecoder, dataset: ParticleDataset, device: torch.device, config: InferenceBenchConfig
) -> dict[int, tuple[np.ndarray, float]]:
    """``{k: ((N, zdim) latents after k steps, seconds to reach step k)}`` over ``dataset``."""
    budgets = set(config.steps)
    latents: dict[int, list[torch.Tensor]] = {k: [] for k in budgets}
    seconds = dict.fromkeys(budgets, 0.0)
    for cpu_batch in make_loader(dataset, config.fit_batch_size, shuffle=False, pin_memory=False):
        t0 = time.perf_counter()
        batch = cpu_batch.to(device)

        def record(k: int, z: torch.Tensor, t0: float = t0) -> None:
            if k in budgets:
                _sync(device)
                seconds[k] += time.perf_counter() - t0
                latents[k].append(z.float().cpu())

        model.fit_latents(
            batch.images, batch.rot, batch.ctf, batch.trans, max(budgets), config.fit_lr,
            on_step=record,
        )  # fmt: skip
    return {k: (torch.cat(latents[k]).numpy(), seconds[k]) for k in sorted(budgets)}


def _row(
    method: str,
    z_train: np.ndarray,
    z_test: np.ndarray,
    inference_s: float,
    train_s: float,
    run: TrainedRun,
    test_set: ParticleDataset,
    truth: tuple[np.ndarray, torch.Tensor],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    labels, gt = truth
    fsc = per_image_fsc(
        run.model, test_set, labels, gt, norm_std=run.norm_std, seed=seed, device=device,
        latents=z_test,
    )  # fmt: skip
    shift = latent_shift_with_null(z_train, z_test, seed=seed)
    return {
        "method": method,
        "recipe": run.train.name,
        "inference_s": inference_s,
        "images_per_s": len(z_test) / max(inference_s, 1e-12),
        "train_s": train_s,
        "total_s": train_s + inference_s,
        "per_image_fsc": fsc.summary(),
        "latent_shift": {k: shift["shift"][k] for k in _SHIFT_KEYS},
        "latent_shift_null": {k: shift["null"][k] for k in _SHIFT_KEYS},
    }


def _compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ref = rows[0]
    fits = rows[1:]
    target = ref["per_image_fsc"]["mean"]
    reached = [r for r in fits if r["per_image_fsc"]["mean"] >= target]
    pick = reached[0] if reached else max(fits, key=lambda r: r["per_image_fsc"]["mean"])
    return {
        "reference": ref["method"],
        "reference_fsc": target,
        "autodecoder": pick["method"],
        "steps": pick.get("steps"),
        "autodecoder_fsc": pick["per_image_fsc"]["mean"],
        "reached": bool(reached),
        "inference_ratio": pick["inference_s"] / max(ref["inference_s"], 1e-12),
        "total_ratio": pick["total_s"] / max(ref["total_s"], 1e-12),
    }


def run_inference_bench(
    outdir: str | os.PathLike[str],
    config: InferenceBenchConfig = InferenceBenchConfig(),
    *,
    device: str | None = None,
    log: Log | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the ``inference.json`` content."""
    say = log or (lambda _msg: None)
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    recipes = {name: benchmark_recipe(name, config, config.seed) for name in MODELS_COMPARED}
    data_dir = simulate_dataset(root / "data", config, config.seed, say)
    data = load_dataset_dir(data_dir)
    if data.labels is None or not data.gt_volumes:
        raise ValueError(f"{data_dir} has no labels.npy or gt/ maps; re-simulate it")
    truth = (data.labels, load_gt_volumes(data.gt_volumes))
    train_set = open_dataset(data_dir, ind="train")
    runs: dict[str, TrainedRun] = {}
    for name, recipe in recipes.items():
        run_dir = root / name
        say(f"training {name} → {run_dir}")
        train(
            recipe,
            train_set,
            run_dir,
            device=dev,
            resume=(run_dir / "config.json").is_file(),
            on_step=on_step,
            data_info={"particles": str(data_dir), "ind": "train"},
        )
        runs[name] = load_run(run_dir, device=dev)

    vae_run, ad_run = runs["cryodrgn"], runs["autodecoder"]
    test_set = _open_split(vae_run, data_dir, "test")
    say(f"amortized inference of {len(test_set):,} test images")
    t0 = time.perf_counter()
    z_test = encode_dataset(vae_run.model, test_set, dev, batch_size=config.fit_batch_size)[0]
    _sync(dev)
    seconds = time.perf_counter() - t0
    z_train = encode_dataset(vae_run.model, _open_split(vae_run, data_dir, "train"), dev)[0]
    common = {"test_set": test_set, "truth": truth, "device": dev, "seed": config.seed}
    rows = [
        _row(
            "amortized", z_train, z_test, seconds, _train_seconds(vae_run.run_dir), vae_run,
            **common,
        )
    ]  # fmt: skip

    ad_test = _open_split(ad_run, data_dir, "test")
    say(f"autodecoding {len(ad_test):,} test images, budgets {list(config.steps)} steps")
    fits = _fit_budgets(ad_run.model, ad_test, dev, config)
    ad_train_s = _train_seconds(ad_run.run_dir)
    table = ad_run.model.latent_table().cpu().numpy()
    for k, (z_fit, secs) in fits.items():
        say(f"evaluating the {k}-step latents")
        row = _row(f"autodecode {k}", table, z_fit, secs, ad_train_s, ad_run, **common)
        rows.append({**row, "steps": k})

    result = _json_ready(
        {
            "config": asdict(config),
            "device": describe_device(dev),
            "n_test": len(test_set),
            "rows": rows,
            "comparison": _compare(rows),
        }
    )
    with atomic_write(root / "inference.json", "w") as fh:
        json.dump(result, fh, indent=2)
    with atomic_write(root / "inference.md", "w") as fh:
        fh.write(format_inference_markdown(result))
    return result


def format_inference_markdown(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table plus the speed comparison."""
    cfg = result["config"]
    lines = [
        f"{cfg['phantom']}, {cfg['n_images']:,} images of {cfg['box']} px (SNR {cfg['snr']}), "
        f"{cfg['epochs']} epochs, widths {cfg['enc_dim']}/{cfg['dec_dim']}, zdim {cfg['zdim']}, "
        f"seed {cfg['seed']}; {result['n_test']:,} test images; device: {result['device']}.",
        "",
        "| method | inference (s) | images/s | train (s) | total (s) | per-image FSC_AUC "
        "mean (std) / median | KLD (null) | WD (null) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        f, s, n = r["per_image_fsc"], r["latent_shift"], r["latent_shift_null"]
        lines.append(
            f"| {r['method']} | {seconds(r['inference_s'])} | {rate(r['images_per_s'])} | "
            f"{r['train_s']:.1f} | {r['total_s']:.1f} | "
            f"{f['mean']:.3f} ({f['std']:.3f}) / {f['median']:.3f} | "
            f"{_num(s['kld'])} ({_num(n['kld'])}) | {_num(s['wd'])} ({_num(n['wd'])}) |"
        )
    return "\n".join([*lines, "", format_comparison(result)]) + "\n"


def format_comparison(result: dict[str, Any]) -> str:
    """One sentence: the speed ratio at equal (or the best reached) per-image FSC_AUC."""
    c = result["comparison"]
    how = "reaches" if c["reached"] else "does not reach (best budget:"
    end = "" if c["reached"] else ")"
    return (
        f"The autodecoder {how} the amortized per-image FSC_AUC ({c['reference_fsc']:.3f}) at "
        f"{c['steps']} steps{end} ({c['autodecoder_fsc']:.3f}): its inference takes "
        f"{c['inference_ratio']:,.0f}× the encoder pass' time, train + inference "
        f"{c['total_ratio']:.2f}×."
    )


def seconds(value: float) -> str:
    """Seconds for a table cell: 2 decimals from 1 s up, else 3 significant digits."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def rate(images_per_s: float) -> str:
    """Images per second for a table cell: whole numbers from 100 up, else 3 digits."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
