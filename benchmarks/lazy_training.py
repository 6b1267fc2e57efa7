"""Lazy against in-memory training: the same run, images read per batch or held preprocessed.

One simulated dataset on disk (``igg-1d``, float32 ``.mrcs``), one recipe (``cryodrgn`` by
default), the same architecture, batch size, seed, threads and precision; the dataset is opened
once with ``lazy=False`` (every image preprocessed once and held in memory) and once with
``lazy=True`` (each batch read from the memory-mapped stack, windowed, Hartley-transformed and
normalized when it is drawn; read ahead on a thread, ``cryonoo.io.prefetch``). Both runs train
in this process, one after the other, so they see the same machine. The epoch time is the
trainer's ``time_s``; the first epoch is dropped and the median of the rest reported. The lazy
run's stack is in the page cache after its first epoch when RAM allows (as in real use).

    python benchmarks/lazy_training.py -o /tmp/lazy --box 128 --n-images 500 --epochs 3

Prints a Markdown table and saves ``lazy.json``; the two runs' latents are compared too (equal
to float32 rounding: the same images reach the networks either way).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.eval.memory import peak_rss_bytes, reset_peak_rss
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.dataset import open_dataset
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train


def epoch_times(run: Path) -> list[float]:
    """Seconds per epoch from a run's ``stats.jsonl``."""
    lines = (run / "stats.jsonl").read_text().splitlines()
    return [json.loads(line)["time_s"] for line in lines if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--recipe", default="cryodrgn")
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--n-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dim", type=int, default=256, help="encoder and decoder width")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be ≥ 2 (the first epoch is dropped)")
    torch.set_num_threads(args.threads)
    data_dir = args.outdir / "data"
    if not (data_dir / "config.json").is_file():
        sim = SimulationConfig(box=args.box, n_images=args.n_images, snr=0.1, seed=0)
        simulate_phantom(data_dir, PHANTOMS.build("igg-1d"), sim)
    config = get_recipe(args.recipe).replace(
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
    results: dict[str, dict[str, float]] = {}
    for mode in ("in-memory", "lazy"):
        reset_peak_rss()
        dataset = open_dataset(data_dir, ind="train", lazy=mode == "lazy")
        run = args.outdir / mode
        train(config, dataset, run, device=args.device, resume=(run / "config.json").is_file())
        epoch_s = statistics.median(epoch_times(run)[1:])
        results[mode] = {
            "epoch_s": epoch_s,
            "images_per_s": len(dataset) / epoch_s,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
        }
        del dataset
    ratio = results["in-memory"]["epoch_s"] / results["lazy"]["epoch_s"]
    z = [load_z_pkl(args.outdir / m / f"z.{args.epochs}.pkl")[0] for m in ("in-memory", "lazy")]
    out = {"settings": vars(args) | {"outdir": str(args.outdir)}, "results": results}
    out |= {"lazy_speed_vs_in_memory": ratio, "max_abs_z_diff": float(np.abs(z[0] - z[1]).max())}
    (args.outdir / "lazy.json").write_text(json.dumps(out, indent=2))
    print(f"{args.recipe}, box {args.box}, {args.n_images} images (train split), dims {args.dim},")
    print(f"batch {args.batch_size}, {args.threads} thread(s), {args.device}, {args.precision}\n")
    print("| dataset | epoch (s, median) | images/s | peak RSS (MB) |\n| --- | --- | --- | --- |")
    for mode, r in results.items():
        print(f"| {mode} | {r['epoch_s']:.2f} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    print(f"\nlazy speed / in-memory speed: {ratio:.3f}; max |Δz| {out['max_abs_z_diff']:.2e}")


if __name__ == "__main__":
    main()
