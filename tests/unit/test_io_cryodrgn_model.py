"""Loading cryoDRGN 4.3.1 runs: the same latents and volumes as cryoDRGN's own eval commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
import yaml

from cryonoo.interop.cryodrgn_model import (
    convert_state_dict,
    cryodrgn_checkpoints,
    load_cryodrgn_run,
    model_kwargs_from_config,
    read_cryodrgn_config,
    save_cryodrgn_run,
)
from cryonoo.io.cryodrgn import load_z_pkl
from cryonoo.io.dataset import Preprocessing, open_dataset

FIXTURE = Path(__file__).parents[1] / "data" / "cryodrgn_tiny"


def _dataset(run):
    prep = Preprocessing(invert=run.invert, window=run.window, window_inner=run.window_r)
    return open_dataset(
        FIXTURE / "particles.mrcs",
        FIXTURE / "poses.pkl",
        FIXTURE / "ctf.pkl",
        norm_std=run.norm_std,
        preprocessing=prep,
        lazy=False,
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def run():
    return load_cryodrgn_run(FIXTURE)


def test_config_maps_onto_hetvae(run) -> None:
    cfg = run.model.config()
    assert cfg["D"] == 25 and cfg["zdim"] == 2 and cfg["encoder"] == "resid-mlp"
    assert (cfg["enc_layers"], cfg["enc_dim"], cfg["dec_layers"], cfg["dec_dim"]) == (2, 64, 2, 64)
    assert cfg["decoder"] == "fourier" and cfg["pe_type"] == "gaussian"
    assert cfg["enc_mask_radius"] == 12 and run.model.n_enc == 440
    assert run.norm_std == pytest.approx(16.30588722229004)
    assert run.invert and run.window and run.window_r == 0.85
    assert run.epoch == 2 and run.weights.name == "weights.pkl"
    assert not run.model.training


def test_latents_equal_cryodrgn_eval_images(run) -> None:
    ds = _dataset(run)
    batch = ds[np.arange(len(ds))]
    with torch.no_grad():
        mu, logvar = run.model.encode_distribution(batch.images, batch.ctf, batch.trans)
    ref_mu, ref_logvar = load_z_pkl(FIXTURE / "z.pkl")
    assert mu.shape == ref_mu.shape == (24, 2)
    assert _rel(mu.numpy(), ref_mu) < 1e-5
    assert _rel(logvar.numpy(), ref_logvar) < 1e-5


def test_volume_equals_cryodrgn_eval_vol(run) -> None:
    z = torch.from_numpy(np.loadtxt(FIXTURE / "vol_z.txt", dtype=np.float32))
    vol = run.model.volume(z, norm_std=run.norm_std).numpy()
    with mrcfile.open(FIXTURE / "vol_001.mrc") as m:
        ref = m.data.copy()
    assert vol.shape == ref.shape == (24, 24, 24)
    assert _rel(vol, ref) < 1e-4


def test_parameter_names_are_mapped(run) -> None:
    state = torch.load(FIXTURE / "weights.pkl", weights_only=True)["model_state_dict"]
    out = convert_state_dict(state, run.model)
    assert torch.equal(out["decoder.pe.rand_freqs"], state["decoder.rand_freqs"])
    assert torch.equal(out["decoder.mlp.main.0.weight"], state["decoder.decoder.main.0.weight"])
    assert torch.equal(out["encoder.main.2.linear.bias"], state["encoder.main.2.linear.bias"])
    bad = dict(state, **{"encoder.main.0.weight": torch.zeros(64, 441)})
    with pytest.raises(ValueError, match=r"encoder\.main\.0\.weight has shape \(64, 441\)"):
        convert_state_dict(bad, run.model)
    with pytest.raises(ValueError, match="no counterpart"):
        convert_state_dict({**state, "decoder.extra": torch.zeros(1)}, run.model)
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        convert_state_dict({k: v for k, v in state.items() if "rand" not in k}, run.model)


def _edited(tmp_path: Path, section: str, key: str, value) -> Path:
    cfg = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    cfg.setdefault(section, {})[key] = value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copy(FIXTURE / "weights.pkl", tmp_path / "weights.pkl")
    return tmp_path


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("model_args", "encode_mode", "mlp", r"model_args\.encode_mode = 'mlp'"),
        ("model_args", "encode_mode", "tilt", "tilt-series"),
        ("dataset_args", "ntilts", 10, "tilt-series"),
        ("model_args", "pe_type", "none", r"model_args\.pe_type = 'none'"),
        ("model_args", "domain", "hartley", r"model_args\.domain = 'hartley'"),
        ("model_args", "activation", "gelu", r"model_args\.activation"),
        ("lattice_args", "extent", 12, r"lattice_args\.extent"),
        ("lattice_args", "D", 24, r"lattice_args\.D must be odd"),
        ("dataset_args", "norm", [1.0, 16.3], r"dataset_args\.norm"),
    ],
)
def test_unsupported_configs_name_the_key(tmp_path, section, key, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_cryodrgn_run(_edited(tmp_path, section, key, value))


def test_other_architecture_shapes_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"do not belong to this config\.yaml"):
        load_cryodrgn_run(_edited(tmp_path, "model_args", "qdim", 32))


def test_epochs_and_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        load_cryodrgn_run(tmp_path)
    shutil.copy(FIXTURE / "config.yaml", tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_cryodrgn_run(tmp_path)
    for n in (1, 3):
        shutil.copy(FIXTURE / "weights.pkl", tmp_path / f"weights.{n}.pkl")
    assert cryodrgn_checkpoints(tmp_path) == [1, 3]
    assert load_cryodrgn_run(tmp_path).weights.name == "weights.3.pkl"
    assert load_cryodrgn_run(tmp_path, epoch=1).weights.name == "weights.1.pkl"
    with pytest.raises(FileNotFoundError, match=r"checkpoints in .*: \[1, 3\]"):
        load_cryodrgn_run(tmp_path, epoch=2)


class _NotATensor:
    pass


def test_checkpoints_are_loaded_without_running_code(tmp_path) -> None:
    shutil.copy(FIXTURE / "config.yaml", tmp_path / "config.yaml")
    torch.save({"model_state_dict": {}, "x": _NotATensor()}, tmp_path / "weights.pkl")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_cryodrgn_run(tmp_path)
    torch.save({"state": {}}, tmp_path / "weights.pkl")
    with pytest.raises(ValueError, match="model_state_dict"):
        load_cryodrgn_run(tmp_path)


def test_config_reader_errors(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        read_cryodrgn_config(tmp_path)
    (tmp_path / "config.yaml").write_text("dataset_args: {}\n")
    with pytest.raises(ValueError, match="'lattice_args'"):
        read_cryodrgn_config(tmp_path / "config.yaml")
    cfg = read_cryodrgn_config(FIXTURE)
    del cfg["model_args"]["qdim"]
    with pytest.raises(ValueError, match=r"model_args\.qdim is missing"):
        model_kwargs_from_config(cfg)


def test_export_round_trip(run, tmp_path) -> None:
    mu, logvar = load_z_pkl(FIXTURE / "z.pkl")
    out = save_cryodrgn_run(
        run.model, tmp_path / "cd", epoch=7, norm_std=run.norm_std, z=mu, logvar=logvar,
        dataset_args={"ctf": str(FIXTURE / "ctf.pkl")}, history=[{"loss": 0.9, "kld": 2.0}],
    )  # fmt: skip
    files = ["config.yaml", "run.log", "weights.7.pkl", "z.7.pkl"]
    assert sorted(p.name for p in out.iterdir()) == files
    assert (
        "Epoch: 1 Average gen loss = 0.900000, KLD = 2.000000, total loss = 0.900000"
        in (out / "run.log").read_text()
    )
    theirs = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    ours = yaml.safe_load((out / "config.yaml").read_text())
    for key in ("qlayers", "qdim", "players", "pdim", "zdim", "encode_mode", "enc_mask"):
        assert ours["model_args"][key] == theirs["model_args"][key]
    assert ours["lattice_args"] == theirs["lattice_args"]
    assert ours["dataset_args"]["norm"] == theirs["dataset_args"]["norm"]
    names = torch.load(out / "weights.7.pkl", weights_only=True)["model_state_dict"]
    original = torch.load(FIXTURE / "weights.pkl", weights_only=True)["model_state_dict"]
    assert names.keys() == original.keys()
    assert all(torch.equal(names[k], original[k]) for k in names)
    again = load_cryodrgn_run(out)
    assert again.epoch == 7 and again.weights.name == "weights.7.pkl"
    assert np.array_equal(load_z_pkl(out / "z.7.pkl")[0], mu)


def test_export_refuses_other_architectures(tmp_path) -> None:
    from cryonoo.models.vae import HetVAE

    model = HetVAE(17, zdim=2, encoder="mlp", enc_dim=8, dec_dim=8, enc_layers=1, dec_layers=1)
    with pytest.raises(ValueError, match="'resid-mlp' encoder"):
        save_cryodrgn_run(model, tmp_path, epoch=1, norm_std=1.0)
    model = HetVAE(17, zdim=2, pe_type="none", enc_dim=8, dec_dim=8, enc_layers=1, dec_layers=1)
    with pytest.raises(ValueError, match="no pe_type 'none'"):
        save_cryodrgn_run(model, tmp_path, epoch=1, norm_std=1.0)
