"""Data-parallel training: torchrun with 2 CPU processes (gloo) trains one shared model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.train.distributed import DistInfo, ShardedBatchSampler

ARGS = [
    "--recipe",
    "cryodrgn",
    "-n",
    "2",
    "--enc-dim",
    "16",
    "--dec-dim",
    "16",
    "--zdim",
    "2",
    "-b",
    "16",
    "--device",
    "cpu",
]


def test_shards_cover_every_particle_once():
    batches = [list(range(i, min(i + 5, 23))) for i in range(0, 23, 5)]  # last batch: 3
    seen = []
    for rank in range(2):
        shards = list(ShardedBatchSampler(batches, DistInfo(rank, 2)))
        assert len(shards) == len(batches)
        seen += [i for shard in shards for i in shard]
    assert sorted(seen) == list(range(23))
    tiny = list(ShardedBatchSampler([[0, 1, 2, 3], [4]], DistInfo(1, 2)))
    assert tiny == [[1, 3]]  # a batch smaller than the world is skipped on every rank


def test_torchrun_two_processes(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cryonoo.cli",
        "train",
        str(data.root),
        "-o",
        str(tmp_path / "ddp"),
        *ARGS,
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = tmp_path / "ddp"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["world_size"] == 2
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2]  # rank 0 alone writes
    mu, _ = load_z_pkl(run / "z.2.pkl")
    assert mu.shape == (len(data.split["train"]), 2) and np.isfinite(mu).all()
    # the same run in one process reaches a comparable loss
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryonoo.cli",
            "train",
            str(data.root),
            "-o",
            str(tmp_path / "one"),
            *ARGS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    one = [json.loads(line) for line in (tmp_path / "one" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["recon"] == pytest.approx(one[-1]["recon"], rel=0.05)
