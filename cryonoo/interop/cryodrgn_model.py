"""cryoDRGN 4.x training directories (``config.yaml`` + ``weights.N.pkl``) as a :class:`HetVAE`.

A ``cryodrgn train_vae`` run builds a ``HetOnlyVAE``; with the residual-MLP encoder
(``encode_mode: resid``) and a positional decoder it is the same network as our
:class:`~cryonoo.models.vae.HetVAE`, so its weights load without change of values: the same
images give the same posterior means and the same latents give the same volumes.

Config keys (``config.yaml``) → ``HetVAE`` arguments:

=================================  ===============================================================
``lattice_args.D``                 ``D`` (odd, ``box + 1``); ``extent`` must be 0.5, ``ignore_DC``
                                   true
``model_args.zdim``                ``zdim``
``model_args.qlayers`` / ``qdim``  ``enc_layers`` / ``enc_dim``; ``encode_mode`` must be ``resid``
``model_args.players`` / ``pdim``  ``dec_layers`` / ``dec_dim``
``model_args.domain``              ``decoder``: ``fourier`` → ``"fourier"`` (``hartley`` is
                                   refused: cryoDRGN's volumes fill the whole cube there)
``model_args.pe_type``             ``pe_type`` (``gaussian``, ``geom_*``, ``linear_lowf``; not
                                   ``none``, which is another decoder)
``model_args.pe_dim``              ``pe_dim`` (``null`` → ``D // 2``)
``model_args.feat_sigma``          ``feat_sigma``
``model_args.activation``          ``activation`` (``relu``, ``leaky_relu``)
``model_args.enc_mask``            ``enc_mask_radius`` (lattice pixels; −1 = whole lattice)
``dataset_args.norm``              ``[mean, std]``; the mean must be 0 (cryoDRGN's default)
``dataset_args.invert_data``,      the preprocessing the particles need
``window``, ``window_r``
=================================  ===============================================================

Parameter names (``weights.N.pkl["model_state_dict"]`` → ``HetVAE.state_dict()``):

* ``encoder.main.{i}.weight|bias`` and ``encoder.main.{i}.linear.weight|bias`` → the same names
  (our residual MLP has cryoDRGN's module layout);
* ``decoder.decoder.main.*`` → ``decoder.mlp.main.*``;
* ``decoder.rand_freqs`` ``(3·pe_dim, 3)`` → ``decoder.pe.rand_freqs`` (``gaussian`` only; the
  other encodings have no stored frequencies).

Every tensor's shape is checked against the model built from the config. ``weights.N.pkl`` is
read with ``torch.load(weights_only=True)``, so a checkpoint cannot run code. Tilt-series runs
(``encode_mode: tilt``), the ``mlp``/``conv`` encoders and ``pe_type: none`` raise ``ValueError``
naming the config key.

:func:`save_cryodrgn_run` goes the other way: it writes a cryonoo model as a cryoDRGN training
directory (``config.yaml``, ``weights.N.pkl``, ``z.N.pkl``), so ``cryodrgn analyze`` and
``cryodrgn eval_vol`` work on cryonoo's results.

This is the only ``io`` module that builds a model; it imports :mod:`cryonoo.models` when a run
is loaded, so importing it stays light.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from cryonoo.models.vae import HetVAE

__all__ = [
    "CryoDRGNRun",
    "convert_state_dict",
    "cryodrgn_checkpoints",
    "cryodrgn_norm_std",
    "cryodrgn_weights_path",
    "load_cryodrgn_run",
    "model_kwargs_from_config",
    "read_cryodrgn_config",
    "save_cryodrgn_run",
    "train_fields_from_kwargs",
]

PathLike = str | os.PathLike[str]

_PE_TYPES = ("gaussian", "geom_ft", "geom_full", "geom_lowf", "geom_nohighf", "linear_lowf")
_DOMAINS = {"fourier": "fourier"}
_ACTIVATIONS = ("relu", "leaky_relu")
_WEIGHTS = re.compile(r"^weights\.(\d+)\.pkl$")

#: cryoDRGN's ``model_args`` key behind each of our training fields (for error messages)
CONFIG_KEYS: dict[str, str] = {
    "zdim": "model_args.zdim",
    "encoder": "model_args.encode_mode",
    "decoder": "model_args.domain",
    "enc_layers": "model_args.qlayers",
    "enc_dim": "model_args.qdim",
    "dec_layers": "model_args.players",
    "dec_dim": "model_args.pdim",
    "pe_type": "model_args.pe_type",
    "pe_dim": "model_args.pe_dim",
    "feat_sigma": "model_args.feat_sigma",
    "activation": "model_args.activation",
    "enc_mask_radius": "model_args.enc_mask",
    "D": "lattice_args.D",
}


@dataclass
class CryoDRGNRun:
    """A cryoDRGN model loaded as a :class:`HetVAE`, with the data settings it was trained with.

    Attributes
    ----------
    run_dir:
        The training directory.
    weights:
        The checkpoint file that was read.
    model:
        The network in eval mode (``encode``, ``volume``, ``render`` as any cryonoo model).
    epoch:
        The checkpoint's epoch (``None`` when the file does not say).
    norm_std:
        ``dataset_args.norm[1]``: the normalization new particles must use.
    invert, window, window_r:
        ``dataset_args.invert_data``, ``window``, ``window_r``.
    config:
        The parsed ``config.yaml``.
    """

    run_dir: Path
    weights: Path
    model: HetVAE
    epoch: int | None
    norm_std: float
    invert: bool
    window: bool
    window_r: float
    config: dict[str, Any] = field(repr=False)


def read_cryodrgn_config(path: PathLike) -> dict[str, Any]:
    """Parse a cryoDRGN ``config.yaml`` (a file, or the directory holding it).

    Only plain YAML is accepted (``yaml.safe_load``); the ``lattice_args`` and ``model_args``
    sections must be present.
    """
    import yaml

    p = Path(os.fspath(path))
    if p.is_dir():
        p = p / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no cryoDRGN config.yaml; give the directory of a `cryodrgn train_vae` run"
        )
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a mapping at the top level, got {type(cfg).__name__}")
    for section in ("lattice_args", "model_args"):
        if not isinstance(cfg.get(section), dict):
            raise ValueError(
                f"{p}: no {section!r} section; this is not the config.yaml of a "
                "`cryodrgn train_vae` run (cryoDRGN ≥ 1.0)"
            )
    return cfg


def _get(section: dict[str, Any], key: str, where: str, source: object) -> Any:
    if key not in section:
        raise ValueError(f"{source}: {where}.{key} is missing; expected a cryoDRGN 4.x config")
    return section[key]


def _int(value: Any, key: str, source: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{source}: {key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def model_kwargs_from_config(cfg: dict[str, Any], source: object = "config.yaml") -> dict[str, Any]:
    """``HetVAE`` keyword arguments for a parsed cryoDRGN config (see the module docstring).

    Raises ``ValueError`` naming the config key of any architecture cryonoo does not have.
    """
    lat, m = cfg["lattice_args"], cfg["model_args"]
    D = _int(_get(lat, "D", "lattice_args", source), "lattice_args.D", source, 3)
    if D % 2 == 0:
        raise ValueError(f"{source}: lattice_args.D must be odd (box + 1), got {D}")
    extent = float(lat.get("extent", 0.5))
    if not math.isclose(extent, 0.5):
        raise ValueError(
            f"{source}: lattice_args.extent = {extent}; only cryoDRGN's training lattice "
            "(extent 0.5) is supported"
        )
    if lat.get("ignore_DC", True) is not True:
        raise ValueError(f"{source}: lattice_args.ignore_DC must be true (the DC-free mask)")
    mode = _get(m, "encode_mode", "model_args", source)
    if mode == "tilt" or "ntilts" in (cfg.get("dataset_args") or {}):
        raise ValueError(
            f"{source}: model_args.encode_mode = {mode!r} with dataset_args.ntilts: tilt-series "
            "models (cryodrgn train_vae --encode-mode tilt) are not supported"
        )
    if mode != "resid":
        raise ValueError(
            f"{source}: model_args.encode_mode = {mode!r}; only the residual MLP encoder "
            "('resid', cryoDRGN's default) is supported"
        )
    domain = _get(m, "domain", "model_args", source)
    if domain not in _DOMAINS:
        raise ValueError(
            f"{source}: model_args.domain = {domain!r}; only 'fourier' (cryoDRGN's default) is "
            "supported (for 'hartley' cryoDRGN evaluates volumes on the whole cube, cryonoo "
            "inside the sphere |k| ≤ 0.5, so the maps would differ)"
        )
    pe_type = _get(m, "pe_type", "model_args", source)
    if pe_type not in _PE_TYPES:
        raise ValueError(
            f"{source}: model_args.pe_type = {pe_type!r}; supported positional encodings: "
            f"{', '.join(_PE_TYPES)} ('none' builds cryoDRGN's FTSliceDecoder, which cryonoo "
            "does not have)"
        )
    activation = _get(m, "activation", "model_args", source)
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"{source}: model_args.activation = {activation!r}; supported: {list(_ACTIVATIONS)}"
        )
    pe_dim = m.get("pe_dim")
    if pe_dim is not None:
        pe_dim = _int(pe_dim, "model_args.pe_dim", source, 1)
    enc_mask = _int(_get(m, "enc_mask", "model_args", source), "model_args.enc_mask", source, -1)
    if enc_mask == 0:
        raise ValueError(f"{source}: model_args.enc_mask must be > 0 or -1 (no mask), got 0")
    feat_sigma = m.get("feat_sigma")
    feat_sigma = 0.5 if feat_sigma is None else float(feat_sigma)
    return {
        "D": D,
        "zdim": _int(_get(m, "zdim", "model_args", source), "model_args.zdim", source, 1),
        "encoder": "resid-mlp",
        "decoder": _DOMAINS[domain],
        "enc_layers": _int(_get(m, "qlayers", "model_args", source), "qlayers", source, 0),
        "enc_dim": _int(_get(m, "qdim", "model_args", source), "qdim", source, 1),
        "dec_layers": _int(_get(m, "players", "model_args", source), "players", source, 0),
        "dec_dim": _int(_get(m, "pdim", "model_args", source), "pdim", source, 1),
        "pe_type": pe_type,
        "pe_dim": pe_dim,
        "feat_sigma": feat_sigma,
        "activation": activation,
        "enc_mask_radius": enc_mask,
    }


def train_fields_from_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``TrainConfig`` architecture fields of ``HetVAE`` keyword arguments."""
    keys = (
        "zdim", "encoder", "decoder", "enc_layers", "enc_dim", "dec_layers", "dec_dim",
        "pe_type", "pe_dim", "feat_sigma", "activation",
    )  # fmt: skip
    return {k: kwargs[k] for k in keys}


