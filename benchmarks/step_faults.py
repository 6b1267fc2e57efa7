"""Page faults and time of one training step, with glibc's default heap or ``reuse_heap``.

Builds ``--recipe``'s model on a dataset directory (e.g. a ``cryonoo bench generalization``
``data_seed0``) with the demo's architecture (3 × 256, zdim 8), puts a self-distillation
wrapper past its warm-up, and times ``--steps`` optimizer steps (Adam, lr 1e-4) after 3
warm-up steps; minor page faults per step come from ``getrusage``. Run it once per heap
setting (each in a fresh process: the setting applies to the whole process)::

    OMP_NUM_THREADS=1 python benchmarks/step_faults.py DATA --heap default
    OMP_NUM_THREADS=1 python benchmarks/step_faults.py DATA --heap reuse
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from cryonoo.io.dataset import make_loader, open_dataset
from cryonoo.io.heap import reuse_heap
from cryonoo.train.build import build_model
from cryonoo.train.plan import estimate_data_sigma
from cryonoo.train.precision import resolve_precision
from cryonoo.train.recipes import get_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", help="dataset directory (train split used)")
    p.add_argument("--recipe", default="wake-sleep-8v-pv-ewd1")
    p.add_argument("--heap", choices=("default", "reuse"), default="default")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.heap == "reuse":
        reuse_heap()
    torch.set_num_threads(args.threads)
    config = get_recipe(args.recipe).replace(
        {
            "optim.batch_size": args.batch_size,
            "optim.precision": args.precision,
            "model.enc_dim": 256,
            "model.dec_dim": 256,
            "model.enc_layers": 3,
            "model.dec_layers": 3,
            "model.zdim": 8,
        }
    )
    dataset = open_dataset(args.data, ind="train", lazy=False)
    sigma = estimate_data_sigma(dataset) / dataset.norm_std
    model = build_model(config, dataset.D, noise_sigma=sigma)
    wrapped = hasattr(model, "set_epoch")
    if wrapped:
        model.set_epoch(config.ssl.warmup)  # past the warm-up: the SSL term is on
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    batches = iter(
        make_loader(dataset, args.batch_size, generator=torch.Generator().manual_seed(0))
    )
    generator = torch.Generator().manual_seed(0)
    precision = resolve_precision(args.precision, "cpu")

    def step() -> None:
        batch = next(batches)
        with precision.autocast():
            out = model.training_step(batch, generator) if wrapped else model.training_step(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.steps
    print(
        f"{args.recipe}, batch {args.batch_size}, {args.precision}, heap {args.heap}: "
        f"{ms:.1f} ms/step, {faults:.0f} minor page faults/step"
    )


if __name__ == "__main__":
    main()
