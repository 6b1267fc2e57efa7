"""Sweep self-distillation settings on one simulated dataset and tabulate generalization.

Each variant is the ``cryonoo`` recipe (or another base) with JSON overrides (flat
``config.json`` names or a settings file's nested sections), trained with the
benchmark's scale (``cryonoo.experiments.benchmark.BenchmarkConfig``) and evaluated like ``cryonoo
bench generalization``. Example::

    python benchmarks/ssl_sweep.py -o /tmp/sweep --snr 1.0 --device cuda \\
        --variant base=cryodrgn --variant plateau_off=cryonoo:'{"lr_plateau": false}'

Prints a Markdown table (per-image FSC_AUC train/test, latent shift, label recovery) and saves
``sweep.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.experiments.benchmark import BenchmarkConfig, format_tables, summarize_seeds
from cryonoo.experiments.report import evaluate_run
from cryonoo.io.dataset import open_dataset
from cryonoo.train.config_file import config_from_mapping
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``name=recipe[:json]`` → (name, recipe, overrides)."""
    name, _, rest = text.partition("=")
    recipe, _, js = rest.partition(":")
    return name, recipe or "cryonoo", json.loads(js) if js else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--variant", action="append", required=True, help="name=recipe[:json]")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--n-images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    scale = BenchmarkConfig(
        box=args.box,
        n_images=args.n_images,
        snr=args.snr,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    data_dir = args.outdir / "data"
    if not (data_dir / "config.json").is_file():
        phantom = PHANTOMS.build(scale.phantom, n_conformations=scale.n_conformations)
        simulate_phantom(
            data_dir,
            phantom,
            SimulationConfig(box=args.box, n_images=args.n_images, snr=args.snr, seed=args.seed),
        )
    dataset = open_dataset(data_dir, ind="train")
    results = {}
    for text in args.variant:
        name, recipe, overrides = parse_variant(text)
        config = get_recipe(recipe).replace(
            {
                "optim.epochs": scale.epochs,
                "ssl.warmup": scale.warmup,
                "model.zdim": scale.zdim,
                "model.enc_dim": scale.enc_dim,
                "model.dec_dim": scale.dec_dim,
                "optim.batch_size": scale.batch_size,
                "optim.seed": args.seed,
            },
            name=name,
        )
        config = config_from_mapping(overrides, base=config)  # flat or nested settings
        run = args.outdir / name
        train(config, dataset, run, device=args.device, resume=(run / "config.json").is_file())
        results[name] = evaluate_run(
            run, data_dir, run / "eval", seed=args.seed, device=args.device, kmeans_k=()
        )
        print(name, json.dumps(results[name].get("label_recovery")), flush=True)
    (args.outdir / "sweep.json").write_text(json.dumps(results, indent=2))
    print(format_tables(summarize_seeds({str(args.seed): results})))


if __name__ == "__main__":
    main()