def cryodrgn_norm_std(cfg: dict[str, Any], source: object = "config.yaml") -> float:
    """``dataset_args.norm[1]``, checking that the mean is 0 (cryoDRGN's estimate)."""
    norm = (cfg.get("dataset_args") or {}).get("norm")
    if not (isinstance(norm, list | tuple) and len(norm) == 2):
        raise ValueError(f"{source}: dataset_args.norm must be [mean, std], got {norm!r}")
    mean, std = float(norm[0]), float(norm[1])
    if mean != 0.0 or not (math.isfinite(std) and std > 0):
        raise ValueError(
            f"{source}: dataset_args.norm = {list(norm)}; cryonoo needs mean 0 and std > 0 "
            "(cryoDRGN's estimate; a run trained with --norm MEAN STD cannot be loaded)"
        )
    return std


#: (cryoDRGN name, cryonoo name); a name ending in "." maps every name with that prefix
_RENAMES = (("decoder.rand_freqs", "decoder.pe.rand_freqs"), ("decoder.decoder.", "decoder.mlp."))


def _rename(key: str, *, to_cryonoo: bool = True) -> str:
    """A parameter name mapped through :data:`_RENAMES` (cryoDRGN → cryonoo, or back)."""
    for theirs, ours in _RENAMES:
        src, dst = (theirs, ours) if to_cryonoo else (ours, theirs)
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src) :]
    return key


