"""End-to-end training on a tiny simulated dataset: outputs, resume, encode, volumes, errors."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.io.cryodrgn import load_z_pkl, save_z_pkl
from cryonoo.io.dataset import open_dataset
from cryonoo.train.recipes import RECIPES, TrainConfig, get_recipe
from cryonoo.train.run import load_run
from cryonoo.train.trainer import train

runner = CliRunner()
SMALL = {
    "model.enc_dim": 32,
    "model.dec_dim": 32,
    "model.enc_layers": 2,
    "model.dec_layers": 2,
    "model.zdim": 2,
    "optim.batch_size": 16,
    "ssl.head": "32-32",
    "ssl.warmup": 1,
}


def _config(name: str = "cryonoo", changes: dict | None = None) -> TrainConfig:
    """Recipe ``name`` at the tests' small scale, with ``changes`` (``section.key`` → value)."""
    return get_recipe(name).replace({**SMALL, **(changes or {})})


def test_training_writes_outputs_and_loss_decreases(data, tmp_path):
    dataset = open_dataset(data.root, ind="train", lazy=False)
    result = train(
        _config(changes={"optim.epochs": 4, "optim.lr": 1e-3}), dataset, tmp_path / "run"
    )
    run = tmp_path / "run"
    for epoch in range(1, 5):
        assert (run / f"weights.{epoch}.pt").is_file()
        mu, logvar = load_z_pkl(run / f"z.{epoch}.pkl")
        assert mu.shape == (len(dataset), 2) and logvar.shape == mu.shape
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["name"] == "cryonoo" and cfg["data"]["D"] == 17
    assert cfg["data"]["noise_sigma"] > 0
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2, 3, 4]
    assert stats[-1]["recon"] < stats[0]["recon"]
    # self-distillation starts after the warm-up epoch and only then
    assert [s["ssl_active"] for s in stats] == [False, True, True, True]
    assert "ssl/loss" not in stats[0] and "ssl/loss" in stats[1]
    assert result.last_epoch == 4


def test_resume_equals_uninterrupted_run(data, tmp_path):
    """Interrupt after 2 epochs, resume to 3: bit-identical to training 3 epochs at once (CPU)."""
    dataset = open_dataset(data.root, ind="train", lazy=False)
    train(_config(changes={"optim.epochs": 3}), dataset, tmp_path / "straight")
    train(_config(changes={"optim.epochs": 2}), dataset, tmp_path / "resumed")
    train(_config(changes={"optim.epochs": 3}), dataset, tmp_path / "resumed", resume=True)
    a, _ = load_z_pkl(tmp_path / "straight" / "z.3.pkl")
    b, _ = load_z_pkl(tmp_path / "resumed" / "z.3.pkl")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(changes={"optim.epochs": 3}), dataset, tmp_path / "resumed")
    with pytest.raises(ValueError, match=r"enc_dim: 32 → 64"):
        train(
            _config(changes={"optim.epochs": 4, "model.enc_dim": 64}),
            dataset,
            tmp_path / "resumed",
            resume=True,
        )


def test_lazy_training_with_read_ahead_equals_in_memory_training(data, tmp_path):
    """A lazy dataset is read on a thread ahead of the step (cryonoo.io.prefetch); the run is
    the in-memory run's, self-distillation included."""
    from cryonoo.train.loop import _read_ahead

    config = _config(changes={"optim.epochs": 2})
    lazy = open_dataset(data.root, ind="train", lazy=True)
    eager = open_dataset(data.root, ind="train", lazy=False)
    assert _read_ahead(lazy, config) == 2 and _read_ahead(eager, config) == 0
    assert _read_ahead(lazy, config.replace({"data.num_workers": 1})) == 0
    train(config, lazy, tmp_path / "lazy")
    train(config, eager, tmp_path / "eager")
    a, _ = load_z_pkl(tmp_path / "lazy" / "z.2.pkl")
    b, _ = load_z_pkl(tmp_path / "eager" / "z.2.pkl")
    np.testing.assert_array_equal(a, b)


