"""Settings files and `section.key=value` overrides map onto TrainConfig, and fail clearly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from cryonoo.train.config_file import (
    SECTIONS,
    apply_overrides,
    config_from_mapping,
    load_config,
    nested_config,
    resolve_config,
)
from cryonoo.train.recipes import RECIPES, TrainConfig, get_recipe


def test_every_field_has_exactly_one_section():
    placed = [name for members in SECTIONS.values() for name in members]
    assert len(placed) == len(set(placed))
    assert set(placed) == set(TrainConfig().to_dict()) - {"name"}
    for section, members in SECTIONS.items():  # a section of the file is a part of the config
        part = getattr(TrainConfig(), section)
        assert len(dataclasses.fields(part)) == len(members)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_round_trips_through_its_file_form(name):
    recipe = get_recipe(name)
    assert config_from_mapping(yaml.safe_load(yaml.safe_dump(nested_config(recipe)))) == recipe
    changed = recipe.replace({"optim.epochs": 3, "ssl.noise_factors": (1.0, 2.0)})
    diff = nested_config(changed, name)
    assert diff["recipe"] == name and diff["optim"] == {"epochs": 3}
    assert config_from_mapping(json.loads(json.dumps(diff))) == changed


def test_overrides_parse_by_field_type():
    config = apply_overrides(
        get_recipe("cryonoo"),
        [
            "ssl.weight=0.1",
            "optim.lr_plateau=FALSE",
            "ssl.objective=simsiam",
            "ssl.warmup=2",
            "ssl.noise_factors=1,1.5",
            "ssl.noise_sigma=none",
            'ssl.options={"inv": 25}',
            "model.kind=autodecoder",
            "epochs=4",
        ],
    )
    ssl = config.ssl
    assert (ssl.weight, config.optim.lr_plateau, ssl.objective) == (0.1, False, "simsiam")
    assert (ssl.warmup, ssl.noise_factors) == (2, (1.0, 1.5))
    assert ssl.noise_sigma is None and ssl.options == {"inv": 25}
    assert (config.model.kind, config.optim.epochs) == ("autodecoder", 4)


def test_overrides_accept_flat_names_as_aliases():
    """Inside a section the flat config.json name works too (``ssl.ssl_weight``)."""
    aliases = [
        "ssl.ssl_weight=0.2",
        "ssl.warmup_epochs=3",
        "model.model=autodecoder",
        "ssl.ssl=barlow",
    ]
    config = apply_overrides(get_recipe("cryonoo"), aliases)
    canonical = ["ssl.weight=0.2", "ssl.warmup=3", "model.kind=autodecoder", "ssl.objective=barlow"]
    assert config == apply_overrides(get_recipe("cryonoo"), canonical)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("ssl.bogus=1", "ssl has: "),
        ("nosection.lr=1", "sections: model"),
        ("optim.epochs=1.5", "epochs: expected int"),
        ("optim.epochs=none", "cannot be none"),
        ("optim.lr_plateau=maybe", "expected bool"),
        ("optim.epochs", "section.key=value"),
        ("optim.lr=-1", "invalid training settings"),
        ("bogus=1", "unknown setting 'bogus'"),
    ],
)
def test_bad_overrides_name_what_is_wrong(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_recipe("cryonoo"), [item])


def test_load_config_yaml_json_and_a_runs_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: sleep-4v-pv\nname: mine\noptim: {epochs: 7}\nssl: {weight: 0.2}\n")
    config = load_config(path)
    assert config == get_recipe("sleep-4v-pv").replace(
        {"optim.epochs": 7, "ssl.weight": 0.2}, name="mine"
    )
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"recipe": "cryodrgn", "epochs": 2}))
    assert load_config(flat) == get_recipe("cryodrgn").replace({"optim.epochs": 2})
    saved = tmp_path / "config.json"  # what a run writes: {"train": {...every field...}, ...}
    saved.write_text(json.dumps({"train": config.to_dict(), "data": {"box": 16}}))
    assert load_config(saved) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("optim: {epochs: [\n", "not valid yaml"),
        ("optim: {warp: 9}\n", "optim has: "),
        ("recipe: nope\n", "unknown recipe 'nope'"),
        ("colour: blue\n", "top-level keys"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolve_config_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: cryodrgn\noptim: {epochs: 7, lr: 0.001}\nssl: {weight: 0.5}\n")
    config = resolve_config(None, path, ["optim.lr=0.002"], {"lr": None, "epochs": 3})
    got = (config.name, config.optim.epochs, config.optim.lr, config.ssl.weight)
    assert got == ("cryodrgn", 3, 0.002, 0.5)
    other = resolve_config("sleep-4v-pv", path)  # --recipe over the file's recipe
    assert other.name == "sleep-4v-pv" and other.optim.epochs == 7
    assert resolve_config() == get_recipe("cryonoo")


def test_describe_recipe_names_its_nearest_parent():
    from cryonoo.train.config_file import describe_recipe

    assert describe_recipe("sleep-8v-pv-an") == "sleep-8v-pv + ssl.anchor_noise=0.7"
    assert describe_recipe("simsiam") == 'cryonoo + ssl.objective="simsiam"'
    assert describe_recipe("cryonoo").startswith("the reference recipe")


def test_derived_recipes_do_not_share_option_dicts():
    base = get_recipe("sleep-4v-pv")
    derived = base.replace(name="other")
    assert derived.ssl.augment_options == base.ssl.augment_options
    assert derived.ssl.augment_options is not base.ssl.augment_options
    with pytest.raises(TypeError):  # read-only: no caller can change a recipe's options
        derived.ssl.augment_options["poses"] = "same"  # type: ignore[index]
    assert get_recipe("sleep-4v-pv").ssl.augment_options == {"poses": "per-view"}


def test_benchmark_scale_and_settings_reach_every_recipe():
    """The benchmark's scale goes through the settings file's sections, then its --set
    settings: every recipe keeps its own options and takes both."""
    from cryonoo.experiments.benchmark import BenchmarkConfig, benchmark_recipe

    config = BenchmarkConfig(epochs=6, batch_size=16, enc_dim=32, settings=("optim.lr=3e-4",))
    for name, recipe in RECIPES.items():
        scaled = benchmark_recipe(name, config, seed=5)
        expected = recipe.replace(
            {
                "optim.epochs": 6,
                "ssl.warmup": config.warmup,
                "model.zdim": config.zdim,
                "model.enc_layers": config.enc_layers,
                "model.enc_dim": 32,
                "model.dec_layers": config.dec_layers,
                "model.dec_dim": config.dec_dim,
                "optim.batch_size": 16,
                "optim.precision": config.precision,
                "optim.seed": 5,
                "output.checkpoint_every": 6,
                "optim.lr": 3e-4,
            }
        )
        assert scaled == expected, name


def test_particle_source_index_and_description(tmp_path):
    """A dataset directory alone trains on its 'train' split, 'all' on every particle; a given
    index passes through; the run records the source with its resolved index."""
    from cryonoo.train.plan import ParticleSource

    data = tmp_path / "data"
    data.mkdir()
    (data / "particles.mrcs").write_bytes(b"")
    stack = tmp_path / "stack.mrcs"
    assert ParticleSource(data).index() == "train"
    assert ParticleSource(data, ind="all").index() is None
    assert ParticleSource(data, ind="test").index() == "test"
    assert ParticleSource(stack).index() is None
    assert ParticleSource(stack, ind="keep.pkl").index() == "keep.pkl"
    source = ParticleSource(stack, tmp_path / "poses.pkl", None, "keep.pkl")
    assert source.describe() == {
        "particles": str(stack),
        "poses": str(tmp_path / "poses.pkl"),
        "ctf": None,
        "ind": "keep.pkl",
    }


def test_add_set_argument_collects_overrides_for_apply_overrides():
    import argparse

    from cryonoo.train.config_file import add_set_argument, apply_overrides
    from cryonoo.train.recipes import get_recipe

    p = argparse.ArgumentParser()
    add_set_argument(p, "a setting")
    args = p.parse_args(["--set", "model.zdim=4", "--set", "optim.lr=0.01"])
    assert args.overrides == ["model.zdim=4", "optim.lr=0.01"]
    assert p.parse_args([]).overrides == []
    config = apply_overrides(get_recipe("cryodrgn"), args.overrides)
    assert config.model.zdim == 4 and config.optim.lr == 0.01