def convert_state_dict(
    state: dict[str, Tensor], model: HetVAE, source: object = "weights.pkl"
) -> dict[str, Tensor]:
    """cryoDRGN ``model_state_dict`` → a state dict for ``model`` (names mapped, shapes checked)."""
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = _rename(key)
        if name not in target:
            raise ValueError(
                f"{source}: parameter {key!r} has no counterpart in cryonoo's HetVAE "
                f"(expected names like {next(iter(target))!r}); is this a HetOnlyVAE checkpoint?"
            )
        if tuple(value.shape) != tuple(target[name].shape):
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)} but config.yaml describes "
                f"{tuple(target[name].shape)}; the weights do not belong to this config.yaml"
            )
        out[name] = value.detach().to(target[name].dtype)
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"{source}: parameters missing from the checkpoint: {missing}")
    return out


def cryodrgn_checkpoints(run_dir: PathLike) -> list[int]:
    """Epochs with a ``weights.N.pkl`` in ``run_dir``, ascending."""
    root = Path(os.fspath(run_dir))
    found = (_WEIGHTS.match(p.name) for p in root.iterdir()) if root.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def cryodrgn_weights_path(run_dir: PathLike, epoch: int | None = None) -> Path:
    """The checkpoint file of a cryoDRGN run: ``weights.{epoch}.pkl``; ``None``/``-1`` →
    ``weights.pkl`` (the final model), else the newest ``weights.N.pkl``.

    ``FileNotFoundError`` names the directory (and its checkpoints) when there is none."""
    root = Path(os.fspath(run_dir))
    if epoch is None or epoch == -1:
        if (root / "weights.pkl").is_file():
            return root / "weights.pkl"
        epochs = cryodrgn_checkpoints(root)
        if not epochs:
            raise FileNotFoundError(f"{root}: no weights.pkl or weights.N.pkl (cryoDRGN runs)")
        return root / f"weights.{epochs[-1]}.pkl"
    path = root / f"weights.{epoch}.pkl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; checkpoints in {root}: {cryodrgn_checkpoints(root)}"
        )
    return path