def test_seeds_change_results(data, tmp_path):
    dataset = open_dataset(data.root, ind="train", lazy=False)
    train(
        _config("cryodrgn", changes={"optim.epochs": 1, "optim.seed": 1}), dataset, tmp_path / "s1"
    )
    train(
        _config("cryodrgn", changes={"optim.epochs": 1, "optim.seed": 2}), dataset, tmp_path / "s2"
    )
    a, _ = load_z_pkl(tmp_path / "s1" / "z.1.pkl")
    b, _ = load_z_pkl(tmp_path / "s2" / "z.1.pkl")
    assert not np.allclose(a, b)


def test_cli_train_encode_volumes(data, tmp_path):
    run = tmp_path / "cli"
    args = [
        "train",
        str(data.root),
        "-o",
        str(run),
        "--recipe",
        "cryodrgn",
        "-n",
        "2",
        "--enc-dim",
        "32",
        "--dec-dim",
        "32",
        "--zdim",
        "2",
        "-b",
        "16",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # encode the training images again: the training latents come back
    z_out = tmp_path / "z.pkl"
    result = runner.invoke(
        app, ["encode", str(run), str(data.root), "-o", str(z_out), "--ind", "train"]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(load_z_pkl(z_out)[0], load_z_pkl(run / "z.2.pkl")[0], atol=1e-5)
    assert "no shifts known" not in result.output  # the dataset directory carries its poses
    # a bare stack without --poses: encoded as if centred, and the user is told
    bare = [str(data.root / "particles.mrcs"), "--ctf", str(data.root / "ctf.pkl")]
    result = runner.invoke(app, ["encode", str(run), *bare, "-o", str(tmp_path / "zb.pkl")])
    assert result.exit_code == 0, result.output
    assert "no shifts known" in result.output
    # maps for two latents, voxel size from the data
    result = runner.invoke(app, ["volumes", str(run), "-o", str(tmp_path / "v"), "--z", "0 0 1 1"])
    assert result.exit_code == 0, result.output
    with mrcfile.open(tmp_path / "v" / "vol_001.mrc") as mrc:
        assert mrc.data.shape == (16, 16, 16)
        assert mrc.voxel_size.x == pytest.approx(data.config["apix"], rel=1e-4)
    # a zfile of the wrong width is refused
    save_z_pkl(tmp_path / "wide.pkl", np.zeros((3, 5), np.float32))
    bad = runner.invoke(
        app, ["volumes", str(run), "-o", str(tmp_path / "w"), "--zfile", str(tmp_path / "wide.pkl")]
    )
    assert bad.exit_code == 2 and "width 5" in bad.output
    # a directory without checkpoints
    bad = runner.invoke(app, ["encode", str(tmp_path), str(data.root), "-o", str(z_out)])
    assert bad.exit_code == 2 and "config.json" in bad.output


def test_encode_refuses_other_box(data, tmp_path):
    run = tmp_path / "r"
    dataset = open_dataset(data.root, ind="train", lazy=False)
    train(_config("cryodrgn", changes={"optim.epochs": 1}), dataset, run)
    other = simulate_phantom(
        tmp_path / "other",
        PHANTOMS.build("igg-1d", n_conformations=2),
        SimulationConfig(box=8, n_images=8, oversample=1),
    )
    bad = runner.invoke(app, ["encode", str(run), str(other.root), "-o", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "cryonoo downsample -D 16" in bad.output


def test_recipes_cover_the_paper_arms():
    expected = {
        "cryonoo",
        "cryodrgn",
        "single-noise",
        "no-warmup",
        "warmup-5",
        "warmup-40",
        "lambda-1",
        "lambda-0.1",
        "expander-32",
        "expander-128",
        "expander-2048",
        "expander-4096",
        "no-expander",
        "invariance-only",
        "simsiam",
        "noise-aug",
        "crop-flip-rotate",
        "decoder-freeze",
        "noise-x2",
        "noise-half",
    }
    assert expected <= set(RECIPES)
    base = RECIPES["cryonoo"]
    ssl = base.ssl
    assert (ssl.objective, ssl.weight, ssl.warmup, ssl.noise_factors, ssl.head) == (
        "vicreg",
        0.3,
        10,
        (0.5, 1.0, 1.5),
        "1024-1024-1024",
    )
    cryodrgn = RECIPES["cryodrgn"]
    assert cryodrgn.ssl.objective is None and not cryodrgn.optim.lr_plateau
    with pytest.raises(KeyError, match="choose from"):
        get_recipe("nope")
    assert TrainConfig.from_dict(base.to_dict()) == base


def test_configs_of_older_runs_still_load():
    """``config.json`` files of older runs have an ``extra`` field (never read): still loads."""
    base = get_recipe("cryonoo")
    assert TrainConfig.from_dict({**base.to_dict(), "extra": {"note": 1}}) == base
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({**base.to_dict(), "extras": {}})


def test_load_run_rebuilds_model(data, tmp_path):
    run = tmp_path / "lr"
    dataset = open_dataset(data.root, ind="train", lazy=False)
    train(_config("cryodrgn", changes={"optim.epochs": 1}), dataset, run)
    loaded = load_run(run)
    mu, _ = load_z_pkl(run / "z.1.pkl")
    batch = dataset[np.arange(4)]
    with torch.no_grad():
        z = loaded.model.encode(batch.images, batch.ctf, batch.trans)
    np.testing.assert_allclose(z.numpy(), mu[:4], atol=1e-5)
    with pytest.raises(ValueError, match="available"):
        load_run(run, epoch=7)


@pytest.mark.filterwarnings("ignore:Data array contains NaN values:RuntimeWarning")
def test_bad_particles_are_named_and_can_be_dropped(data, tmp_path):
    """A NaN image stops training with its index; --drop-bad leaves it (and a blank one) out."""
    from cryonoo.io.mrc import ParticleFileError, write_mrc

    images = mrcfile.read(data.particles).copy()
    images[5, 3, 3] = np.nan
    images[9] = 0.0
    stack = tmp_path / "bad.mrcs"
    write_mrc(stack, images, voxel_size=data.config["apix"])
    dataset = open_dataset(stack, data.poses, data.ctf, lazy=True, norm_std=1.0)
    with pytest.raises(ParticleFileError, match=r"particles \[5\] contain NaN/Inf.*--drop-bad"):
        dataset[np.arange(8)]
    with pytest.raises(ParticleFileError, match=r"\[5\]"):
        open_dataset(stack, data.poses, data.ctf, lazy=False, norm_std=1.0)
    args = [
        "train",
        str(stack),
        "--poses",
        str(data.poses),
        "--ctf",
        str(data.ctf),
        "-o",
        str(tmp_path / "run"),
        "--recipe",
        "cryodrgn",
        "-n",
        "1",
        "--enc-dim",
        "16",
        "--dec-dim",
        "16",
        "--zdim",
        "2",
        "--drop-bad",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.loadtxt(tmp_path / "run" / "dropped_particles.txt", dtype=int).tolist() == [5, 9]
    assert load_z_pkl(tmp_path / "run" / "z.1.pkl")[0].shape == (94, 2)


def test_bf16_training_follows_fp32(data, tmp_path):
    """bfloat16 autocast changes rounding only: the same run's losses agree to ~1 %."""
    dataset = open_dataset(data.root, ind="train", lazy=False)
    runs = {
        p: train(
            _config(changes={"optim.epochs": 2, "optim.lr": 1e-3, "optim.precision": p}),
            dataset,
            tmp_path / p,
        ).stats
        for p in ("fp32", "bf16")
    }
    for a, b in zip(runs["fp32"], runs["bf16"], strict=True):
        assert b["recon"] == pytest.approx(a["recon"], rel=0.02)
    a, b = runs["fp32"][-1], runs["bf16"][-1]  # after the warm-up epoch: the SSL term too
    assert b["ssl/loss"] == pytest.approx(a["ssl/loss"], rel=0.05)
    assert b["recon"] != a["recon"]  # bf16 did run: its rounding differs
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["train"]["precision"] == "bf16"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_takes_a_step(name):
    """Each recipe's model builds from its config and takes one training step (SSL term on)."""
    import torch

    from cryonoo.physics.rotations import random_rotations
    from cryonoo.train.build import build_model
    from cryonoo.types import Batch

    config = get_recipe(name).replace(SMALL)
    model = build_model(config, 17, noise_sigma=0.5, n_images=8)
    if hasattr(model, "set_epoch"):
        model.set_epoch(config.ssl.warmup)  # past the warm-up: the SSL term is on
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        images=torch.randn(8, 17, 17, generator=g),
        rot=random_rotations(8, g),
        ctf=torch.tensor([16.0, 15000, 14500, 20.0, 300, 2.7, 0.1, 0.0]).repeat(8, 1),
        index=torch.arange(8),
    )
    step = (
        model.training_step(batch, g) if hasattr(model, "set_epoch") else model.training_step(batch)
    )
    assert torch.isfinite(step.loss)
    step.loss.backward()


def test_encoder_weight_decay_decays_the_encoder_alone():
    """With zero gradients an AdamW step is pure decay: encoder × (1 − lr·wd), the rest kept."""
    import torch

    from cryonoo.train.build import base_model, build_model, build_optimizer

    config = get_recipe("sleep-4v-pv-ewd1").replace(SMALL)
    model = build_model(config, 17, noise_sigma=0.5, n_images=8)
    optimizer = build_optimizer(config, model, base_model(model))
    before = [p.detach().clone() for p in model.parameters()]
    encoder = {id(p) for p in base_model(model).encoder.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    factor = 1 - config.optim.lr * config.optim.encoder_weight_decay
    for old, p in zip(before, model.parameters(), strict=True):
        expected = old * factor if id(p) in encoder else old
        torch.testing.assert_close(p.detach(), expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(before)
    with pytest.raises(ValueError, match="encoder_weight_decay"):
        config.replace({"optim.weight_decay": 1e-4})


@pytest.mark.parametrize("recipe", ["cryodrgn", "sleep-4v-pv-ewd1"])
def test_fused_adam_takes_the_default_adams_steps(recipe):
    """``optim.fused_adam`` builds torch's fused kernel (Adam, or AdamW with the encoder's
    decay) and its steps match the default multi-tensor Adam's to rounding; off by default."""
    import torch

    from cryonoo.train.build import base_model, build_model, build_optimizer

    base = get_recipe(recipe).replace(SMALL)
    assert base.optim.fused_adam is False
    generator = torch.Generator().manual_seed(0)
    grads = None
    steps = {}
    for fused in (False, True):
        config = base.replace({"optim.fused_adam": fused})
        torch.manual_seed(0)
        model = build_model(config, 17, noise_sigma=0.5, n_images=8)
        optimizer = build_optimizer(config, model, base_model(model))
        assert all(bool(g.get("fused")) is fused for g in optimizer.param_groups)
        initial = [p.detach().clone() for p in model.parameters()]
        if grads is None:
            grads = [
                [torch.randn(p.shape, generator=generator) for p in model.parameters()]
                for _ in range(3)
            ]
        for step_grads in grads:
            for p, g in zip(model.parameters(), step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        steps[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(steps[False], steps[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = max((a - b).abs().max().item() for a, b in zip(steps[True], initial, strict=True))
    assert moved > 1e-5  # the steps did move the weights (lr 1e-4, three steps)


@pytest.mark.parametrize("recipe", ["cryodrgn", "cryonoo"])
def test_build_model_sets_the_decoder_chunk(recipe):
    """``optim.decoder_chunk`` reaches the lattice model whoever builds it (the trainer or a
    benchmark calling ``build_model``), plain or wrapped for self-distillation."""
    from cryonoo.train.build import base_model, build_model

    config = get_recipe(recipe).replace(SMALL)
    plain = base_model(build_model(config, 17, noise_sigma=0.5))
    assert plain.decoder_chunk is None and plain.cpu_block_points == 8192  # the defaults
    chunked = config.replace({"optim.decoder_chunk": 4})
    assert base_model(build_model(chunked, 17, noise_sigma=0.5)).decoder_chunk == 4
    unblocked = config.replace({"optim.cpu_block_points": None})
    assert base_model(build_model(unblocked, 17, noise_sigma=0.5)).cpu_block_points is None
