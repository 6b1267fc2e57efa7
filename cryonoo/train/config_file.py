"""Training settings as a nested file and ``section.key=value`` overrides.

A run's settings are one frozen :class:`~cryonoo.train.config.TrainConfig`: a name and five
frozen sections (``config.model``, ``config.optim``, ``config.ssl``, ``config.data``,
``config.output``), saved flat as the run's ``config.json``. A settings file has the same five
sections::

    recipe: sleep-4v-pv        # the recipe to start from (default: cryonoo)
    name: my-run
    model:  {zdim: 8, enc_dim: 256, dec_dim: 256}
    optim:  {epochs: 20, batch_size: 16, lr_plateau: false, precision: bf16}
    ssl:    {weight: 0.1, warmup: 5, noise_factors: [1, 1, 1, 1]}
    data:   {window_r: 0.85}
    output: {checkpoint_every: 5}

Inside a section a key is the canonical short name, the section's field name (``ssl.weight``,
``ssl.objective``, ``ssl.warmup``, ``model.kind``: what ``config.ssl.weight`` and
:meth:`TrainConfig.replace` use), or, accepted as an alias, the flat ``config.json`` name
(``ssl.ssl_weight``, ``ssl.warmup_epochs``, ``model.model``).
:data:`ALIASES` lists the short names that are not the flat name without the section's prefix
(``ssl.objective`` → ``ssl``, ``ssl.warmup`` → ``warmup_epochs``). Top-level flat field names
are accepted too, and so is a run's own ``config.json`` (its ``"train"`` part), so a past run's
settings can be re-used as they are. :func:`apply_overrides` parses ``section.key=value``
strings by the field's type (``true``/``false``, ``none``, numbers, ``0.5,1,1.5`` for tuples,
JSON for dictionaries).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryonoo.train.config import (
    ALIASES,
    SECTIONS,
    TrainConfig,
    dotted,
    field_type,
    flat_name,
    location,
)
from cryonoo.train.recipes import RECIPES, get_recipe

__all__ = [
    "ALIASES",
    "SECTIONS",
    "add_set_argument",
    "apply_overrides",
    "coerce",
    "config_from_mapping",
    "describe_recipe",
    "dotted",
    "load_config",
    "nested_config",
    "parse_value",
    "resolve_config",
]


def _is_flat(name: str) -> bool:
    try:
        location(name)
    except KeyError:
        return False
    return True


def _flatten(data: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(base recipe, flat field values) of a nested or flat mapping."""
    data = dict(data)
    if isinstance(data.get("train"), Mapping):  # a run's config.json
        data = dict(data["train"])
    recipe = data.pop("recipe", None)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for inner, inner_value in value.items():
                flat[flat_name(key, str(inner))] = inner_value
        elif key == "name" or _is_flat(key):
            flat[key] = value
        else:
            raise ValueError(
                f"unknown setting {key!r}; top-level keys: recipe, name, "
                f"{', '.join(SECTIONS)} (or a flat TrainConfig field)"
            )
    return (None if recipe is None else str(recipe)), flat


def _with_flat(config: TrainConfig, flat: Mapping[str, Any]) -> TrainConfig:
    """``config`` with flat field values, each coerced to its field's type."""
    changes = {
        (key if key == "name" else dotted(key)): coerce(key, value) for key, value in flat.items()
    }
    return config.replace(changes)


def config_from_mapping(data: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (or the mapping's ``recipe``, or ``cryonoo``) with the mapping's values."""
    recipe, flat = _flatten(data)
    if base is None:
        base = get_recipe(recipe or "cryonoo")
    return _with_flat(base, flat)


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a ``.yaml``/``.yml``/``.json`` file (nested, flat or a run's)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return config_from_mapping(data, base)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """A repeatable ``--set KEY=VALUE`` option (into ``args.overrides``, a list of strings for
    :func:`apply_overrides`) on an argparse ``parser``, as the benchmark scripts take it."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def apply_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """``config`` with each ``section.key=value`` (or ``field=value``) string applied."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        section, dot, inner = key.strip().partition(".")
        name = flat_name(section, inner) if dot else section
        if name != "name" and not _is_flat(name):
            sections = ", ".join(SECTIONS)
            raise ValueError(f"unknown setting {key!r}; use section.key (sections: {sections})")
        values[name] = parse_value(text.strip())
    return _with_flat(config, values)


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, objects), ``true``/``false``
    and ``none``/``null`` in any case, else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null", "~"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(name: str, value: Any) -> Any:
    """``value`` as the type of flat field ``name`` (``ValueError`` when it cannot be)."""
    kind = "str" if name == "name" else field_type(name)
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} cannot be none")
    base = kind.replace("| None", "").strip()
    try:
        return _CONVERTERS[base](value)
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"{name}: expected {kind}, got {value!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _to_floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    return tuple(_to_float(v) for v in value)


def _to_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(value)
    return dict(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(value)
    return str(value)


_CONVERTERS = {
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "tuple[float, ...]": _to_floats,
    "Mapping[str, Any]": _to_mapping,
}


def nested_config(config: TrainConfig, recipe: str | None = None) -> dict[str, Any]:
    """``config`` as the nested mapping :func:`config_from_mapping` reads (short keys; only the
    values that differ from ``recipe``'s when one is given, so a file says what it changes)."""
    nested = config.nested()
    base = RECIPES[recipe].nested() if recipe is not None else None
    out: dict[str, Any] = {}
    if recipe is not None:
        out["recipe"] = recipe
    if base is None or nested["name"] != base["name"]:
        out["name"] = nested["name"]
    for section in SECTIONS:
        values = nested[section]
        part = {k: v for k, v in values.items() if base is None or v != base[section][k]}
        if part:
            out[section] = part
    return out


def resolve_config(
    recipe: str | None = None,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The settings of a run, each source over the one before: the recipe (``recipe``, else the
    file's ``recipe``, else ``cryonoo``), the file at ``path``, the ``section.key=value``
    ``overrides``, then ``flags`` (field → value; ``None`` values are not given)."""
    base = get_recipe(recipe) if recipe is not None else None
    if path is not None:
        config = load_config(path, base)
    else:
        config = base if base is not None else get_recipe("cryonoo")
    config = apply_overrides(config, overrides)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    return _with_flat(config, given)


def describe_recipe(name: str) -> str:
    """One line: recipe ``name`` as the recipe defined before it that it differs least from,
    plus what it changes (``sleep-8v-pv + ssl.anchor_noise=0.7``); the first recipe
    (``cryonoo``, the paper's method) is described as the reference."""
    names = list(RECIPES)
    earlier = names[: names.index(name)] if name in names else names
    if not earlier:
        return "the reference recipe (the paper's method); the others say what they change"
    flat = get_recipe(name).to_dict()

    def changes(base: str) -> int:
        other = RECIPES[base].to_dict()
        return sum(flat[k] != other[k] for k in flat if k != "name")

    base = min(earlier, key=changes)
    nested = nested_config(get_recipe(name), base)
    parts = [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in nested.items()
        if isinstance(values, dict)
        for key, value in values.items()
    ]
    return f"{base} + {', '.join(parts)}" if parts else f"the settings of {base}"
