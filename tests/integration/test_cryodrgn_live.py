"""Live comparison with an installed cryoDRGN: train with it, then load its run into cryonoo.

Skipped unless cryoDRGN can be run: ``import cryodrgn`` works in this interpreter, or
``CRYONOO_CRYODRGN`` names its ``cryodrgn`` executable or the ``python`` of its environment
(cryoDRGN is best kept in a virtual environment of its own).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.interop.cryodrgn_model import load_cryodrgn_run
from cryonoo.io.dataset import Preprocessing, open_dataset

_MAIN = "import sys; from cryodrgn.command_line import main_commands; sys.exit(main_commands())"


def _cryodrgn_command() -> list[str] | None:
    exe = os.environ.get("CRYONOO_CRYODRGN")
    if exe:
        return [exe, "-c", _MAIN] if "python" in Path(exe).name else [exe]
    if importlib.util.find_spec("cryodrgn") is not None:
        return [sys.executable, "-c", _MAIN]
    return None


CRYODRGN = _cryodrgn_command()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CRYODRGN is None,
        reason="cryoDRGN is not installed (set CRYONOO_CRYODRGN to its cryodrgn executable)",
    ),
]


def _run(*args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [*CRYODRGN, *(str(a) for a in args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = SimulationConfig(box=16, n_images=64, snr=1.0, seed=5, shift_extent_px=2.0)
    return simulate_phantom(
        tmp_path_factory.mktemp("live"), PHANTOMS.build("igg-1d", n_conformations=4), cfg
    )


@pytest.mark.parametrize(
    "arch",
    [
        [],  # cryoDRGN's defaults: Fourier decoder, Gaussian features, ReLU
        ["--pe-type", "geom_lowf", "--activation", "leaky_relu", "--pe-dim", "6"],
        ["--pe-type", "linear_lowf", "--enc-mask", "5", "--feat-sigma", "0.3"],
    ],
    ids=["default", "geom_lowf-leaky_relu", "linear_lowf-encmask"],
)
def test_latents_and_volume_equal_cryodrgn(data, tmp_path, arch) -> None:
    files = ["--poses", data.poses, "--ctf", data.ctf]
    out = tmp_path / "cd"
    _run(
        "train_vae", data.particles, *files, "--zdim", 2, "--enc-dim", 32, "--enc-layers", 1,
        "--dec-dim", 32, "--dec-layers", 1, "-n", 1, "-b", 16, "--seed", 3, "-o", out,
        "--no-analysis", *arch,
    )  # fmt: skip
    _run(
        "eval_images", data.particles, out / "weights.pkl", "-c", out / "config.yaml",
        "-o", tmp_path / "losses.pkl", "--out-z", tmp_path / "z.pkl", *files,
    )  # fmt: skip
    z0 = tmp_path / "z0.txt"
    with open(tmp_path / "z.pkl", "rb") as fh:
        ref_mu = pickle.load(fh)
    np.savetxt(z0, ref_mu[[0]], fmt="%.9g")
    vol_dir = tmp_path / "vol"
    _run("eval_vol", out / "weights.pkl", "-c", out / "config.yaml", "--zfile", z0, "-o", vol_dir)

    run = load_cryodrgn_run(out)
    prep = Preprocessing(invert=run.invert, window=run.window, window_inner=run.window_r)
    ds = open_dataset(
        data.particles, data.poses, data.ctf, norm_std=run.norm_std, preprocessing=prep
    )
    batch = ds[np.arange(len(ds))]
    with torch.no_grad():
        mu = run.model.encode(batch.images, batch.ctf, batch.trans).numpy()
    assert np.abs(mu - ref_mu).max() / np.abs(ref_mu).max() < 1e-5
    z = torch.from_numpy(np.loadtxt(z0, dtype=np.float32))
    vol = run.model.volume(z, norm_std=run.norm_std)
    with mrcfile.open(vol_dir / "vol_001.mrc") as m:  # eval_vol numbers from 1
        ref_vol = m.data.copy()
    assert np.abs(vol.numpy() - ref_vol).max() / np.abs(ref_vol).max() < 1e-4


def test_exported_run_works_in_cryodrgn(data, tmp_path) -> None:
    """cryonoo run → ``cryonoo export-cryodrgn`` → cryoDRGN's eval_vol and analyze."""
    from typer.testing import CliRunner

    from cryonoo.cli import app
    from cryonoo.io.cryodrgn import load_z_pkl
    from cryonoo.train.recipes import get_recipe
    from cryonoo.train.run import load_run
    from cryonoo.train.trainer import train

    small = {"zdim": 2, "enc_dim": 32, "dec_dim": 32, "enc_layers": 1, "dec_layers": 1}
    changes = {
        "optim.epochs": 1,
        "optim.batch_size": 16,
        **{f"model.{k}": v for k, v in small.items()},
    }
    config = get_recipe("cryodrgn").replace(changes)
    train(config, open_dataset(data.root, ind="train"), tmp_path / "ours", device="cpu")
    out = tmp_path / "cd"
    result = CliRunner().invoke(app, ["export-cryodrgn", str(tmp_path / "ours"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    mu, _ = load_z_pkl(out / "z.1.pkl")
    z0 = tmp_path / "z0.txt"
    np.savetxt(z0, mu[[0]], fmt="%.9g")
    _run("eval_vol", out / "weights.1.pkl", "-c", out / "config.yaml", "--zfile", z0, "-o", out)
    ours = load_run(tmp_path / "ours")
    vol = ours.model.volume(torch.from_numpy(mu[0]), norm_std=ours.norm_std).numpy()
    with mrcfile.open(out / "vol_001.mrc") as m:
        ref = m.data.copy()
    assert np.abs(vol - ref).max() / np.abs(ref).max() < 1e-4
    _run("analyze", out, 1, "--ksample", 2, "--pc", 1, "--n-per-pc", 2, "--skip-umap")
    assert len(list((out / "analyze.1" / "kmeans2").glob("vol_*.mrc"))) == 2
