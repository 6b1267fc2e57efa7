"""`cryonoo evaluate`, `demo` and `bench generalization` on tiny problems: every file, every key."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.experiments.benchmark import format_tables, summarize_ceiling, summarize_seeds
from cryonoo.train.recipes import RECOMMENDED

runner = CliRunner()
TINY = [
    "-D",
    "16",
    "-n",
    "160",
    "--epochs",
    "2",
    "--enc-dim",
    "16",
    "--dec-dim",
    "16",
    "--n-conformations",
    "8",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "-o", str(out), *TINY, "--zdim", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_summary_and_tables(demo_dir):
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert set(summary) == {"cryodrgn", "cryonoo", RECOMMENDED, "recommended", "ceiling"}
    assert summary.pop("recommended") == RECOMMENDED
    ceiling = summary.pop("ceiling")
    assert ceiling["metric"] == "accuracy" and 0 <= ceiling["label_r2"] <= 1  # 8 classes
    assert ceiling["n_fresh"] >= 9 * 128  # ≥ 10× the training images, less the validation part
    assert (demo_dir / "overview_seed0.png").stat().st_size > 10_000
    for metrics in summary.values():
        for split in ("train", "test"):
            fsc = metrics["per_image_fsc"][split]
            assert 0 <= fsc["mean"] <= fsc["max_auc"] and {"std", "median"} <= set(fsc)
        shift = metrics["latent_shift"]
        assert {"kld", "tv", "jsd", "hellinger", "wd", "bandwidth_train"} <= set(shift)
        assert set(metrics["latent_shift_null"]) >= {"kld", "wd"}
        assert {"seen", "unseen"} <= set(metrics["label_recovery"])
    # both recipes trained on the same data with the same seed and architecture
    a = json.loads((demo_dir / "cryodrgn_seed0" / "config.json").read_text())["train"]
    b = json.loads((demo_dir / f"{RECOMMENDED}_seed0" / "config.json").read_text())["train"]
    for key in ("seed", "epochs", "enc_dim", "dec_dim", "zdim", "batch_size"):
        assert a[key] == b[key]
    assert a["ssl"] is None and b["ssl"] is not None


def test_evaluate_command_writes_every_file(demo_dir, tmp_path):
    run = demo_dir / f"{RECOMMENDED}_seed0"
    out = tmp_path / "report"
    args = [
        "evaluate",
        str(run),
        "--dataset",
        str(demo_dir / "data_seed0"),
        "-o",
        str(out),
        "--kmeans",
        "2,3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in (
        "metrics.json",
        "latent_pca.png",
        "fsc_per_image.png",
        "training.png",
        "fsc_train.txt",
        "fsc_test.txt",
        "z.train.pkl",
        "z.test.pkl",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "kmeans3").glob("vol_*.mrc"))) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == RECOMMENDED and metrics["epoch"] == 2
    bad = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--dataset",
            str(demo_dir / "data_seed0"),
            "-o",
            str(out),
            "--split",
            "val",
        ],
    )
    assert bad.exit_code == 2 and "'val'" in bad.output


def test_bench_generalization_tables(tmp_path):
    out = tmp_path / "bench"
    args = [
        "bench",
        "generalization",
        "-o",
        str(out),
        "--recipes",
        "cryodrgn,simsiam",
        "--seeds",
        "2",
        "--precision",
        "bf16",
        *TINY,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_config = json.loads((out / "simsiam_seed1" / "config.json").read_text())["train"]
    assert run_config["precision"] == "bf16"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cryodrgn"]["fsc_test"]["n"] == 2
    assert summary["ceiling"]["label_r2"]["n"] == 2
    md = (out / "summary.md").read_text()
    assert "| simsiam |" in md and "±" in md and "| ceiling" in md
    bad = runner.invoke(app, ["bench", "generalization", "-o", str(out), "--recipes", "nope"])
    assert bad.exit_code == 2 and "choose from" in bad.output
    fresh = tmp_path / "fresh"
    bad = runner.invoke(app, ["bench", "generalization", "-o", str(fresh), "--precision", "half"])
    assert bad.exit_code == 2 and "precision" in bad.output
    assert not (fresh / "data_seed0").exists()  # refused before simulating anything
    negative = tmp_path / "negative"
    bad = runner.invoke(app, ["bench", "generalization", "-o", str(negative), "--first-seed", "-1"])
    assert bad.exit_code == 2 and "--first-seed" in bad.output
    assert not negative.exists()
    fitted = tmp_path / "fitted"  # no encoder: one-pass latents cannot be scored
    bad = runner.invoke(
        app, ["bench", "generalization", "-o", str(fitted), "--recipes", "autodecoder"]
    )
    assert bad.exit_code == 2 and "no encoder" in bad.output
    assert not (fitted / "data_seed0").exists()
    typo = tmp_path / "typo"
    bad = runner.invoke(app, ["bench", "generalization", "-o", str(typo), "--set", "optim.nope=1"])
    assert bad.exit_code == 2 and "optim has:" in bad.output
    assert not (typo / "data_seed0").exists()


def test_bench_generalization_first_seed(tmp_path):
    """`--seeds 1 --first-seed 1` is seed 1 of a 2-seed run: the same data, the same numbers."""
    common = ["--recipes", "cryodrgn", "--no-ceiling", *TINY]
    both, one = tmp_path / "both", tmp_path / "one"
    ran = runner.invoke(app, ["bench", "generalization", "-o", str(both), "--seeds", "2", *common])
    assert ran.exit_code == 0, ran.output
    args = ["bench", "generalization", "-o", str(one), "--seeds", "1", "--first-seed", "1"]
    ran = runner.invoke(app, [*args, *common])
    assert ran.exit_code == 0, ran.output
    assert not list(one.glob("*_seed0*")) and (one / "cryodrgn_seed1").is_dir()
    alone = json.loads((one / "results.json").read_text())["results"]["1"]["cryodrgn"]
    paired = json.loads((both / "results.json").read_text())["results"]["1"]["cryodrgn"]
    assert alone["per_image_fsc"] == paired["per_image_fsc"]


def test_summarize_seeds_math():
    results = {
        "0": {"a": {"per_image_fsc": {"test": {"mean": 0.2}}, "label_recovery": {"seen": 1.0}}},
        "1": {"a": {"per_image_fsc": {"test": {"mean": 0.4}}, "label_recovery": {"seen": 0.0}}},
    }
    s = summarize_seeds(results)
    assert s["a"]["fsc_test"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1), "n": 2}
    assert s["a"]["seen"]["std"] == pytest.approx(0.5)
    assert "0.300 ± 0.100" in format_tables(s)
    results["0"]["ceiling"] = {"label_r2": 0.5, "train": 0.6}
    results["1"]["ceiling"] = {"label_r2": 0.7, "train": 0.6}
    assert set(summarize_seeds(results)) == {"a"}  # the oracle is not a recipe
    c = summarize_ceiling(results)
    assert c["label_r2"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1), "n": 2}
    assert "| ceiling (supervised encoder, fresh images) | 0.600 ± 0.000 | 0.600 ± 0.100 |" in (
        format_tables(s, c)
    )


def test_bench_in_worker_processes_gives_the_same_numbers(tmp_path):
    """`--jobs 2` (one-thread workers) reproduces every metric of one process at one thread."""
    import torch

    from cryonoo.experiments.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(
        box=16, n_images=160, epochs=2, enc_dim=16, dec_dim=16, n_conformations=8, zdim=2
    )
    recipes = ["cryodrgn"]  # and the ceiling: two tasks
    steps: list[dict] = []
    # The dataset is simulated in this process in both runs; at one thread here as in the
    # workers (MKL's FFT and matrix-product rounding may depend on the thread count).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run_benchmark(tmp_path / "alone", recipes, [0], config, jobs=1)
        side = run_benchmark(tmp_path / "side", recipes, [0], config, jobs=2, on_step=steps.append)
    finally:
        torch.set_num_threads(threads)
    assert set(side["0"]) == {"cryodrgn", "ceiling"}
    for name in recipes:
        for key in ("per_image_fsc", "latent_shift", "label_recovery"):
            assert side["0"][name][key] == alone["0"][name][key], (name, key)
    assert side["0"]["ceiling"]["label_r2"] == alone["0"]["ceiling"]["label_r2"]
    assert sum(e["images"] for e in steps) == 2 * 128  # the recipe's training images
