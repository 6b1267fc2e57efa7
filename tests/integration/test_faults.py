"""Fault matrix: what happens when a run is killed, a disk fails, a loss explodes, a file lies.

Cases already covered elsewhere are listed in docs/reliability.md with their tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.dataset import open_dataset
from cryonoo.models.vae import HetVAE
from cryonoo.train.checkpoint import load_checkpoint
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import NonFiniteLossError, train

runner = CliRunner()
SMALL = {
    "model.enc_dim": 16,
    "model.dec_dim": 16,
    "model.enc_layers": 1,
    "model.dec_layers": 1,
    "model.zdim": 2,
    "optim.batch_size": 16,
    "ssl.head": "16-16",
    "ssl.warmup": 0,
}


def _one_epoch_run(data, run):
    """Train one epoch of a tiny model with the CLI; returns (run, args, checkpoint bytes)."""
    args = [
        "train",
        str(data.root),
        "-o",
        str(run),
        "--recipe",
        "cryodrgn",
        "-n",
        "1",
        "--enc-dim",
        "8",
        "--dec-dim",
        "8",
        "--zdim",
        "2",
    ]
    assert runner.invoke(app, args).exit_code == 0
    return run, args, (run / "weights.1.pt").read_bytes()


def test_sigkill_mid_run_then_resume(data, tmp_path):
    """Case 1: SIGKILL during training loses at most the epoch in progress."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cryonoo.cli",
        "train",
        str(data.root),
        "-o",
        str(run),
        "--recipe",
        "cryodrgn",
        "-n",
        "400",
        "--enc-dim",
        "16",
        "--dec-dim",
        "16",
        "--zdim",
        "2",
        "-b",
        "8",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "weights.2.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name.split(".")[1]) for p in run.glob("weights.*.pt"))
    assert done and done == list(range(1, done[-1] + 1))
    for epoch in done:  # every file under a final name is complete
        assert load_checkpoint(run / f"weights.{epoch}.pt")["epoch"] == epoch
        assert load_z_pkl(run / f"z.{epoch}.pkl")[0].shape == (len(data.split["train"]), 2)
    target = done[-1] + 2
    resumed = subprocess.run(
        [*cmd[:10], str(target), *cmd[11:], "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-1500:]
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == list(range(1, target + 1))


def test_unwritable_output_is_named(data, tmp_path):
    """Case 2: the output path cannot be created: a clear error naming it, nothing else."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(data.root),
            "-o",
            str(out),
            "--recipe",
            "cryodrgn",
            "-n",
            "1",
            "--enc-dim",
            "8",
            "--dec-dim",
            "8",
        ],
    )
    assert result.exit_code == 2
    assert "file" in result.output and "error" in result.output


def test_nonfinite_loss_is_named_or_skipped(data, tmp_path, monkeypatch):
    """Case 4: a NaN loss stops with term, epoch, batch and particles; or the batch is skipped."""
    dataset = open_dataset(data.root, ind="train", lazy=False)
    original = HetVAE.training_step
    calls = {"n": 0}

    def poisoned(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            out.terms["kld"] = out.terms["kld"] * float("nan")
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(HetVAE, "training_step", poisoned)
    small = ("model.enc_dim", "model.dec_dim", "model.zdim", "optim.batch_size")
    config = get_recipe("cryodrgn").replace({"optim.epochs": 1, **{k: SMALL[k] for k in small}})
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite 'kld' at epoch 1, batch 3; particles"
    ):
        train(config, dataset, tmp_path / "a")
    calls["n"] = 0
    result = train(config.replace({"optim.skip_nonfinite": True}), dataset, tmp_path / "b")
    assert result.stats[-1]["skipped_nonfinite"] == 1
    assert np.isfinite(result.stats[-1]["loss"])


def test_crafted_checkpoint_is_refused(tmp_path):
    """Case 11: a checkpoint holding an arbitrary object does not load (weights_only)."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"epoch": 1, "x": Payload()}, tmp_path / "weights.1.pt")
    with pytest.raises(ValueError, match="refused for safety"):
        load_checkpoint(tmp_path / "weights.1.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", ["batch-larger-than-data", "one-image", "zdim-1"])
def test_small_and_degenerate_shapes(data, tmp_path, case):
    """Case 12: batch > dataset, a single image, zdim 1 — train, or skip SSL with a reason."""
    kw = dict(SMALL)
    indices = "train"
    if case == "batch-larger-than-data":
        kw["optim.batch_size"] = 1000
    elif case == "one-image":
        indices = np.array([0])
    else:
        kw["model.zdim"] = 1
    dataset = open_dataset(data.root, ind=indices, lazy=False)
    config = get_recipe("cryonoo").replace({"optim.epochs": 1, **kw})
    result = train(config, dataset, tmp_path / case)
    record = result.stats[-1]
    assert np.isfinite(record["loss"])
    if case == "one-image":
        assert record["ssl/skipped"] == 1.0  # the SSL term needs two images per batch


def test_ctrl_c_saves_the_current_state_and_resume_is_exact(data, tmp_path):
    """Case 3: Ctrl-C mid-epoch writes a consistent mid-epoch checkpoint; --resume continues
    from that very step, bit-identical (CPU) to a run never interrupted."""
    from cryonoo.train.checkpoint import INTERRUPTED

    dataset = open_dataset(data.root, ind="train", lazy=False)
    config = get_recipe("cryonoo").replace({"optim.epochs": 3, **SMALL})
    train(config, dataset, tmp_path / "straight")
    steps = {"n": 0}

    def interrupt_in_epoch_2(event):
        steps["n"] += 1
        if event["epoch"] == 2 and steps["n"] == 7:  # 5 steps per epoch → 2nd step of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, dataset, tmp_path / "cut", on_step=interrupt_in_epoch_2)
    saved = load_checkpoint(tmp_path / "cut" / INTERRUPTED)
    assert saved["epoch"] == 1 and saved["batches_done"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, dataset, tmp_path / "cut")
    train(config, dataset, tmp_path / "cut", resume=True)
    assert not (tmp_path / "cut" / INTERRUPTED).exists()
    a, _ = load_z_pkl(tmp_path / "straight" / "z.3.pkl")
    b, _ = load_z_pkl(tmp_path / "cut" / "z.3.pkl")
    np.testing.assert_array_equal(a, b)


def test_out_of_memory_message_keeps_checkpoint(data, tmp_path, monkeypatch):
    """Case 14: an out-of-memory error becomes advice (smaller batch / lazy), checkpoint intact."""
    import cryonoo.train.trainer as trainer_mod

    run, args, before = _one_epoch_run(data, tmp_path / "oom")

    def out_of_memory(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_mod, "encode_dataset", out_of_memory)
    result = runner.invoke(app, [*args[:7], "2", *args[8:], "--resume"])
    assert result.exit_code == 2
    assert "--batch-size" in result.output and "--resume" in result.output
    assert (run / "weights.1.pt").read_bytes() == before


def test_encode_streams_a_large_stack_in_bounded_memory(data, tmp_path):
    """Case 15: encoding a stack streams it: peak memory grows far less than the stack's size."""
    import mrcfile

    run, _, _ = _one_epoch_run(data, tmp_path / "run")
    n, box = 100_000, 16  # 100 MB of float32 images
    stack = tmp_path / "big.mrcs"
    with mrcfile.new_mmap(stack, shape=(n, box, box), mrc_mode=2) as mrc:
        mrc.set_image_stack()
        base = mrcfile.read(data.particles)
        for start in range(0, n, base.shape[0]):
            stop = min(n, start + base.shape[0])
            mrc.data[start:stop] = base[: stop - start]
    script = (
        "import resource, sys\n"
        "from typer.testing import CliRunner\n"
        "from cryonoo.cli import app\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = CliRunner().invoke(app, ['encode', {str(run)!r}, {str(stack)!r}, '-o',"
        f" {str(tmp_path / 'z.pkl')!r}, '-b', '4096', '--device', 'cpu'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 0.5 * n * box * box * 4, f"peak RSS grew by {growth / 1e6:.0f} MB"
    assert load_z_pkl(tmp_path / "z.pkl")[0].shape == (n, 2)


def test_disk_full_while_saving_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    """Case 2 (while saving): ENOSPC during a checkpoint write names the path; the previous
    checkpoint stays intact and no partial file is left under a final name."""
    import errno

    import cryonoo.train.trainer as trainer_mod
    from cryonoo.io.atomic import atomic_path

    run, args, before = _one_epoch_run(data, tmp_path / "full")

    def full_disk(path, state):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_mod, "save_checkpoint", full_disk)
    result = runner.invoke(app, [*args[:7], "2", *args[8:], "--resume"])
    assert result.exit_code == 2
    assert "weights.2.pt" in result.output and "No space left" in result.output
    assert (run / "weights.1.pt").read_bytes() == before
    assert not (run / "weights.2.pt").exists()
    assert not list(run.glob(".weights.2.pt.*"))  # the temporary file is removed


def test_resume_after_a_stats_line_cut_short(data, tmp_path, caplog):
    """A kill during the append of a stats line leaves half a JSON line: resume drops it
    (with a warning naming the file) and goes on."""
    run, args, _ = _one_epoch_run(data, tmp_path / "torn")
    stats = run / "stats.jsonl"
    with open(stats, "a") as fh:
        fh.write('{"epoch": 2, "recon": 0.7')  # cut short mid-write
    args[args.index("-n") + 1] = "2"
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "stats.jsonl line 2 is not JSON" in caplog.text
    epochs = [json.loads(line)["epoch"] for line in stats.read_text().splitlines()]
    assert epochs == [1, 2]
