"""`evaluate_refinement` / `benchmarks/refine.py` on the tiny dataset: keys, one-pass budgets,
K = 0, the autodecoder row and the errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryonoo.cli import app
from cryonoo.experiments.refinement import evaluate_refinement, format_refinement, refine_budgets
from cryonoo.io.dataset import open_dataset
from cryonoo.train.encode import encode_dataset
from cryonoo.train.run import load_run

runner = CliRunner()
SMALL = ["--dec-dim", "16", "--dec-layers", "1", "--zdim", "2", "-b", "16", "-n", "1"]
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "refine.py"
ROW_KEYS = {
    "method",
    "steps",
    "lr",
    "band",
    "infer_s",
    "images_per_s",
    "unseen",
    "label_recovery",
    "per_image_fsc",
    "shift_from_amortized",
    "speed_vs_autodecoder",
}


def _train(data, tmp_path_factory, recipe: str, *extra: str) -> Path:
    run = tmp_path_factory.mktemp(recipe) / "run"
    args = ["train", str(data.root), "-o", str(run), "--recipe", recipe, *SMALL, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def vae_run(data, tmp_path_factory):
    return _train(data, tmp_path_factory, "cryodrgn", "--enc-dim", "8")


@pytest.fixture(scope="module")
def ad_run(data, tmp_path_factory):
    return _train(data, tmp_path_factory, "autodecoder")


@pytest.fixture(scope="module")
def result(vae_run, ad_run, data):
    return evaluate_refinement(
        vae_run, data.root, steps=(3, 1), device="cpu", autodecoder_run=ad_run
    )


def test_result_has_every_key(result, data):
    assert result["steps"] == [1, 3] and result["split"] == "test"
    n_test = len(np.load(data.root / "split.npz")["test"])
    assert result["n"]["test"] == n_test and result["label_metric"] in ("r2", "accuracy")
    assert -1 <= result["seen_amortized_train"] <= 1 and result["encode_train_s"] > 0
    assert result["autodecoder"]["steps"] >= 1 and result["autodecoder"]["lr"] > 0
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["amortized", "refine 1", "refine 3", "autodecoder"]
    assert [r["steps"] for r in rows[:3]] == [0, 1, 3]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["infer_s"] > 0 and r["images_per_s"] == pytest.approx(n_test / r["infer_s"])
        assert r["unseen"] == r["label_recovery"]["unseen"]
        assert 0 <= r["per_image_fsc"]["mean"] <= r["per_image_fsc"]["max_auc"]
        assert r["speed_vs_autodecoder"] == pytest.approx(rows[-1]["infer_s"] / r["infer_s"])
    # the kNN is fitted on the amortized train latents: every VAE row shares the seen score
    assert {r["label_recovery"]["seen"] for r in rows[:3]} == {result["seen_amortized_train"]}
    assert rows[0]["shift_from_amortized"] == 0 < rows[1]["shift_from_amortized"]
    assert rows[1]["infer_s"] < rows[2]["infer_s"] and rows[-1]["shift_from_amortized"] is None
    json.dumps(result, allow_nan=False)  # JSON-ready
    table = format_refinement(result)
    assert table.count("\n| ") == 6  # header, rule, 4 rows
    assert ("unseen R²" in table) == (result["label_metric"] == "r2")
    assert "| refine 3 | 3 |" in table and "| autodecoder |" in table and "1×" in table


def test_one_pass_budgets_equal_separate_refinements(vae_run, data):
    run = load_run(vae_run)
    test = open_dataset(
        data.root, ind="test", preprocessing=run.train.preprocessing(), norm_std=run.norm_std
    )
    dev = torch.device("cpu")
    fits = refine_budgets(run.model, test, dev, (0, 2, 5), lr=0.05, batch_size=13)
    assert sorted(fits) == [0, 2, 5] and fits[0][1] <= fits[2][1] <= fits[5][1]
    mu = encode_dataset(run.model, test, dev)[0]
    np.testing.assert_allclose(fits[0][0], mu, rtol=1e-5, atol=1e-6)  # K = 0 is amortized
    batch = test[np.arange(len(test))]
    for k in (0, 2, 5):
        z = run.model.refine(batch.images, batch.rot, batch.ctf, batch.trans, steps=k, lr=0.05)
        np.testing.assert_allclose(fits[k][0], z.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(fits[5][0], mu)
    low = refine_budgets(run.model, test, dev, (0, 3), lr=0.05, band=0.2, batch_size=13)
    z = run.model.refine(batch.images, batch.rot, batch.ctf, batch.trans, steps=3, band=0.2)
    np.testing.assert_allclose(low[3][0], z.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(low[0][0], fits[0][0])  # the same start


def test_bad_inputs_raise(vae_run, ad_run, data):
    with pytest.raises(ValueError, match="has no encoder"):
        evaluate_refinement(ad_run, data.root, steps=(1,), device="cpu")
    with pytest.raises(ValueError, match="split='valid'"):
        evaluate_refinement(vae_run, data.root, split="valid", device="cpu")
    with pytest.raises(ValueError, match="split='train'"):
        evaluate_refinement(vae_run, data.root, split="train", device="cpu")
    for steps in ((0, 5), (-1,), (), (2.5,)):
        with pytest.raises(ValueError, match="budget"):
            evaluate_refinement(vae_run, data.root, steps=steps, device="cpu")
    with pytest.raises(ValueError, match="lr must be"):
        evaluate_refinement(vae_run, data.root, lr=0.0, device="cpu")
    for bands in ((), (0.0,), (None, 0.7), (True,)):
        with pytest.raises(ValueError, match="band"):
            evaluate_refinement(vae_run, data.root, bands=bands, device="cpu")
    with pytest.raises(ValueError, match="not an autodecoder"):
        evaluate_refinement(vae_run, data.root, steps=(1,), autodecoder_run=vae_run)


def test_script_writes_json_and_table(vae_run, data, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("refine_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    args = [str(vae_run), str(data.root), "-o", str(out)]
    script.main([*args, "--steps", "1,2", "--lr", "0.05", "--device", "cpu", "--bands", "full,0.2"])
    printed = capsys.readouterr().out
    saved = json.loads((out / "refinement.json").read_text())
    assert saved["steps"] == [1, 2] and saved["lr"] == 0.05 and saved["bands"] == [None, 0.2]
    methods = [r["method"] for r in saved["rows"]]
    assert methods == [
        "amortized",
        "refine 1",
        "refine 2",
        "refine 1, |k| ≤ 0.2",
        "refine 2, |k| ≤ 0.2",
    ]
    assert [r["band"] for r in saved["rows"]] == [None, None, None, 0.2, 0.2]
    assert (out / "refinement.md").read_text() == printed and "| refine 2 | 2 |" in printed
    with pytest.raises(SystemExit) as bad:
        script.main([*args, "--steps", "0"])
    assert bad.value.code == 2 and "budgets must be integers ≥ 1" in capsys.readouterr().err
