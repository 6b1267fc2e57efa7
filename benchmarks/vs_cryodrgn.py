"""cryoDRGN's ``train_vae`` and cryonoo's ``cryodrgn`` recipe side by side on one dataset.

Both train the same architecture (residual-MLP encoder, Fourier decoder with Gaussian features)
on the train split of one simulated dataset, with the same batch size, learning rate, epochs and
thread count, one after the other. Throughput is images per second of the training loop alone
(cryoDRGN: its per-epoch ``Finished in`` time in ``run.log``; cryonoo: ``stats.jsonl``), so the
end-of-epoch latent pass and process start-up are left out of both. Then both models are
evaluated by the same code: cryoDRGN's run is loaded with :func:`load_cryodrgn_run` and the
per-image FSC_AUC (:func:`cryonoo.eval.per_image.per_image_fsc`, CryoBench protocol) is computed
on the train and test splits. Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_cryodrgn.py -o /tmp/vs \\
        --cryodrgn /tmp/cdvenv/bin/cryodrgn --box 32 --n-images 2000 --epochs 3 --threads 1

``--set KEY=VALUE`` changes every cryonoo run; ``--variant "KEY=VALUE …"`` adds one more
cryonoo run per precision with those settings, so that a setting is measured against the same
cryoDRGN run and the same machine state (e.g. ``--variant optim.cpu_block_points=8192``).

``--cryodrgn`` is cryoDRGN's ``cryodrgn`` executable or the ``python`` of its environment
(default: ``cryodrgn`` on PATH, or this interpreter if it can import cryodrgn). Prints a Markdown
table and writes ``results.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc
from cryonoo.interop.cryodrgn_model import load_cryodrgn_run
from cryonoo.io.dataset import Preprocessing, open_dataset
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.train.config_file import add_set_argument, apply_overrides
from cryonoo.train.recipes import get_recipe
from cryonoo.train.run import load_run
from cryonoo.train.trainer import train

_MAIN = "import sys; from cryodrgn.command_line import main_commands; sys.exit(main_commands())"
_EPOCH = re.compile(
    r"Epoch: (\d+) Average gen loss = ([-\d.e+]+), KLD = ([-\d.e+]+), "
    r"total loss = ([-\d.e+]+); Finished in (\d+):(\d+):([\d.]+)"
)


def cryodrgn_command(spec: str | None) -> list[str]:
    """The argv prefix that runs cryoDRGN's command line."""
    if spec:
        return [spec, "-c", _MAIN] if "python" in Path(spec).name else [spec]
    if importlib.util.find_spec("cryodrgn") is not None:
        return [sys.executable, "-c", _MAIN]
    exe = shutil.which("cryodrgn")
    if exe is None:
        raise SystemExit(
            "cryoDRGN not found: install it in its own environment (python3 -m venv cdvenv && "
            "cdvenv/bin/pip install 'cryodrgn==4.3.1') and pass --cryodrgn cdvenv/bin/cryodrgn"
        )
    return [exe]


def cryodrgn_version(cmd: list[str]) -> str:
    done = subprocess.run([*cmd, "--version"], capture_output=True, text=True)
    text = (done.stdout or done.stderr).strip().splitlines()[-1] if done.returncode == 0 else "?"
    return text.removeprefix("cryoDRGN").strip()


def parse_cryodrgn_log(path: Path) -> list[dict]:
    """Per-epoch records ``{epoch, recon, kld, loss, time_s}`` from cryoDRGN's ``run.log``."""
    out = []
    for m in _EPOCH.finditer(path.read_text()):
        h, mi, s = int(m.group(5)), int(m.group(6)), float(m.group(7))
        out.append(
            {
                "epoch": int(m.group(1)),
                "recon": float(m.group(2)),
                "kld": float(m.group(3)),
                "loss": float(m.group(4)),
                "time_s": 3600 * h + 60 * mi + s,
            }
        )
    return out


