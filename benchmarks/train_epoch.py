"""Training epochs on a large stack: seconds per epoch, images/s and peak memory (paper Table 6).

Builds an ``--n-images`` stack at ``--box`` by repeating a block of ``--block`` random images
(``cryonoo.experiments.encode_bench``'s builder: the cost of a step does not depend on what the
images show), with uniformly random poses and random CTFs, and trains ``--recipe`` on it from
the memory-mapped stack (lazy, as ``cryonoo train`` reads a large stack; ``--in-memory`` holds it
preprocessed) with the default architecture (3 × 1024 encoder and decoder, zdim 8) unless
``--dim`` says otherwise. The self-distillation term, where the recipe has one, is on from the
first epoch. The epoch time is the trainer's own ``time_s`` (``stats.jsonl``: the optimizer
steps, not the end-of-epoch latent pass); the first epoch also pays for warm-up (allocator,
CUDA kernels), so with ``--epochs ≥ 2`` the last epoch is the figure to quote. Peak memory:
this process's ``VmHWM`` (which counts touched pages of the memory-mapped stack) and, on CUDA,
``torch.cuda.max_memory_allocated``.

The paper's Table 6 (IgG-1D, box 128, batch 64): cryoDRGN 2:02 per epoch on an A100; the
target on a GPU is one epoch of 80 000 images in ≤ 1 minute::

    python benchmarks/train_epoch.py -o /tmp/epoch --box 128 --n-images 80000 --epochs 2 \\
        --device cuda --precision bf16
    OMP_NUM_THREADS=2 python benchmarks/train_epoch.py -o /tmp/epoch --box 64 --n-images 2000

Prints a Markdown table and saves ``train_epoch.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cryonoo.eval.memory import peak_rss_bytes, reset_peak_rss
from cryonoo.experiments.encode_bench import random_block, random_ctf, tile_mrcs
from cryonoo.experiments.machine import describe_device
from cryonoo.io.cryodrgn import save_ctf_pkl, save_poses
from cryonoo.io.dataset import open_dataset
from cryonoo.physics.rotations import random_rotations
from cryonoo.train.precision import resolve_precision
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train


def build_data(root: Path, n: int, box: int, block: int, seed: int) -> tuple[Path, Path, Path]:
    """``root/particles.mrcs`` (float16, ``n`` images tiled from ``block`` random ones), random
    ``poses.pkl`` (no shifts) and ``ctf.pkl``; kept when already there with the same size."""
    root.mkdir(parents=True, exist_ok=True)
    paths = root / "particles.mrcs", root / "poses.pkl", root / "ctf.pkl"
    stamp = root / "built.json"
    wanted = {"n": n, "box": box, "block": block, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return paths
    tile_mrcs(paths[0], random_block(min(block, n), box, seed), n, "float16")
    gen = torch.Generator().manual_seed(seed)
    save_poses(paths[1], random_rotations(n, gen, dtype=torch.float32).numpy())
    save_ctf_pkl(paths[2], random_ctf(n, box, seed))
    stamp.write_text(json.dumps(wanted))
    return paths


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--recipe", default="cryodrgn")
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--n-images", type=int, default=80_000)
    p.add_argument("--block", type=int, default=1024, help="distinct images in the stack")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dim", type=int, default=None, help="network width (default: recipe's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--in-memory", action="store_true", help="hold the stack preprocessed")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.n_images < args.batch_size or args.epochs < 1:
        p.error("need --n-images ≥ --batch-size and --epochs ≥ 1")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    particles, poses, ctf = build_data(
        args.outdir / "data", args.n_images, args.box, args.block, args.seed
    )
    changes: dict[str, Any] = {
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.seed": args.seed,
        "optim.precision": args.precision,
        "ssl.warmup": 0,
        "output.checkpoint_every": args.epochs,  # one latent pass and checkpoint, at the end
    }
    if args.dim is not None:
        changes |= {"model.enc_dim": args.dim, "model.dec_dim": args.dim}
    config = get_recipe(args.recipe).replace(changes)
    dataset = open_dataset(particles, poses, ctf, lazy=not args.in_memory)
    run = args.outdir / f"run_{args.recipe}_{args.precision}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time: this times, not resumes
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    epochs = train(config, dataset, run, device=device).stats
    wall = time.perf_counter() - start
    last = epochs[-1]["time_s"]
    out = {
        "settings": vars(args) | {"outdir": str(args.outdir)},
        "device": describe_device(device),
        "precision": resolve_precision(args.precision, device).name,
        "model": {k: getattr(config.model, k) for k in ("enc_dim", "dec_dim", "zdim")},
        "epoch_s": [e["time_s"] for e in epochs],
        "images_per_s": args.n_images / last,
        "wall_s": wall,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "peak_cuda_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "final_loss": epochs[-1].get("loss"),
    }
    if out["final_loss"] is None or not math.isfinite(out["final_loss"]):
        raise SystemExit(f"training diverged: {epochs[-1]}")
    (args.outdir / "train_epoch.json").write_text(json.dumps(out, indent=2))
    print_table(out)


def print_table(out: dict[str, Any]) -> None:
    s = out["settings"]
    print(f"{s['recipe']}, box {s['box']}, {s['n_images']} images, {out['model']}, batch")
    print(f"{s['batch_size']}, {out['precision']}, {out['device']}\n")
    print("| epoch | s | images/s |\n| --- | --- | --- |")
    for i, t in enumerate(out["epoch_s"], 1):
        print(f"| {i} | {t:.1f} | {s['n_images'] / t:.0f} |")
    cuda = out["peak_cuda_mb"]
    print(f"\nwall {out['wall_s']:.1f} s (with the end-of-run latent pass); peak RSS")
    print(f"{out['peak_rss_mb']:.0f} MB" + ("" if cuda is None else f"; peak CUDA {cuda:.0f} MB"))


if __name__ == "__main__":
    main()
