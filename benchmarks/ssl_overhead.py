"""Cost of self-distillation: a self-distilled epoch against a ``cryodrgn``-recipe epoch.

Every recipe of ``--recipes`` (default ``cryonoo``; e.g. ``cryonoo,expander-128``) and the plain
``cryodrgn`` recipe train on the same simulated dataset with the same architecture, batch size,
seed and thread count; the SSL term is on from the first epoch (``warmup_epochs = 0``) so every
timed epoch pays for it. The epoch time is the trainer's own (``time_s`` in ``stats.jsonl``); the
first epoch is dropped as warm-up and the median of the rest is reported. With ``--profile`` the
script also prints the operators that take the most time in one self-distillation step.

    python benchmarks/ssl_overhead.py -o /tmp/overhead --box 32 --n-images 2000 --epochs 4
    python benchmarks/ssl_overhead.py -o OUT --recipes cryonoo,expander-128 \\
        --set optim.fused_adam=true

``--set`` applies a setting to every recipe, the plain one included. Prints a Markdown table
and saves ``overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.io.dataset import make_loader, open_dataset
from cryonoo.train.build import build_model
from cryonoo.train.config_file import add_set_argument, apply_overrides
from cryonoo.train.plan import estimate_data_sigma
from cryonoo.train.precision import resolve_precision
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train


def epoch_times(run: Path) -> list[float]:
    """Seconds per epoch from a run's ``stats.jsonl``."""
    lines = (run / "stats.jsonl").read_text().splitlines()
    return [json.loads(line)["time_s"] for line in lines if line.strip()]


def profile_step(config, dataset, device: str, rows: int = 15) -> str:
    """Operator table of one self-distillation training step (forward + backward)."""
    sigma = estimate_data_sigma(dataset) / dataset.norm_std
    model = build_model(config, dataset.D, noise_sigma=sigma).to(device)
    model.set_epoch(config.ssl.warmup)
    loader = make_loader(
        dataset, config.optim.batch_size, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    precision = resolve_precision(config.optim.precision, device)
    with precision.autocast():
        loss = model.training_step(batch, gen).loss
    loss.backward()  # warm-up
    with torch.profiler.profile() as prof:
        with precision.autocast():
            loss = model.training_step(batch, gen).loss
        loss.backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--dim", type=int, default=256, help="encoder and decoder width")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", help="networks' precision: fp32, bf16, …")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--recipes", default="cryonoo", help="comma-separated recipes timed against cryodrgn"
    )
    add_set_argument(p, "a training setting for every recipe, cryodrgn included (repeatable)")
    args = p.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip() and r.strip() != "cryodrgn"]
    if args.epochs < 2:
        p.error("--epochs must be ≥ 2 (the first epoch is dropped)")
    torch.set_num_threads(args.threads)
    data_dir = args.outdir / "data"
    if not (data_dir / "config.json").is_file():
        sim = SimulationConfig(box=args.box, n_images=args.n_images, snr=0.1, seed=0)
        simulate_phantom(data_dir, PHANTOMS.build("igg-1d"), sim)
    dataset = open_dataset(data_dir, ind="train", lazy=False)
    results: dict[str, dict[str, float]] = {}
    configs = {}
    for name in ["cryodrgn", *recipes]:
        config = get_recipe(name).replace(
            {
                "optim.epochs": args.epochs,
                "ssl.warmup": 0,
                "model.enc_dim": args.dim,
                "model.dec_dim": args.dim,
                "optim.batch_size": args.batch_size,
                "optim.lr_plateau": False,
                "optim.seed": 0,
                "optim.precision": args.precision,
            }
        )
        config = apply_overrides(config, args.overrides)
        configs[name] = config
        run = args.outdir / f"{name}-{args.precision}"
        train(config, dataset, run, device=args.device, resume=(run / "config.json").is_file())
        times = epoch_times(run)[1:]
        results[name] = {
            "epoch_s": statistics.median(times),
            "images_per_s": len(dataset) / statistics.median(times),
        }
    plain = results["cryodrgn"]["epoch_s"]
    for r in results.values():
        r["ratio"] = r["epoch_s"] / plain
    out = {"settings": vars(args) | {"outdir": str(args.outdir)}, "results": results}
    if "cryonoo" in results:
        out["ratio"] = results["cryonoo"]["ratio"]
    (args.outdir / "overhead.json").write_text(json.dumps(out, indent=2))
    sets = ", ".join(args.overrides) or "recipe defaults"
    print(f"box {args.box}, {len(dataset)} images, dims {args.dim}, batch {args.batch_size}, ")
    print(f"{args.threads} thread(s), device {args.device}, precision {args.precision}; {sets}\n")
    print("| recipe | epoch (s, median) | images/s | / cryodrgn |\n| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['epoch_s']:.2f} | {r['images_per_s']:.0f} | {r['ratio']:.3f}× |")
    if args.profile:
        for name in recipes:
            print(f"\n{name}:\n{profile_step(configs[name], dataset, args.device)}")


if __name__ == "__main__":
    main()
