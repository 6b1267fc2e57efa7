"""Peak memory per image for training and inference, and the lazy pipeline on a large stack.

Every measurement runs in a fresh child process so its peak is its own: peak resident set size
(``VmHWM``, restarted once the child is set up) on CPU, ``torch.cuda.max_memory_allocated`` on
CUDA. The *per-image* figure is
the slope between two batch sizes (``(peak(B₂) − peak(B₁)) / (B₂ − B₁)``), which cancels the
fixed cost (weights, Adam state, the interpreter); the fixed part is reported as the intercept.

1. **Training**: three optimizer steps of the ``cryodrgn`` and ``cryonoo`` recipes (SSL term on)
   at batch B₁ and B₂, for each precision asked.
2. **Inference**: ``cryonoo encode`` of a stack ≥ 4× larger than the encoder's working memory
   (``--stack-gb``) at two batch sizes: the per-image slope, and the peak RSS, which stays far
   below the stack's size because encoding streams it.
3. **Lazy loading**: one pass of the training data loader (``lazy=True``) over that stack: the
   pipeline holds batches, never the dataset.

Example (the D = 128 row of ``docs/benchmarks.md``)::

    OMP_NUM_THREADS=1 python benchmarks/memory.py -o /tmp/mem --box 128 --dim 256 --stack-gb 2

Training only, default 3 × 1024 networks, chunked decoding (``--set`` takes any setting)::

    python benchmarks/memory.py -o /tmp/mem --box 128 --dim 1024 --batches 8,64 --threads 2 \\
        --precision fp32 --recipes cryodrgn --steps 2 --train-only --set optim.decoder_chunk=4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_PEAK = """
from cryonoo.eval.memory import AnonSampler as _AnonSampler, status_bytes as _status
from cryonoo.eval.memory import peak_rss_bytes as peak, reset_peak_rss as reset_peak
def AnonSampler():
    return _AnonSampler(interval_s=0.002)
"""

_CHILD_TRAIN = (
    _PEAK
    + """
import json, resource, sys, torch
from dataclasses import replace
from cryonoo.io.dataset import make_loader, open_dataset
from cryonoo.train.precision import resolve_precision
from cryonoo.train.recipes import TrainConfig
from cryonoo.train.build import build_model
from cryonoo.train.plan import estimate_data_sigma
torch.set_num_threads(int(sys.argv[4]))
config = TrainConfig.from_dict(json.loads(sys.argv[2]))
dev = torch.device(sys.argv[3])
dataset = open_dataset(sys.argv[1], ind="train", lazy=False)
sigma = estimate_data_sigma(dataset) / dataset.norm_std
model = build_model(config, dataset.D, noise_sigma=sigma).to(dev)
if hasattr(model, "set_epoch"):
    model.set_epoch(config.ssl.warmup)  # the SSL term is active
opt = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
prec = resolve_precision(config.optim.precision, dev)
loader = make_loader(dataset, config.optim.batch_size, generator=torch.Generator().manual_seed(0))
gen = torch.Generator(device=dev).manual_seed(0)
batches = iter(loader)
first = next(batches).to(dev)
cuda = dev.type == "cuda"
def measure():
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return peak()
if cuda:
    torch.cuda.reset_peak_memory_stats()
