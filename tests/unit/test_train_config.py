"""The nested TrainConfig: sections, immutability, the derive API and the flat config.json."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from cryonoo.models.base import CPU_BLOCK_POINTS
from cryonoo.train.config import (
    ALIASES,
    ARCHITECTURE_FIELDS,
    SECTIONS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    SSLConfig,
    TrainConfig,
    dotted,
    flat_name,
)
from cryonoo.train.recipes import RECIPES, get_recipe

#: a config.json "train" mapping as runs wrote it before the settings were nested
OLD_FLAT = {
    "name": "mine",
    "zdim": 4,
    "encoder": "resid-mlp",
    "decoder": "fourier",
    "enc_layers": 2,
    "enc_dim": 64,
    "dec_layers": 2,
    "dec_dim": 64,
    "pe_type": "gaussian",
    "pe_dim": None,
    "feat_sigma": 0.5,
    "activation": "relu",
    "beta": None,
    "model": "vae",
    "latent_lr": 0.01,
    "latent_l2": 0.001,
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.0001,
    "weight_decay": 0.0,
    "encoder_weight_decay": 0.0,
    "lr_plateau": True,
    "plateau_on": "total",
    "plateau_factor": 0.5,
    "plateau_patience": 3,
    "grad_clip": None,
    "skip_nonfinite": False,
    "precision": "auto",
    "seed": 7,
    "ssl": "vicreg",
    "ssl_weight": 0.3,
    "head": "1024-1024-1024",
    "warmup_epochs": 1,
    "augment": "reproject-noise",
    "noise_factors": [0.5, 1.0, 1.5],
    "noise_sigma": None,
    "decoder_freeze": False,
    "detach_render": True,
    "detach_target": False,
    "encoder_from_ssl_only": False,
    "encoder_model_grad": 1.0,
    "teacher_momentum": None,
    "anchor_noise": 0.0,
    "ssl_options": {"inv": 25.0},
    "augment_options": {"poses": "per-view"},
    "invert": True,
    "window": True,
    "window_r": 0.85,
    "lazy": None,
    "num_workers": 0,
    "ctf_rescale": False,
    "checkpoint_every": 1,
}


def test_nested_access_mirrors_the_file_sections():
    config = TrainConfig.from_dict(OLD_FLAT)
    assert isinstance(config.model, ModelConfig) and isinstance(config.optim, OptimConfig)
    assert isinstance(config.ssl, SSLConfig) and isinstance(config.data, DataConfig)
    assert isinstance(config.output, OutputConfig)
    assert (config.model.zdim, config.model.kind, config.optim.lr) == (4, "vae", 1e-4)
    assert (config.ssl.weight, config.ssl.objective, config.ssl.warmup) == (0.3, "vicreg", 1)
    assert (config.data.window_r, config.output.checkpoint_every) == (0.85, 1)
    assert config.ssl.options == {"inv": 25.0} and config.ssl.noise_factors == (0.5, 1.0, 1.5)
    assert config.uses_ssl and config.preprocessing() == config.data.preprocessing()
    # the section fields are the settings file's short names, section by section
    for section, members in SECTIONS.items():
        shorts = [f.name for f in dataclasses.fields(getattr(config, section))]
        assert [dotted(m) for m in members] == [f"{section}.{s}" for s in shorts]
    assert ALIASES == {
        "model": {"kind": "model"},
        "ssl": {"objective": "ssl", "warmup": "warmup_epochs"},
    }


def test_a_flat_name_on_the_config_points_at_its_section():
    with pytest.raises(AttributeError, match=r"config\.ssl\.weight"):
        _ = TrainConfig().ssl_weight
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        _ = TrainConfig().bogus


def test_configs_and_sections_are_immutable():
    config = get_recipe("vicreg-25")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ssl.weight = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.ssl.options["inv"] = 1.0  # type: ignore[index]
    assert config.ssl.options == {"inv": 25.0, "var": 25.0, "cov": 1.0}


def test_option_dicts_are_never_shared():
    given = {"poses": "per-view", "nested": {"a": 1}}
    ssl = SSLConfig(augment_options=given)
    given["poses"] = "same"
    given["nested"]["a"] = 2  # the config holds its own deep copy
    assert ssl.augment_options == {"poses": "per-view", "nested": {"a": 1}}
    assert SSLConfig().options is not SSLConfig().options
    derived = RECIPES["sleep-4v-pv"].replace({"optim.epochs": 2})
    assert derived.ssl.augment_options is not RECIPES["sleep-4v-pv"].ssl.augment_options
    flat = derived.to_dict()
    flat["augment_options"]["poses"] = "same"  # what to_dict returns is the caller's
    assert derived.ssl.augment_options == {"poses": "per-view"}
    options = [id(r.ssl.augment_options) for r in RECIPES.values()]
    assert len(set(options)) == len(options)


def _with_later_settings(flat: dict) -> dict:
    """``flat`` with the settings added since (at their defaults, in their place)."""
    out = {}
    for key, value in flat.items():
        if key == "seed":
            out["fused_adam"] = False  # optim.fused_adam, before optim.seed
            out["decoder_chunk"] = None  # optim.decoder_chunk, before optim.seed
            out["cpu_block_points"] = CPU_BLOCK_POINTS  # optim.cpu_block_points, likewise
        out[key] = value
    return out


def test_old_flat_config_json_round_trips_key_for_key():
    config = TrainConfig.from_dict(OLD_FLAT)
    expected = _with_later_settings(OLD_FLAT)
    assert json.dumps(config.to_dict()) == json.dumps(expected)  # same keys, order and values
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_dict(config.nested()) == config  # the nested form loads too
    for recipe in RECIPES.values():
        assert TrainConfig.from_dict(recipe.to_dict()) == recipe
        assert list(recipe.to_dict()) == list(expected)


def test_replace_derives_a_changed_copy():
    base = get_recipe("cryonoo")
    changed = base.replace({"ssl.weight": 0.1, "model.zdim": 4}, name="mine")
    assert (changed.name, changed.ssl.weight, changed.model.zdim) == ("mine", 0.1, 4)
    assert changed.optim == base.optim and changed.ssl.head == base.ssl.head
    assert base.ssl.weight == 0.3 and base.model.zdim == 8  # the original is untouched
    assert base.replace(**{"optim.lr": 1e-3}).optim.lr == 1e-3
    section = base.replace(ssl=SSLConfig(objective=None))
    assert section.ssl == SSLConfig(objective=None) and not section.uses_ssl
    assert base.replace() == base


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ssl.bogus": 1}, r"unknown setting ssl\.bogus; ssl has: anchor_noise, augment, "),
        ({"ssl.ssl_weight": 1}, r"ssl has: .*objective.*weight"),  # flat names: files only
        ({"optim.zdim": 4}, r"optim has: batch_size, "),
        ({"nosection.lr": 1}, "unknown section 'nosection'; sections: model, optim"),
        ({"zdim": 4}, "unknown setting 'zdim'; use name, section.key"),
        ({"optim.lr": -1.0}, r"invalid training settings: \{'optim\.lr': -1\.0\}"),
    ],
)
def test_replace_refuses_unknown_keys_listing_the_section(changes, message):
    with pytest.raises(ValueError, match=message):
        get_recipe("cryonoo").replace(changes)


def test_sections_must_be_their_types():
    with pytest.raises(TypeError, match=r"TrainConfig\.ssl must be a SSLConfig"):
        TrainConfig(ssl={"weight": 0.1})  # type: ignore[arg-type]


def test_configs_pickle_and_copy():
    """Spawned workers receive configs pickled; read-only options survive the trip."""
    for recipe in (get_recipe("vicreg-25"), get_recipe("sleep-4v-pv")):
        assert pickle.loads(pickle.dumps(recipe)) == recipe
        assert copy.deepcopy(recipe) == recipe


def test_flat_names_and_architecture_fields():
    assert flat_name("ssl", "weight") == flat_name("ssl", "ssl_weight") == "ssl_weight"
    assert flat_name("ssl", "objective") == "ssl" and flat_name("model", "kind") == "model"
    with pytest.raises(ValueError, match="model has: "):
        flat_name("model", "weight")
    config = get_recipe("cryonoo")
    assert list(config.model_fields()) == list(ARCHITECTURE_FIELDS)
    assert config.model_fields()["model"] == "vae" and config.model_fields()["ssl"] == "vicreg"
    assert config.replace({"ssl.head": "32"}).model_fields()["head"] == "32"
    assert config.replace({"optim.lr": 1.0}).model_fields() == config.model_fields()


@pytest.mark.parametrize("bad", [0, -2, True])
def test_decoder_chunk_must_be_none_or_a_positive_int(bad):
    with pytest.raises((ValueError, TypeError), match="decoder_chunk"):
        TrainConfig().replace({"optim.decoder_chunk": bad})
    assert TrainConfig().replace({"optim.decoder_chunk": 16}).optim.decoder_chunk == 16


@pytest.mark.parametrize("bad", [0, -2, True])
def test_cpu_block_points_must_be_none_or_a_positive_int(bad):
    with pytest.raises((ValueError, TypeError), match="cpu_block_points"):
        TrainConfig().replace({"optim.cpu_block_points": bad})
    assert TrainConfig().replace({"optim.cpu_block_points": 8192}).optim.cpu_block_points == 8192
