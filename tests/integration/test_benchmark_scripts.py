"""The benchmark scripts of ``docs/benchmarks.md`` run, at tiny sizes, from a fresh checkout.

Nothing here is timed: each script runs in a subprocess on a few hundred images and the test
checks what it wrote (every step's exit status, finite results, the counts asked for) and, for
lazy training, an identity: the lazy and in-memory runs see the same images, so their latents
are equal.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(args: list[str], **env: str) -> str:
    result = subprocess.run(
        args,
        cwd=ROOT,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / name), *args]


def test_gpu_checks_script_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "out"
    _run(
        ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")],
        OUT=str(out),
        WORK=str(tmp_path / "work"),
        DEVICE="cpu",
        SMALL="1",
        PYTHON=sys.executable,
    )
    rows = [line.split("|")[1:3] for line in (out / "summary.md").read_text().splitlines()[2:]]
    status = {name.strip(): int(rc) for name, rc in rows}
    assert set(status) == {"environment", "epoch", "cuda_tests", "encode"} | {
        "ssl_overhead",
        "memory",
        "nccl",
    }
    assert status.pop("cuda_tests") in (0, 5)  # 5: no CUDA test selected on a CPU machine
    assert all(rc == 0 for rc in status.values()), status
    epoch = json.loads((out / "epoch.json").read_text())
    assert len(epoch["epoch_s"]) == 1 and epoch["images_per_s"] > 0
    assert math.isfinite(epoch["final_loss"]) and epoch["precision"] == "fp32"
    encode = json.loads((out / "bench_encode.json").read_text())["encode"]
    assert encode["n_latents"] == 2048 and encode["finite"]
    overhead = json.loads((out / "overhead.json").read_text())
    assert set(overhead["results"]) == {"cryodrgn", "cryonoo", "expander-128"}
    memory = json.loads((out / "memory.json").read_text())["train"]
    assert all(row["per_image_mb"] >= 0 and row["fixed_mb"] > 0 for row in memory.values())


def test_lazy_training_gives_the_in_memory_latents(tmp_path):
    out = tmp_path / "lazy"
    args = ["-o", str(out), "--box", "32", "--n-images", "200", "--epochs", "2", "--dim", "32"]
    _run(_script("lazy_training.py", *args, "--threads", "1"))
    result = json.loads((out / "lazy.json").read_text())
    assert result["max_abs_z_diff"] == 0.0
    assert all(r["images_per_s"] > 0 for r in result["results"].values())
    # the page-fault benchmark on the same simulated dataset
    faults = _script("step_faults.py", str(out / "data"), "--steps", "2", "--precision", "fp32")
    assert "minor page faults/step" in _run(faults)


@pytest.mark.skipif(
    not os.environ.get("CRYONOO_CRYODRGN"),
    reason="CRYONOO_CRYODRGN (cryoDRGN's executable or its environment's python) is not set",
)
def test_against_cryodrgn_runs(tmp_path):
    args = ["-o", str(tmp_path / "vs"), "--cryodrgn", os.environ["CRYONOO_CRYODRGN"]]
    args += ["--box", "32", "--n-images", "200", "--epochs", "1", "--dim", "32"]
    _run(_script("vs_cryodrgn.py", *args))
    result = json.loads((tmp_path / "vs" / "results.json").read_text())
    assert result["cryodrgn"]["images_per_s"] > 0 and result["cryonoo"]["fp32"]["images_per_s"] > 0
    fsc = result["per_image_fsc"]
    assert set(fsc) == {"cryodrgn", "cryonoo_fp32"}
    assert all(0 < fsc[run][split]["mean"] < 1 for run in fsc for split in ("train", "test"))


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("analyze_scale.py", ["-n", "3000"], "peak RSS"),
        ("decoder_mlp.py", ["--points", "2000", "--width", "32", "--repeats", "2"], "fp32"),
        ("ssl_head.py", ["--head", "32-32", "--repeats", "2"], "Adam step"),
        ("train_epoch.py", ["--box", "32", "--n-images", "256", "--dim", "32"], "images/s"),
    ],
)
def test_benchmark_script_runs(script, args, expect, tmp_path):
    outdir = [] if script in ("decoder_mlp.py", "ssl_head.py") else ["-o", str(tmp_path / "out")]
    assert expect in _run(_script(script, *outdir, *args))