reset_peak()
before = measure()
ssl = hasattr(model, "set_epoch")
import time
times = []
for step in range(int(sys.argv[5])):
    t0 = time.perf_counter()
    batch = first if step == 0 else next(batches).to(dev)
    with prec.autocast():
        out = model.training_step(batch, gen) if ssl else model.training_step(batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
print(json.dumps({"before": before, "peak": measure(), "step_s": min(times[1:] or times)}))
"""
)

_CHILD_ENCODE = (
    _PEAK
    + """
import json, resource, sys
from typer.testing import CliRunner
from cryonoo.cli import app
reset_peak()
before, anon_before = peak(), _status("RssAnon")
sampler = AnonSampler()
run, stack, z, b, dev = sys.argv[1:6]
r = CliRunner().invoke(app, ["encode", run, stack, "-o", z, "-b", b, "--device", dev])
assert r.exit_code == 0, r.output
anon = sampler.stop()
print(json.dumps({"before": before, "peak": peak(), "anon_before": anon_before, "anon": anon}))
"""
)

_CHILD_LOADER = (
    _PEAK
    + """
import json, resource, sys, torch
from cryonoo.io.dataset import make_loader, open_dataset
dataset = open_dataset(sys.argv[1], require_poses=False, lazy=True, norm_std=1.0)
reset_peak()
before, anon_before = peak(), _status("RssAnon")
sampler = AnonSampler()
n = 0
for batch in make_loader(dataset, 64, generator=torch.Generator().manual_seed(0)):
    n += len(batch)
assert n == len(dataset)
anon = sampler.stop()
print(json.dumps({"before": before, "peak": peak(), "anon_before": anon_before, "anon": anon,
                  "images": n}))
"""
)


def child(code: str, *args: object, threads: int) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is a JSON object."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(lo: dict, hi: dict, b_lo: int, b_hi: int) -> dict:
    """Per-image bytes and the intercept from two peaks at batch sizes ``b_lo < b_hi``."""
    per_image = (hi["peak"] - lo["peak"]) / (b_hi - b_lo)
    return {
        "per_image_mb": per_image / 2**20,
        "fixed_mb": (lo["peak"] - per_image * b_lo) / 2**20,
        "peak_mb": {b_lo: lo["peak"] / 2**20, b_hi: hi["peak"] / 2**20},
    }


def tile_stack(src: Path, dst: Path, n: int) -> None:
    """Write ``n`` images to ``dst`` by repeating the images of ``src`` (memory-mapped)."""
    import mrcfile

    base = mrcfile.read(src)
    with mrcfile.new_mmap(dst, shape=(n, *base.shape[1:]), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        for start in range(0, n, len(base)):
            stop = min(n, start + len(base))
            mrc.data[start:stop] = base[: stop - start]


def main() -> None:
    from cryonoo.data.phantoms import PHANTOMS
    from cryonoo.data.simulate import SimulationConfig, simulate_phantom
    from cryonoo.io.dataset import open_dataset
    from cryonoo.io.dataset_dir import load_dataset_dir
    from cryonoo.train.config_file import add_set_argument, apply_overrides
    from cryonoo.train.recipes import get_recipe
    from cryonoo.train.trainer import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--dim", type=int, default=256, help="encoder and decoder width")
    p.add_argument("--batches", default="8,32", help="two training batch sizes")
    p.add_argument("--encode-batches", default="256,1024", help="two encode batch sizes")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated training precisions")
    p.add_argument("--stack-gb", type=float, default=2.0, help="size of the streamed stack")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per training case")
    p.add_argument("--recipes", default="cryodrgn,cryonoo", help="comma-separated recipes")
    add_set_argument(
        p, "a training setting for every case, e.g. optim.decoder_chunk=8 (repeatable)"
    )
    p.add_argument("--train-only", action="store_true", help="skip the encode and streaming passes")
    args = p.parse_args()
    b_lo, b_hi = sorted(int(b) for b in args.batches.split(","))
    e_lo, e_hi = sorted(int(b) for b in args.encode_batches.split(","))
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    data_dir = out / "data"
    if not (data_dir / "config.json").is_file():
        sim = SimulationConfig(box=args.box, n_images=320, snr=0.1, seed=0)
        simulate_phantom(data_dir, PHANTOMS.build("igg-1d", n_conformations=20), sim)
    results: dict = {"settings": vars(args) | {"outdir": str(out)}, "train": {}}

    for name in [x.strip() for x in args.recipes.split(",") if x.strip()]:
        for precision in [x.strip() for x in args.precision.split(",") if x.strip()]:
            config = get_recipe(name).replace(
                {"model.enc_dim": args.dim, "model.dec_dim": args.dim, "optim.precision": precision}
            )
            config = apply_overrides(config, args.overrides)
            peaks = [
                child(
                    _CHILD_TRAIN,
                    data_dir,
                    json.dumps(config.replace({"optim.batch_size": b}).to_dict()),
                    args.device,
                    args.threads,
                    args.steps,
                    threads=args.threads,
                )
                for b in (b_lo, b_hi)
            ]
            results["train"][f"{name}/{precision}"] = slope(*peaks, b_lo, b_hi) | {
                "step_s": {b_lo: peaks[0]["step_s"], b_hi: peaks[1]["step_s"]}
            }
    if args.train_only:
        finish(results, out, t_start)
        return

    # a trained run to encode with (one short epoch; memory does not depend on the weights)
    run_dir = out / "run"
    if not (run_dir / "config.json").is_file():
        config = get_recipe("cryodrgn").replace(
            {"model.enc_dim": args.dim, "model.dec_dim": args.dim, "optim.epochs": 1}
        )
        train(config, open_dataset(data_dir, ind="train"), run_dir, device=args.device)
    particles = load_dataset_dir(data_dir).particles
    n_big = int(args.stack_gb * 2**30 / (args.box**2 * 4))
    big = out / "big.mrcs"
    if not big.is_file() or big.stat().st_size < n_big * args.box**2 * 4:
        tile_stack(particles, big, n_big)
    stack_mb = big.stat().st_size / 2**20
    enc = [
        child(_CHILD_ENCODE, run_dir, big, out / "z.pkl", b, args.device, threads=args.threads)
        for b in (e_lo, e_hi)
    ]
    results["encode"] = slope(*enc, e_lo, e_hi)
    streamed = enc[1]
    loader = child(_CHILD_LOADER, big, threads=args.threads)
    results["stream"] = {
        "stack_mb": stack_mb,
        "images": n_big,
        "encode_peak_mb": streamed["peak"] / 2**20,
        "encode_growth_mb": (streamed["peak"] - streamed["before"]) / 2**20,
        "encode_anon_peak_mb": streamed["anon"] / 2**20,
        "encode_anon_growth_mb": (streamed["anon"] - streamed["anon_before"]) / 2**20,
        "loader_peak_mb": loader["peak"] / 2**20,
        "loader_growth_mb": (loader["peak"] - loader["before"]) / 2**20,
        "loader_anon_growth_mb": (loader["anon"] - loader["anon_before"]) / 2**20,
    }
    finish(results, out, t_start)


def finish(results: dict, out: Path, t_start: float) -> None:
    """Write ``memory.json`` and print its tables."""
    results["wall_s"] = time.perf_counter() - t_start
    (out / "memory.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))


def format_table(r: dict) -> str:
    """Markdown tables of ``memory.json``."""
    unit = "GPU memory" if r["settings"]["device"].startswith("cuda") else "peak RSS"
    sets = ", ".join(r["settings"].get("overrides", [])) or "recipe defaults"
    lines = [
        f"box {r['settings']['box']}, widths {r['settings']['dim']}; {unit}; {sets}",
        "",
        "| work | per image (MB) | fixed (MB) | peak (MB) per batch | step (s) per batch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, s in r["train"].items():
        peaks = ", ".join(f"{b}: {mb:,.0f}" for b, mb in s["peak_mb"].items())
        steps = ", ".join(f"{b}: {t:.2f}" for b, t in s["step_s"].items())
        lines.append(
            f"| training step, {key} | {s['per_image_mb']:.2f} | {s['fixed_mb']:.0f} "
            f"| {peaks} | {steps} |"
        )
    if "encode" not in r:
        return "\n".join(lines)
    e = r["encode"]
    lines.append(f"| `cryonoo encode` | {e['per_image_mb']:.3f} | {e['fixed_mb']:.0f} | | |")
    s = r["stream"]
    lines += [
        "",
        f"Streaming a {s['stack_mb']:,.0f} MB stack ({s['images']:,} images); RSS counts the page "
        "cache of the memory-mapped stack, which the kernel reclaims under pressure; anonymous "
        "memory (RssAnon) is the process's own:",
        "",
        "| pass | peak RSS (MB) | RSS growth (MB) | peak anonymous (MB) | anonymous growth (MB) |",
        "| --- | --- | --- | --- | --- |",
        f"| `cryonoo encode` | {s['encode_peak_mb']:.0f} | {s['encode_growth_mb']:.0f} "
        f"| {s['encode_anon_peak_mb']:.0f} | {s['encode_anon_growth_mb']:.0f} |",
        f"| lazy training loader | {s['loader_peak_mb']:.0f} | {s['loader_growth_mb']:.0f} "
        f"| – | {s['loader_anon_growth_mb']:.0f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