def _read_weights(path: Path) -> tuple[dict[str, Tensor], int | None]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(
            f"{path}: cannot be read as a plain tensor checkpoint (torch.load with "
            f"weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        raise ValueError(
            f"{path}: expected cryoDRGN's checkpoint dict with 'model_state_dict' "
            "(written by `cryodrgn train_vae`)"
        )
    epoch = ckpt.get("epoch")
    return ckpt["model_state_dict"], (int(epoch) if isinstance(epoch, int) else None)


def load_cryodrgn_run(
    run_dir: PathLike,
    epoch: int | None = None,
    device: str | torch.device = "cpu",
    weights: PathLike | None = None,
) -> CryoDRGNRun:
    """Load a cryoDRGN ``train_vae`` directory as a :class:`CryoDRGNRun`.

    ``epoch``: ``weights.{epoch}.pkl``; ``None``/``-1`` → ``weights.pkl`` (the final model),
    else the newest ``weights.N.pkl``. ``weights`` names the checkpoint file directly.
    """
    root = Path(os.fspath(run_dir))
    cfg_path = root / "config.yaml" if root.is_dir() else root
    cfg = read_cryodrgn_config(cfg_path)
    root = cfg_path.parent
    kwargs = model_kwargs_from_config(cfg, cfg_path)
    data = cfg.get("dataset_args") or {}
    std = cryodrgn_norm_std(cfg, cfg_path)
    path = Path(os.fspath(weights)) if weights is not None else cryodrgn_weights_path(root, epoch)
    state, saved_epoch = _read_weights(path)
    from cryonoo.models.vae import HetVAE  # the one io module that builds a model

    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the RNG be
        model = HetVAE(**kwargs)
    model.load_state_dict(convert_state_dict(state, model, path))
    model.to(device).eval()
    return CryoDRGNRun(
        run_dir=root,
        weights=path,
        model=model,
        epoch=saved_epoch,
        norm_std=std,
        invert=bool(data.get("invert_data", True)),
        window=bool(data.get("window", True)),
        window_r=float(data.get("window_r", 0.85)),
        config=cfg,
    )