def fsc_summary(model, norm_std: float, prep: Preprocessing, data, seed: int) -> dict:
    """Per-image FSC_AUC summaries on the train and test splits."""
    gt = load_gt_volumes(data.gt_volumes)
    out = {}
    for split in ("train", "test"):
        ds = open_dataset(data.root, ind=split, preprocessing=prep, norm_std=norm_std)
        res = per_image_fsc(model, ds, data.labels, gt, norm_std=norm_std, seed=seed)
        out[split] = res.summary()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--cryodrgn", default=None, help="cryodrgn executable or its python")
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--n-conformations", type=int, default=20)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--zdim", type=int, default=8)
    p.add_argument("--dim", type=int, default=256, help="encoder and decoder width")
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder hidden layers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated cryonoo precisions to train (fp32, bf16; cryoDRGN runs fp32)",
    )
    add_set_argument(p, "a training setting for every cryonoo run (repeatable)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        dest="variants",
        metavar="KEY=VALUE[ KEY=VALUE…]",
        help="also train every precision with these settings, in the same run (repeatable)",
    )
    args = p.parse_args()
    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    cmd = cryodrgn_command(args.cryodrgn)
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    data_dir = out / "data"
    if not (data_dir / "config.json").is_file():
        phantom = PHANTOMS.build("igg-1d", n_conformations=args.n_conformations)
        sim = SimulationConfig(box=args.box, n_images=args.n_images, snr=args.snr, seed=args.seed)
        simulate_phantom(data_dir, phantom, sim)
    data = load_dataset_dir(data_dir)
    train_ind = out / "train_ind.pkl"
    with open(train_ind, "wb") as fh:
        pickle.dump(np.asarray(data.split["train"], dtype=np.int64), fh)
    n_train = len(data.split["train"])

    # cryoDRGN
    cd_dir = out / "cryodrgn"
    shutil.rmtree(cd_dir, ignore_errors=True)
    argv = [
        *cmd, "train_vae", data.particles, "--poses", data.poses, "--ctf", data.ctf,
        "--ind", train_ind, "--zdim", args.zdim, "--enc-dim", args.dim, "--dec-dim", args.dim,
        "--enc-layers", args.layers, "--dec-layers", args.layers, "-n", args.epochs,
        "-b", args.batch_size, "--lr", args.lr, "--seed", args.seed, "-o", cd_dir,
        "--no-analysis",
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    cd_wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"cryoDRGN train_vae failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    cd_epochs = parse_cryodrgn_log(cd_dir / "run.log")

    # cryonoo, same settings, once per precision
    base = get_recipe("cryodrgn").replace(
        {
            "model.zdim": args.zdim,
            "model.enc_dim": args.dim,
            "model.dec_dim": args.dim,
            "model.enc_layers": args.layers,
            "model.dec_layers": args.layers,
            "optim.batch_size": args.batch_size,
            "optim.lr": args.lr,
            "optim.epochs": args.epochs,
            "optim.seed": args.seed,
        }
    )
    base = apply_overrides(base, args.overrides)
    configs = {p: base.replace({"optim.precision": p}) for p in precisions}
    for variant in args.variants:
        configs |= {
            f"{p}, {variant}": apply_overrides(configs[p], variant.split()) for p in precisions
        }
    ours: dict[str, dict] = {}
    dataset = open_dataset(data_dir, ind="train")
    for label, config in configs.items():
        ours_dir = out / run_dir_name(label)
        shutil.rmtree(ours_dir, ignore_errors=True)
        t0 = time.perf_counter()
        result = train(config, dataset, ours_dir, device="cpu")
        ours[label] = {"stats": result.stats, "wall_s": time.perf_counter() - t0}

    # the same evaluation for all
    cd_run = load_cryodrgn_run(cd_dir)
    cd_prep = Preprocessing(
        invert=cd_run.invert, window=cd_run.window, window_inner=cd_run.window_r
    )
    fsc = {"cryodrgn": fsc_summary(cd_run.model, cd_run.norm_std, cd_prep, data, args.seed)}
    for label in configs:
        run = load_run(out / run_dir_name(label))
        fsc[f"cryonoo_{label}"] = fsc_summary(
            run.model, run.norm_std, base.preprocessing(), data, args.seed
        )

    def rate(epochs: list[dict]) -> float:
        return n_train * len(epochs) / sum(e["time_s"] for e in epochs)

    results = {
        "settings": vars(args) | {"outdir": str(out), "cryodrgn": " ".join(cmd)},
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s), torch {torch.__version__}",
        "cryodrgn_version": cryodrgn_version(cmd),
        "n_train": n_train,
        "n_test": len(data.split["test"]),
        "cryodrgn": {"epochs": cd_epochs, "images_per_s": rate(cd_epochs), "wall_s": cd_wall},
        "cryonoo": {
            label: {
                "epochs": [
                    {k: e[k] for k in ("epoch", "recon", "kld", "loss", "time_s")}
                    for e in run["stats"]
                ],
                "images_per_s": rate(run["stats"]),
                "wall_s": run["wall_s"],
                "config": configs[label].to_dict(),
            }
            for label, run in ours.items()
        },
        "per_image_fsc": fsc,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(format_table(results))


def run_dir_name(label: str) -> str:
    """``cryonoo_<label>`` with every run of characters other than letters, digits, ``.=-``
    replaced by one ``_`` (``"fp32, optim.cpu_block_points=8192"`` → a plain directory name)."""
    return "cryonoo_" + re.sub(r"[^\w.=-]+", "_", label)


def format_table(r: dict) -> str:
    """A Markdown table of ``results.json``: cryoDRGN, then one column per cryonoo run
    (precision, and its ``--variant`` settings where given)."""
    cd, ours = r["cryodrgn"], r["cryonoo"]
    fsc = r["per_image_fsc"]
    names = list(ours)

    def auc(name: str, split: str) -> str:
        s = fsc[name][split]
        return f"{s['mean']:.4f} ± {s['std']:.4f}"

    rows = [
        ["training images/s", f"{cd['images_per_s']:.0f}"]
        + [f"{ours[p]['images_per_s']:.0f} ({ours[p]['images_per_s'] / cd['images_per_s']:.2f}×)"
           for p in names],
        ["last epoch: total loss", f"{cd['epochs'][-1]['loss']:.5f}"]
        + [f"{ours[p]['epochs'][-1]['loss']:.5f}" for p in names],
        ["wall time (s): train_vae process / train() call", f"{cd['wall_s']:.0f}"]
        + [f"{ours[p]['wall_s']:.0f}" for p in names],
        ["per-image FSC_AUC, train", auc("cryodrgn", "train")]
        + [auc(f"cryonoo_{p}", "train") for p in names],
        ["per-image FSC_AUC, test", auc("cryodrgn", "test")]
        + [auc(f"cryonoo_{p}", "test") for p in names],
    ]  # fmt: skip
    head = [f"cryoDRGN {r['cryodrgn_version']} `train_vae`"]
    head += [f"cryonoo `cryodrgn` recipe, {p}" for p in names]
    lines = ["| | " + " | ".join(head) + " |", "| --- " * (len(head) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
