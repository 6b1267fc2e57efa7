"""The settings of a training run: one frozen :class:`TrainConfig` of five frozen sections.

``TrainConfig`` is a ``name`` and five parts that mirror the settings file's sections
(:mod:`cryonoo.train.config_file`)::

    config.model.zdim   config.optim.lr   config.ssl.weight   config.data.window_r
    config.model.kind   config.optim.seed config.ssl.objective config.output.checkpoint_every

A section's field names are the file's short names (``ssl.weight``, ``ssl.warmup``,
``model.kind``). Every field also has a *flat* name, the one a run's ``config.json`` uses
(``ssl_weight``, ``warmup_epochs``, ``model``): :meth:`TrainConfig.to_dict` writes the flat
mapping, key for key as it always was, and :meth:`TrainConfig.from_dict` reads it (and the
nested form) back. A changed config is derived with :meth:`TrainConfig.replace`::

    config.replace({"ssl.weight": 0.1, "model.zdim": 4}, name="mine")

Everything is immutable: the option dictionaries (``ssl.options``, ``ssl.augment_options``)
are read-only copies, so no two configs share (or can change) one dictionary.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryonoo.io.dataset import Preprocessing
from cryonoo.models.base import CPU_BLOCK_POINTS
from cryonoo.train.precision import PRECISIONS

__all__ = [
    "ALIASES",
    "ARCHITECTURE_FIELDS",
    "SECTIONS",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SSLConfig",
    "TrainConfig",
    "dotted",
    "field_type",
    "flat_name",
    "location",
    "section_keys",
]


def _flat(default: Any = dataclasses.MISSING, *, flat: str, **kw: Any) -> Any:
    """A section field whose flat (``config.json``) name is ``flat``."""
    return field(default=default, metadata={"flat": flat}, **kw)


def _options(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only deep copy of an option dictionary."""
    return MappingProxyType(copy.deepcopy(dict(value)))


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class _Section:
    """What the five sections share: validation, flat names, pickling."""

    SECTION = ""

    def _checks(self) -> dict[str, bool]:
        return {}

    def __post_init__(self) -> None:
        bad = [key for key, ok in self._checks().items() if not ok]
        if bad:
            values = {f"{self.SECTION}.{key}": getattr(self, key) for key in bad}
            raise ValueError(f"invalid training settings: {values}")

    def flat(self) -> dict[str, Any]:
        """This section's values by their flat (``config.json``) names."""
        return {
            f.metadata.get("flat", f.name): _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    def short(self) -> dict[str, Any]:
        """This section's values by their short names (plain lists and dictionaries)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        # read-only dictionaries do not pickle: rebuild from plain values (spawned workers)
        return (_rebuild, (type(self), self.short()))


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)


def _none_or_positive_int(value: Any) -> bool:
    """``value`` is ``None`` or an integer ≥ 1 (``True`` is not an integer here)."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def _plain(value: Any) -> Any:
    """``value`` as JSON has it: tuples as lists, read-only mappings as dictionaries."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    return value


@dataclass(frozen=True, eq=True)
class ModelConfig(_Section):
    """The networks (cryoDRGN's defaults) and the model's own loss."""

    SECTION = "model"
    zdim: int = 8
    encoder: str = "resid-mlp"
    decoder: str = "fourier"
    enc_layers: int = 3
    enc_dim: int = 1024
    dec_layers: int = 3
    dec_dim: int = 1024
    pe_type: str = "gaussian"
    pe_dim: int | None = None
    feat_sigma: float = 0.5
    activation: str = "relu"
    beta: float | None = None  # KL weight; None → 1/zdim
    kind: str = _flat("vae", flat="model")  # cryonoo.models.zoo.MODELS: vae | autodecoder
    latent_lr: float = 1e-2  # autodecoder only: Adam learning rate of the per-image latents
    latent_l2: float = 1e-3  # autodecoder only: weight of the |z|² prior on the latents

    def _checks(self) -> dict[str, bool]:
        return {
            "zdim": self.zdim >= 1,
            "enc_layers": self.enc_layers >= 0 and self.dec_layers >= 0,
            "latent_lr": self.latent_lr > 0,
            "latent_l2": self.latent_l2 >= 0,
        }


@dataclass(frozen=True, eq=True)
class OptimConfig(_Section):
    """The optimizer, its schedule, precision and seed."""

    SECTION = "optim"
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0  # Adam's L2 term on every parameter
    encoder_weight_decay: float = 0.0  # decoupled (AdamW) decay of the encoder's weights only
    lr_plateau: bool = True  # ReduceLROnPlateau(min, factor 0.5, patience 3) on the epoch loss
    plateau_on: str = "model"  # "model": the model's own loss; "total": + λ·SSL (the paper's)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    grad_clip: float | None = None
    skip_nonfinite: bool = False  # drop batches whose loss is NaN/Inf (counted in stats)
    precision: str = "auto"  # networks' precision: auto | fp32 | bf16 | fp16 (train.precision)
    #: Adam's fused kernel (one pass over the parameters; faster, results differ in the last
    #: digits from the default multi-tensor Adam, so every recipe keeps it off)
    fused_adam: bool = False
    #: images per decoder chunk whose activations the backward pass recomputes instead of
    #: keeping (None: keep them all): memory for one more decoder forward pass per step
    decoder_chunk: int | None = None
    #: on the CPU, decoder points per cache block: the batch is decoded a group of images at a
    #: time so each group's activations stay in the cache between layers (None: all at once;
    #: 8 192 measured best: 6–9 % faster fp32 training on one CPU thread, docs/benchmarks.md)
    cpu_block_points: int | None = CPU_BLOCK_POINTS
    seed: int = 0

    def _checks(self) -> dict[str, bool]:
        return {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "precision": self.precision in PRECISIONS,
            "plateau_on": self.plateau_on in ("model", "total"),
            "encoder_weight_decay": self.encoder_weight_decay >= 0
            and not (self.encoder_weight_decay > 0 and self.weight_decay > 0),
            "decoder_chunk": _none_or_positive_int(self.decoder_chunk),
            "cpu_block_points": _none_or_positive_int(self.cpu_block_points),
        }


@dataclass(frozen=True, eq=True)
class SSLConfig(_Section):
    """Self-distillation (``objective=None``: no SSL term, the plain model)."""

    SECTION = "ssl"
    objective: str | None = _flat("vicreg", flat="ssl")
    weight: float = _flat(0.3, flat="ssl_weight")
    head: str = "1024-1024-1024"
    warmup: int = _flat(10, flat="warmup_epochs")
    augment: str = "reproject-noise"
    noise_factors: tuple[float, ...] = (0.5, 1.0, 1.5)  # × the data's σ (see recipes' doc)
    noise_sigma: float | None = None  # in the stack's pixel units; None → estimated
    decoder_freeze: bool = False
    detach_render: bool = True
    detach_target: bool = False  # stop the SSL gradient at z0 (see SelfDistillation)
    encoder_from_ssl_only: bool = False  # after warm-up the encoder learns from SSL alone
    encoder_model_grad: float = 1.0  # after warm-up, the model loss's weight in the encoder
    teacher_momentum: float | None = None  # EMA teacher for the anchor latent (None: none)
    anchor_noise: float = 0.0  # after warm-up, the VAE's encoder sees its image + this × σ noise
    # objective kwargs (e.g. inv=25)
    options: Mapping[str, Any] = _flat(flat="ssl_options", default_factory=_empty)
    augment_options: Mapping[str, Any] = field(default_factory=_empty)  # {"pose": "random"}

    def _checks(self) -> dict[str, bool]:
        factors = tuple(self.noise_factors)
        return {
            "weight": self.weight >= 0,
            "warmup": self.warmup >= 0,
            "noise_factors": len(factors) >= 1 and min(factors) >= 0,
        }

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "noise_factors", tuple(float(f) for f in self.noise_factors))
        object.__setattr__(self, "options", _options(self.options))
        object.__setattr__(self, "augment_options", _options(self.augment_options))

    @property
    def active(self) -> bool:
        """Whether the self-distillation term is active at all."""
        return self.objective is not None and self.weight > 0


@dataclass(frozen=True, eq=True)
class DataConfig(_Section):
    """How the particles are read and preprocessed."""

    SECTION = "data"
    invert: bool = True
    window: bool = True
    window_r: float = 0.85
    lazy: bool | None = None
    num_workers: int = 0
    ctf_rescale: bool = False

    def preprocessing(self) -> Preprocessing:
        """The image preprocessing of this run (what training, encoding and evaluation apply)."""
        return Preprocessing(invert=self.invert, window=self.window, window_inner=self.window_r)


@dataclass(frozen=True, eq=True)
class OutputConfig(_Section):
    """What a run writes, and how often."""

    SECTION = "output"
    checkpoint_every: int = 1

    def _checks(self) -> dict[str, bool]:
        return {"checkpoint_every": self.checkpoint_every >= 1}


#: the section classes by section name, in the order of the settings file and config.json
SECTION_TYPES: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "ssl": SSLConfig,
    "data": DataConfig,
    "output": OutputConfig,
}

#: (section, short name) of every flat (config.json) field name
_LOCATION: dict[str, tuple[str, str]] = {
    f.metadata.get("flat", f.name): (section, f.name)
    for section, cls in SECTION_TYPES.items()
    for f in dataclasses.fields(cls)  # type: ignore[arg-type]
}

#: the flat name of every (section, short name)
_FLAT: dict[tuple[str, str], str] = {loc: flat for flat, loc in _LOCATION.items()}

#: every flat field name (but ``name``) in exactly one section
SECTIONS: dict[str, tuple[str, ...]] = {
    section: tuple(flat for flat, (s, _) in _LOCATION.items() if s == section)
    for section in SECTION_TYPES
}

#: short names that are not "the flat name without the section's prefix"
ALIASES: dict[str, dict[str, str]] = {
    section: aliases
    for section in SECTION_TYPES
    if (
        aliases := {
            short: flat
            for flat, (s, short) in _LOCATION.items()
            if s == section and short != flat and flat != f"{section}_{short}"
        }
    )
}

#: the flat fields that define the networks (a run resumes only with the same values)
ARCHITECTURE_FIELDS = (
    "model",
    "zdim",
    "encoder",
    "decoder",
    "enc_layers",
    "enc_dim",
    "dec_layers",
    "dec_dim",
    "pe_type",
    "pe_dim",
    "feat_sigma",
    "activation",
    "ssl",
    "head",
)


def section_keys(section: str) -> tuple[str, ...]:
    """The short names of ``section`` (``ValueError`` listing the sections if it is none)."""
    if section not in SECTION_TYPES:
        raise ValueError(f"unknown section {section!r}; sections: {', '.join(SECTION_TYPES)}")
    return tuple(f.name for f in dataclasses.fields(SECTION_TYPES[section]))  # type: ignore[arg-type]


def _unknown_key(section: str, key: str) -> ValueError:
    keys = ", ".join(sorted(section_keys(section)))
    return ValueError(f"unknown setting {section}.{key}; {section} has: {keys}")


def flat_name(section: str, key: str) -> str:
    """The flat field that ``section.key`` names: ``key`` is the short name, the flat name or
    the flat name without the section's prefix (``ValueError`` listing the section's keys)."""
    if key in section_keys(section):
        return _FLAT[(section, key)]
    for flat in (key, f"{section}_{key}"):
        if flat in _LOCATION and _LOCATION[flat][0] == section:
            return flat
    raise _unknown_key(section, key)


def location(flat: str) -> tuple[str, str]:
    """(section, short name) of the flat field ``flat`` (``KeyError`` if there is none)."""
    return _LOCATION[flat]


def dotted(flat: str) -> str:
    """The ``section.key`` name of flat field ``flat`` (``"ssl_weight"`` → ``"ssl.weight"``)."""
    section, short = _LOCATION[flat]
    return f"{section}.{short}"


def field_type(flat: str) -> str:
    """The annotated type of flat field ``flat``, as text (``"int | None"``)."""
    section, short = _LOCATION[flat]
    cls = SECTION_TYPES[section]
    return str(next(f.type for f in dataclasses.fields(cls) if f.name == short))  # type: ignore[arg-type]


def _legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Flat values of older ``config.json`` files in today's names."""
    data = dict(data)
    if "amp" in data:  # configs written before `precision` had amp: bool
        amp = data.pop("amp")
        data.setdefault("precision", "auto" if amp else "fp32")
    data.pop("extra", None)  # an unused field of older configs
    # configs written before `plateau_on` stepped the scheduler on the total loss
    data.setdefault("plateau_on", "total")
    return data


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved flat as ``config.json`` in the run
    directory): a ``name`` and five sections."""

    name: str = "cryonoo"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        for section, cls in SECTION_TYPES.items():
            part = getattr(self, section)
            if not isinstance(part, cls):
                got = type(part).__name__
                raise TypeError(f"TrainConfig.{section} must be a {cls.__name__}, got {got}")
            # an own copy of every section: no two configs share an option mapping
            object.__setattr__(self, section, dataclasses.replace(part))

    def __getattr__(self, name: str) -> Any:
        # only called for missing attributes: point a flat name at its section
        if name in _LOCATION:
            section, short = _LOCATION[name]
            raise AttributeError(f"TrainConfig has no {name!r}; it is config.{section}.{short}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def uses_ssl(self) -> bool:
        """Whether the self-distillation term is active at all."""
        return self.ssl.active

    def replace(self, changes: Mapping[str, Any] | None = None, /, **kw: Any) -> TrainConfig:
        """A copy with ``changes`` (and ``kw``): keys are ``name``, ``section.key`` (short
        names: ``"ssl.weight"``) or a section with a whole section object (``ssl=SSLConfig()``).
        An unknown key raises ``ValueError`` listing the keys of its section."""
        top: dict[str, Any] = {}
        inner: dict[str, dict[str, Any]] = {}
        for key, value in {**(changes or {}), **kw}.items():
            section, dot, short = key.partition(".")
            if dot:
                if short not in section_keys(section):
                    raise _unknown_key(section, short)
                inner.setdefault(section, {})[short] = value
            elif key == "name" or key in SECTION_TYPES:
                top[key] = value
            else:
                raise ValueError(
                    f"unknown setting {key!r}; use name, section.key or a section "
                    f"({', '.join(SECTION_TYPES)})"
                )
        for section, values in inner.items():
            top[section] = dataclasses.replace(top.get(section, getattr(self, section)), **values)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-serializable form (``config.json``'s ``"train"``: flat names)."""
        out: dict[str, Any] = {"name": self.name}
        for section in SECTION_TYPES:
            out.update(getattr(self, section).flat())
        return out

    def nested(self) -> dict[str, Any]:
        """The nested JSON-serializable form (``name`` and each section by short names)."""
        return {"name": self.name, **{s: getattr(self, s).short() for s in SECTION_TYPES}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` and :meth:`nested` (also older flat files; missing keys
        keep their defaults); unknown keys raise ``ValueError`` naming them."""
        parts: dict[str, dict[str, Any]] = {s: {} for s in SECTION_TYPES}
        flat = {k: v for k, v in data.items() if not (k in parts and isinstance(v, Mapping))}
        for section in parts:
            if isinstance(data.get(section), Mapping):
                for key, value in data[section].items():
                    parts[section][location(flat_name(section, str(key)))[1]] = value
        name = flat.pop("name", cls.name)
        legacy = _legacy(flat)
        unknown = sorted(set(legacy) - set(_LOCATION))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(_LOCATION)}")
        if not any(parts.values()) or flat:
            for key, value in legacy.items():
                section, short = _LOCATION[key]
                parts[section].setdefault(short, value)
        return cls(name=name, **{s: SECTION_TYPES[s](**v) for s, v in parts.items()})

    def preprocessing(self) -> Preprocessing:
        """The image preprocessing of this run (what training, encoding and evaluation apply)."""
        return self.data.preprocessing()

    def model_fields(self) -> dict[str, Any]:
        """The settings that define the network architecture (must match to resume)."""
        flat = self.to_dict()
        return {k: flat[k] for k in ARCHITECTURE_FIELDS}
