"""`cryonoo bench encode` at a tiny size: the record, the latent count and the clean-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.experiments.encode_bench import RESULT_NAME, EncodeBenchConfig, encoder_flops_per_image
from cryonoo.models.vae import HetVAE

runner = CliRunner()
TINY = ["-n", "300", "-D", "16", "--enc-dim", "16", "-b", "64", "--device", "cpu"]
KEYS = {"config", "device", "threads", "stack", "encode", "memory", "compute", "breakdown"}
KEYS |= {"total_s", "workdir", "kept", "cryonoo_version"}


def bench(*args: object) -> None:
    result = runner.invoke(app, ["bench", "encode", *TINY, *map(str, args)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("source", ["mrcs", "star"])
def test_bench_encode_writes_the_record_and_removes_the_stack(source, tmp_path):
    out = tmp_path / "out"
    bench("-o", out, "--source", source, "--per-stack", 128, "--no-keep")
    r = json.loads((out / RESULT_NAME).read_text())
    assert KEYS <= set(r)
    e, c = r["encode"], r["compute"]
    assert {"open_s", "infer_s", "save_s", "wall_s", "images_per_s"} <= set(e)
    assert e["n_latents"] == 300 and e["zdim"] == 8 and e["finite"]
    assert {"peak_rss_mb", "peak_anon_mb"} <= set(r["memory"])
    assert r["memory"]["peak_rss_mb"] > 0
    assert {"encoder_flops_per_image", "achieved_gflops_per_s"} <= set(c)
    b = r["breakdown"]
    assert b["images"] == 300 and b["num_workers"] == 0 and b["mlp_only_gflops_per_s"] > 0
    assert r["stack"]["files"] == (1 if source == "mrcs" else 3)  # 128 + 128 + 44 images
    assert not r["kept"] and r["workdir"] is None
    assert sorted(p.name for p in out.iterdir()) == [RESULT_NAME]  # the stack is gone


def test_bench_encode_keep_leaves_the_stack_in_the_workdir(tmp_path):
    work = tmp_path / "work"
    args = ["--source", "star", "--per-stack", 128, "--workdir", work]
    bench("-o", tmp_path / "out", *args, "--keep")
    r = json.loads((tmp_path / "out" / RESULT_NAME).read_text())
    (root,) = work.iterdir()
    assert r["kept"] and r["workdir"] == str(root)
    names = {p.name for p in root.iterdir()}
    assert {"particles.star", "stack_000002.mrcs", "ctf.pkl", "run", "z.pkl"} <= names
    bench("-o", tmp_path / "out2", *args, "--dtype", "float32", "--no-ctf", "--no-keep")
    assert list(work.iterdir()) == [root]  # the second run removed only its own directory


def test_encoder_flops_count_the_linear_layers():
    model = HetVAE(17, zdim=4, enc_layers=2, enc_dim=8, dec_layers=1, dec_dim=8)
    n = model.n_enc
    assert encoder_flops_per_image(model.encoder) == 2 * (n * 8 + 2 * 8 * 8 + 8 * 8)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="dtype"):
        EncodeBenchConfig(dtype="int8")
    with pytest.raises(ValueError, match="box"):
        EncodeBenchConfig(box=15)
    assert EncodeBenchConfig().stack_bytes == 1_000_000 * 128**2 * np.dtype("float16").itemsize
