"""The autodecoder from the command line: train, resume, encode by test-time optimization, and
the tiny `bench inference` run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.train.checkpoint import load_checkpoint
from cryonoo.train.run import load_run

runner = CliRunner()
TINY = ["--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ad_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ad") / "run"
    result = invoke("train", data.root, "-o", run, "--recipe", "autodecoder", "-n", 2, *TINY)
    assert result.exit_code == 0, result.output
    return run


def test_train_autodecoder_writes_its_latent_table(ad_run, data):
    cfg = json.loads((ad_run / "config.json").read_text())
    assert cfg["train"]["model"] == "autodecoder" and cfg["train"]["ssl"] is None
    n_train = len(np.load(ad_run / "train_indices.npy"))
    assert cfg["model"]["n_images"] == n_train
    stats = [json.loads(line) for line in (ad_run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2] and "prior" in stats[0] and "kld" not in stats[0]
    run = load_run(ad_run)
    z2 = load_z_pkl(ad_run / "z.2.pkl")[0]
    assert z2.shape == (n_train, 2)
    np.testing.assert_array_equal(z2, run.model.latent_table().numpy())
    assert not np.array_equal(z2, load_z_pkl(ad_run / "z.1.pkl")[0])  # the table was trained


def test_resume_continues_the_autodecoder(ad_run, tmp_path, data):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ad_run, run)
    result = invoke(
        "train", data.root, "-o", run, "--recipe", "autodecoder", "-n", 3, *TINY, "--resume"
    )
    assert result.exit_code == 0, result.output
    assert (run / "weights.3.pt").is_file() and (run / "z.3.pkl").is_file()
    before = load_checkpoint(ad_run / "weights.2.pt")["vae"]["embedding.weight"]
    after = load_run(run).model.latent_table()
    assert after.shape == before.shape and not torch.equal(after, before)


def test_encode_autodecode_and_its_errors(ad_run, data, tmp_path):
    out = tmp_path / "z.pkl"
    bad = invoke("encode", ad_run, data.root, "-o", out, "--ind", "test")
    assert bad.exit_code == 2 and "not available" in bad.output
    assert "--method autodecode" in bad.output and not out.exists()
    args = ["encode", ad_run, data.root, "--ind", "test", "--method", "autodecode"]
    result = invoke(*args, "-o", out, "--steps", 5, "-b", 7)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "autodecode, 5 steps" in said and " s (" in said and "images/s" in said
    z = load_z_pkl(out)[0]
    n_test = len(np.load(data.root / "split.npz")["test"])
    assert z.shape == (n_test, 2) and np.abs(z).sum() > 0
    again = invoke(*args, "-o", tmp_path / "z2.pkl", "--steps", 5, "-b", 32)
    assert again.exit_code == 0, again.output  # batching does not change the per-image fits
    np.testing.assert_allclose(load_z_pkl(tmp_path / "z2.pkl")[0], z, rtol=1e-4, atol=1e-5)


def test_autodecode_refuses_a_vae_run(data, tmp_path):
    run = tmp_path / "vae"
    args = ["--enc-dim", "8", *TINY]
    trained = invoke("train", data.root, "-o", run, "--recipe", "cryodrgn", "-n", 1, *args)
    assert trained.exit_code == 0, trained.output
    bad = invoke("encode", run, data.root, "-o", tmp_path / "z", "--method", "autodecode")
    assert bad.exit_code == 2 and "--method amortized" in bad.output


def test_bench_inference_tiny(tmp_path):
    out = tmp_path / "bench"
    result = invoke(
        "bench", "inference", "-o", out, "-D", 16, "-n", 160, "--epochs", 1, "--enc-dim", 16,
        "--dec-dim", 16, "--zdim", 2, "--n-conformations", 8, "--steps", "5,2", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "inference.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["amortized", "autodecode 2", "autodecode 5"]
    for row in report["rows"]:
        assert row["inference_s"] > 0 and row["total_s"] == pytest.approx(
            row["train_s"] + row["inference_s"]
        )
        assert 0 <= row["per_image_fsc"]["mean"] <= row["per_image_fsc"]["max_auc"]
        assert {"kld", "wd"} <= set(row["latent_shift"]) <= set(row["latent_shift_null"])
    assert report["rows"][2]["inference_s"] > report["rows"][1]["inference_s"]
    assert {"inference_ratio", "total_ratio", "reached"} <= set(report["comparison"])
    markdown = (out / "inference.md").read_text()
    assert "| autodecode 5 |" in markdown and "amortized" in result.output
    for name in ("cryodrgn", "autodecoder"):  # same decoder, seed and epochs
        cfg = json.loads((out / name / "config.json").read_text())["train"]
        assert (cfg["dec_dim"], cfg["seed"], cfg["epochs"]) == (16, 0, 1)
    bad = invoke("bench", "inference", "-o", tmp_path / "x", "--steps", "ten")
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
