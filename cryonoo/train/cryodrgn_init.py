"""Starting a run from a cryoDRGN ``train_vae`` model (``cryonoo train --init-from-cryodrgn``).

Two steps, one before the particles are opened and one once the model is built:

1. :func:`start_from_cryodrgn` adopts the cryoDRGN run's architecture and preprocessing into a
   :class:`~cryonoo.train.recipes.TrainConfig` (settings the caller fixed must agree), starts
   self-distillation at epoch 0 (the cryoDRGN run was the warm-up) unless the warm-up was given,
   and says which normalization (``norm_std``) the weights expect: open the particles with
   ``config.preprocessing()`` and that ``norm_std``.
2. :func:`load_cryodrgn_weights` copies the weights into the freshly built VAE; ``train``
   calls it when given ``init_from`` (and not resuming).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cryonoo.interop.cryodrgn_model import (
    CONFIG_KEYS,
    cryodrgn_norm_std,
    cryodrgn_weights_path,
    load_cryodrgn_run,
    model_kwargs_from_config,
    read_cryodrgn_config,
    train_fields_from_kwargs,
)
from cryonoo.io.dataset import ParticleDataset
from cryonoo.models.vae import HetVAE
from cryonoo.train.config import dotted
from cryonoo.train.recipes import TrainConfig

__all__ = ["CryoDRGNStart", "load_cryodrgn_weights", "start_from_cryodrgn"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CryoDRGNStart:
    """A run that starts from a cryoDRGN model.

    Attributes
    ----------
    config:
        The recipe with the cryoDRGN run's architecture and preprocessing (and, unless the
        warm-up was given, ``warmup_epochs = 0``).
    norm_std:
        ``dataset_args.norm[1]``: the normalization the weights expect (open the particles
        with it).
    weights:
        The checkpoint file the weights come from (``weights.pkl``, else the newest
        ``weights.N.pkl``).
    run_dir:
        The cryoDRGN training directory, as given (pass it to ``train(init_from=…)``).
    """

    config: TrainConfig
    norm_std: float
    weights: Path
    run_dir: Path


def start_from_cryodrgn(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    given: Mapping[str, Any] | None = None,
) -> CryoDRGNStart:
    """``config`` adopting the cryoDRGN run in ``run_dir`` (see the module docstring).

    ``given`` maps flat :class:`TrainConfig` field names (``config.json``'s) to the values
    the caller set explicitly (``None``: not set), e.g. the command-line flags: a given
    architecture setting must equal the checkpoint's (``ValueError`` lists those that differ)
    and a given ``warmup_epochs`` (``ssl.warmup``) is kept. Raises ``FileNotFoundError`` when
    ``run_dir`` has no ``config.yaml`` or no weights and ``ValueError`` for a configuration
    cryonoo cannot load.
    """
    root = Path(run_dir)
    given = {} if given is None else given
    cfg = read_cryodrgn_config(root)
    weights = cryodrgn_weights_path(root)
    arch = train_fields_from_kwargs(model_kwargs_from_config(cfg, root / "config.yaml"))
    differ = [
        f"--{k.replace('_', '-')} {given[k]} (checkpoint: {arch[k]}, {CONFIG_KEYS[k]})"
        for k in arch
        if given.get(k) is not None and given[k] != arch[k]
    ]
    if differ:
        raise ValueError(
            f"--init-from-cryodrgn {root}: architecture flags differ from the checkpoint: "
            f"{'; '.join(differ)}; drop them or give the checkpoint's values"
        )
    data = cfg.get("dataset_args") or {}
    changes = {
        **arch,
        "invert": bool(data.get("invert_data", True)),
        "window": bool(data.get("window", True)),
        "window_r": float(data.get("window_r", 0.85)),
    }
    if given.get("warmup_epochs") is None:
        changes["warmup_epochs"] = 0  # the cryoDRGN run was the warm-up
    norm_std = cryodrgn_norm_std(cfg, root)
    adopted = config.replace({dotted(k): v for k, v in changes.items()})
    return CryoDRGNStart(adopted, norm_std, weights, root)


def _resolved(model_config: dict[str, Any]) -> dict[str, Any]:
    """A ``HetVAE.config()`` with the defaults ``pe_dim = None`` and ``enc_mask_radius =
    None`` (both ``D // 2``) spelled out, so two configs compare by what they build."""
    half = model_config["D"] // 2
    radius = model_config["enc_mask_radius"]
    return {
        **model_config,
        "pe_dim": model_config["pe_dim"] or half,
        "enc_mask_radius": half if radius is None else radius,
    }


def load_cryodrgn_weights(
    vae: nn.Module, run_dir: str | os.PathLike[str], dataset: ParticleDataset
) -> str:
    """Copy a cryoDRGN run's weights into ``vae`` → the checkpoint path.

    Raises ``ValueError`` listing every architecture setting that differs from the checkpoint;
    warns when ``dataset`` is normalized otherwise than the cryoDRGN run's particles.
    """
    if not isinstance(vae, HetVAE):
        raise ValueError(
            f"a cryoDRGN checkpoint initializes a VAE, this recipe builds {type(vae).__name__}"
        )
    init = load_cryodrgn_run(run_dir)
    ours, theirs = _resolved(vae.config()), _resolved(init.model.config())
    keys = [k for k in CONFIG_KEYS if k != "feat_sigma"]  # the frequencies are loaded
    diff = {k: (ours[k], theirs[k]) for k in keys if ours[k] != theirs[k]}
    if diff:
        listed = "; ".join(
            f"{k}: {a!r} here, {b!r} in {CONFIG_KEYS[k]}" for k, (a, b) in diff.items()
        )
        raise ValueError(
            f"{init.run_dir}: the recipe's architecture differs from the cryoDRGN checkpoint "
            f"({listed}); use the checkpoint's settings"
        )
    vae.load_state_dict(init.model.state_dict())
    if not math.isclose(dataset.norm_std, init.norm_std, rel_tol=1e-6):
        logger.warning(
            "the data are normalized by %.6g, the cryoDRGN run used %.6g (dataset_args.norm)",
            dataset.norm_std,
            init.norm_std,
        )
    return str(init.weights)
