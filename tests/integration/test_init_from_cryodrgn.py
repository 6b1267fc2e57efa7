"""``cryonoo train --init-from-cryodrgn``: a run starts from a cryoDRGN 4.3.1 model's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.dataset import open_dataset
from cryonoo.train.config import dotted
from cryonoo.train.cryodrgn_init import start_from_cryodrgn
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train

FIXTURE = Path(__file__).parents[1] / "data" / "cryodrgn_tiny"
FILES = [
    FIXTURE / "particles.mrcs",
    "--poses",
    FIXTURE / "poses.pkl",
    "--ctf",
    FIXTURE / "ctf.pkl",
]
ARCH = {"zdim": 2, "enc_layers": 2, "enc_dim": 64, "dec_layers": 2, "dec_dim": 64}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _stats(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_cli_starts_from_the_checkpoint(tmp_path) -> None:
    # a learning rate of 1e-9 keeps the weights where they started: the latents after one
    # epoch are cryoDRGN's own (eval_images) latents of the same particles
    out = tmp_path / "run"
    result = invoke(
        "train", *FILES, "-o", out, "--recipe", "cryodrgn", "--init-from-cryodrgn", FIXTURE,
        "-n", 1, "-b", 8, "--lr", 1e-9, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg["model"][k] for k in ARCH} == ARCH and cfg["model"]["D"] == 25
    assert cfg["data"]["norm_std"] == pytest.approx(16.30588722229004)
    assert cfg["data"]["init_from_cryodrgn"].endswith("weights.pkl")
    mu, _ = load_z_pkl(out / "z.1.pkl")
    ref, _ = load_z_pkl(FIXTURE / "z.pkl")
    assert np.abs(mu - ref).max() / np.abs(ref).max() < 1e-5


def test_ssl_starts_at_epoch_zero_unless_warmup_is_given(tmp_path) -> None:
    common = ("--init-from-cryodrgn", FIXTURE, "-n", 1, "-b", 12, "--device", "cpu")
    result = invoke("train", *FILES, "-o", tmp_path / "a", *common)
    assert result.exit_code == 0, result.output
    assert _stats(tmp_path / "a")[0]["ssl_active"] is True
    result = invoke("train", *FILES, "-o", tmp_path / "b", "--warmup", 1, *common)
    assert result.exit_code == 0, result.output
    assert _stats(tmp_path / "b")[0]["ssl_active"] is False


def test_cli_names_the_flags_that_differ(tmp_path) -> None:
    result = invoke(
        "train", *FILES, "-o", tmp_path / "run", "--init-from-cryodrgn", FIXTURE,
        "--enc-dim", 32, "--zdim", 2, "--dec-layers", 3, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "--enc-dim 32 (checkpoint: 64, model_args.qdim)" in text
    assert "--dec-layers 3 (checkpoint: 2, model_args.players)" in text
    assert "--zdim" not in text
    assert not (tmp_path / "run" / "weights.1.pt").exists()


def test_train_rejects_another_architecture(tmp_path) -> None:
    ds = open_dataset(FIXTURE / "particles.mrcs", FIXTURE / "poses.pkl", FIXTURE / "ctf.pkl")
    arch = {dotted(k): v for k, v in ARCH.items()}
    changes = {**arch, "model.enc_dim": 32, "model.pe_dim": 8, "optim.epochs": 1}
    config = get_recipe("cryodrgn").replace(changes)
    with pytest.raises(ValueError) as info:
        train(config, ds, tmp_path / "run", device="cpu", init_from=FIXTURE)
    msg = str(info.value)
    assert "enc_dim: 32 here, 64 in model_args.qdim" in msg
    assert "pe_dim: 8 here, 12 in model_args.pe_dim" in msg


def test_cli_needs_weights(tmp_path) -> None:
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "config.yaml").write_text((FIXTURE / "config.yaml").read_text())
    result = invoke(
        "train", *FILES, "-o", tmp_path / "run", "--init-from-cryodrgn", tmp_path / "cd"
    )
    assert result.exit_code != 0
    assert "no weights.pkl" in " ".join(result.output.split())


def test_export_cryodrgn_writes_a_loadable_run(tmp_path) -> None:
    from cryonoo.interop.cryodrgn_model import load_cryodrgn_run

    out = tmp_path / "run"
    args = ("--recipe", "cryodrgn", "--init-from-cryodrgn", FIXTURE, "-n", 1, "-b", 8)
    assert invoke("train", *FILES, "-o", out, *args, "--device", "cpu").exit_code == 0
    result = invoke("export-cryodrgn", out, "-o", tmp_path / "cd")
    assert result.exit_code == 0, result.output
    back = load_cryodrgn_run(tmp_path / "cd")
    assert back.epoch == 1 and back.norm_std == pytest.approx(16.30588722229004)
    assert {k: back.model.config()[k] for k in ARCH} == ARCH
    assert back.config["dataset_args"]["ctf"] == str((FIXTURE / "ctf.pkl").resolve())
    assert np.array_equal(
        load_z_pkl(tmp_path / "cd" / "z.1.pkl")[0], load_z_pkl(out / "z.1.pkl")[0]
    )
    assert "Epoch: 1 Average gen loss" in (tmp_path / "cd" / "run.log").read_text()


def test_start_from_cryodrgn_adopts_the_run() -> None:
    recipe = get_recipe("cryonoo").replace(
        {"data.invert": False, "data.window": False, "data.window_r": 0.5}
    )
    start = start_from_cryodrgn(recipe, FIXTURE)
    config = start.config
    assert {k: config.to_dict()[k] for k in ARCH} == ARCH
    assert (config.data.invert, config.data.window, config.data.window_r) == (True, True, 0.85)
    assert config.ssl.warmup == 0  # the cryoDRGN run was the warm-up
    assert start.norm_std == pytest.approx(16.30588722229004)
    assert start.weights == FIXTURE / "weights.pkl" and start.run_dir == FIXTURE
    given = start_from_cryodrgn(recipe.replace({"ssl.warmup": 3}), FIXTURE, {"warmup_epochs": 3})
    assert given.config.ssl.warmup == 3
    with pytest.raises(ValueError, match=r"--enc-dim 32 \(checkpoint: 64, model_args.qdim\)"):
        start_from_cryodrgn(recipe, FIXTURE, {"enc_dim": 32, "zdim": 2})


def test_python_start_from_cryodrgn_equals_the_cli(tmp_path) -> None:
    # the library's path (start_from_cryodrgn, open the particles as it says, train) is the CLI's
    cli = tmp_path / "cli"
    result = invoke(
        "train", *FILES, "-o", cli, "--init-from-cryodrgn", FIXTURE, "-n", 1, "-b", 12,
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    start = start_from_cryodrgn(
        get_recipe("cryonoo").replace({"optim.epochs": 1, "optim.batch_size": 12}), FIXTURE
    )
    ds = open_dataset(
        FIXTURE / "particles.mrcs",
        FIXTURE / "poses.pkl",
        FIXTURE / "ctf.pkl",
        preprocessing=start.config.preprocessing(),
        norm_std=start.norm_std,
    )
    out = train(start.config, ds, tmp_path / "py", device="cpu", init_from=start.run_dir)
    assert out.stats[0]["ssl_active"] is True
    cfg = json.loads((tmp_path / "py" / "config.json").read_text())
    assert cfg["data"]["init_from_cryodrgn"] == str(start.weights)
    assert cfg["train"] == json.loads((cli / "config.json").read_text())["train"]
    np.testing.assert_array_equal(
        load_z_pkl(tmp_path / "py" / "z.1.pkl")[0], load_z_pkl(cli / "z.1.pkl")[0]
    )
