"""Semi-amortized inference from the command line: `cryonoo encode --refine K`."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_z_pkl

runner = CliRunner()
TINY = ["--enc-dim", "8", "--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def vae_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("vae") / "run"
    result = invoke("train", data.root, "-o", run, "--recipe", "cryodrgn", "-n", 1, *TINY)
    assert result.exit_code == 0, result.output
    return run


def test_encode_refine_writes_refined_latents(vae_run, data, tmp_path):
    args = ["encode", vae_run, data.root, "--ind", "test"]
    assert invoke(*args, "-o", tmp_path / "mu.pkl").exit_code == 0
    mu = load_z_pkl(tmp_path / "mu.pkl")[0]
    result = invoke(*args, "-o", tmp_path / "z.pkl", "--refine", 3, "-b", 7)
    assert result.exit_code == 0, result.output
    assert "refine, 3 steps" in " ".join(result.output.split())
    z, logvar = load_z_pkl(tmp_path / "z.pkl")
    n_test = len(np.load(data.root / "split.npz")["test"])
    assert z.shape == mu.shape == (n_test, 2) and logvar is None and not np.allclose(z, mu)
    again = invoke(*args, "-o", tmp_path / "z2.pkl", "--refine", 3, "-b", 32)
    assert again.exit_code == 0, again.output  # batching does not change the per-image fits
    np.testing.assert_allclose(load_z_pkl(tmp_path / "z2.pkl")[0], z, rtol=1e-4, atol=1e-5)
    fast = invoke(*args, "-o", tmp_path / "z3.pkl", "--refine", 3, "--lr", 0.5)
    assert fast.exit_code == 0, fast.output  # --lr applies: larger steps, farther from mu
    z3 = load_z_pkl(tmp_path / "z3.pkl")[0]
    assert np.linalg.norm(z3 - mu, axis=1).mean() > np.linalg.norm(z - mu, axis=1).mean()
    low = invoke(*args, "-o", tmp_path / "z4.pkl", "--refine", 3, "--refine-band", 0.2)
    assert low.exit_code == 0, low.output
    assert "refine, 3 steps on |k| ≤ 0.2" in " ".join(low.output.split())
    z4 = load_z_pkl(tmp_path / "z4.pkl")[0]
    assert z4.shape == z.shape and not np.allclose(z4, z)  # another objective, other fits


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--refine", 0], "--refine K must be ≥ 1"),
        (["--refine", -2], "--refine K must be ≥ 1"),
        (["--refine", 2, "--steps", 3], "do not combine it with --steps"),
        (["--refine", 2, "--method", "autodecode"], "--method autodecode"),
        (["--lr", 0.1], "add --refine K"),
        (["--refine-band", 0.25], "--refine-band sets the band of --refine K"),
        (["--refine", 2, "--refine-band", 0.7], "--refine-band must be in (0, 0.5]"),
        (["--refine", 2, "--refine-band", 0], "--refine-band must be in (0, 0.5]"),
    ],
)
def test_encode_refine_errors(vae_run, data, tmp_path, extra, message):
    out = tmp_path / "z.pkl"
    bad = invoke("encode", vae_run, data.root, "-o", out, *extra)
    assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output
    assert not out.exists()


def test_encode_refine_needs_poses(vae_run, data, tmp_path):
    out = tmp_path / "z.pkl"
    stack = data.particles
    bad = invoke("encode", vae_run, stack, "-o", out, "--refine", 2)
    said = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "poses are required" in said and "--poses" in said
    assert not out.exists()
    ok = invoke("encode", vae_run, stack, "-o", out, "--refine", 2, "--poses", data.poses)
    assert ok.exit_code == 0, ok.output
    assert load_z_pkl(out)[0].shape == (96, 2)


def test_encode_precision_bf16_follows_fp32(vae_run, data, tmp_path):
    args = ["encode", vae_run, data.root, "--ind", "test", "--device", "cpu"]
    assert invoke(*args, "-o", tmp_path / "fp32.pkl", "--precision", "fp32").exit_code == 0
    result = invoke(*args, "-o", tmp_path / "bf16.pkl", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert "bf16" in result.output
    mu32, mu16 = load_z_pkl(tmp_path / "fp32.pkl")[0], load_z_pkl(tmp_path / "bf16.pkl")[0]
    assert not np.array_equal(mu32, mu16)  # the networks did run in bfloat16
    scale = np.abs(mu32).max()
    np.testing.assert_allclose(mu16, mu32, atol=0.05 * scale)  # bf16: 8 mantissa bits
    bad = invoke(*args, "-o", tmp_path / "fp16.pkl", "--precision", "fp16")
    assert bad.exit_code == 2 and "needs a CUDA device" in " ".join(bad.output.split())
    assert not (tmp_path / "fp16.pkl").exists()