def save_cryodrgn_run(
    model: HetVAE,
    out_dir: PathLike,
    *,
    epoch: int,
    norm_std: float,
    z: Tensor | Any | None = None,
    logvar: Tensor | Any | None = None,
    dataset_args: dict[str, Any] | None = None,
    history: Sequence[Mapping[str, float]] = (),
) -> Path:
    """Write ``model`` as a cryoDRGN 4.x training directory → ``out_dir``.

    Files: ``config.yaml`` (``lattice_args``, ``model_args``, ``dataset_args`` with
    ``norm = [0, norm_std]``), ``weights.{epoch}.pkl`` (``model_state_dict`` with cryoDRGN's
    parameter names, an empty ``optimizer_state_dict``), ``run.log`` (one cryoDRGN-style
    ``=====> Epoch`` line per ``history`` record ``{"loss", "recon", "kld"}``, for ``analyze``'s
    learning curve) and, when ``z`` ``(N, zdim)`` is given, ``z.{epoch}.pkl``. ``dataset_args``
    adds or overrides keys such as ``particles``, ``ctf``, ``poses``, ``invert_data``,
    ``window``, ``window_r`` (``cryodrgn analyze`` reads the pixel size from ``ctf``). Only
    architectures that cryoDRGN's ``HetOnlyVAE`` has are written.
    """
    from cryonoo.io.cryodrgn import save_z_pkl

    cfg = model.config()
    if cfg["encoder"] != "resid-mlp" or cfg["decoder"] != "fourier":
        raise ValueError(
            f"cryoDRGN's HetOnlyVAE needs the 'resid-mlp' encoder and the 'fourier' decoder, "
            f"this model has {cfg['encoder']!r} and {cfg['decoder']!r}"
        )
    if cfg["pe_type"] not in _PE_TYPES or cfg["activation"] not in _ACTIVATIONS:
        raise ValueError(
            f"cryoDRGN has no pe_type {cfg['pe_type']!r} / activation {cfg['activation']!r} "
            f"(pe types: {', '.join(_PE_TYPES)}; activations: {', '.join(_ACTIVATIONS)})"
        )
    D = cfg["D"]
    radius = D // 2 if cfg["enc_mask_radius"] is None else cfg["enc_mask_radius"]
    if radius != -1 and float(radius) != int(radius):
        raise ValueError(f"cryoDRGN's enc_mask is an integer radius, got {radius!r}")
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "particles": None, "norm": [0.0, float(norm_std)], "invert_data": True, "ind": None,
        "keepreal": False, "window": True, "window_r": 0.85, "datadir": None, "ctf": None,
        "poses": None, "do_pose_sgd": False, **(dataset_args or {}),
    }  # fmt: skip
    config = {
        "dataset_args": data,
        "lattice_args": {"D": D, "extent": 0.5, "ignore_DC": True},
        "model_args": {
            "qlayers": cfg["enc_layers"], "qdim": cfg["enc_dim"], "players": cfg["dec_layers"],
            "pdim": cfg["dec_dim"], "zdim": cfg["zdim"], "encode_mode": "resid",
            "enc_mask": int(radius), "pe_type": cfg["pe_type"], "pe_dim": cfg["pe_dim"],
            "feat_sigma": cfg["feat_sigma"], "domain": "fourier",
            "activation": cfg["activation"], "tilt_params": {},
        },
        "seed": cfg["seed"],
        "cmd": ["cryonoo", "export"],
    }  # fmt: skip
    import yaml

    from cryonoo.io.atomic import atomic_write

    with atomic_write(out / "config.yaml", "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=True)
    state = {_rename(k, to_cryonoo=False): v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"epoch": epoch, "model_state_dict": state, "optimizer_state_dict": {}}
    with atomic_write(out / f"weights.{epoch}.pkl") as fh:
        torch.save(ckpt, fh)
    if z is not None:
        save_z_pkl(out / f"z.{epoch}.pkl", z, logvar)
    lines = ["# exported by cryonoo; per-epoch losses of its training\n"]
    for i, rec in enumerate(history, start=1):
        lines.append(
            f"# =====> Epoch: {i} Average gen loss = {rec.get('recon', rec['loss']):.6f}, "
            f"KLD = {rec.get('kld', 0.0):.6f}, total loss = {rec['loss']:.6f}; "
            "Finished in 0:00:00\n"
        )
    with atomic_write(out / "run.log", "w") as fh:
        fh.write("".join(lines))
    return out
