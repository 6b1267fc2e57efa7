"""Inputs of the latent-landscape analysis: loading and validating latents, labels and ``--ks``.

Every check raises :class:`ValueError` with a message naming the problem, so that the analysis can
validate all of its inputs before it writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryonoo.eval.clusters import as_latents
from cryonoo.io.cryodrgn import load_z_pkl, safe_load_pickle

__all__ = [
    "check_ks",
    "check_latents",
    "check_per_particle",
    "load_latents",
    "load_per_particle",
    "parse_ks",
]


def check_latents(z: Any, zdim: int | None = None, name: str = "z") -> np.ndarray:
    """``z`` as a finite float64 array ``(N, d)`` with ``N ≥ 2`` (and ``d == zdim`` if given).

    Raises :class:`ValueError` naming the problem (shape, NaN/Inf, too few points).
    """
    try:
        arr = as_latents(z, name)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
    if zdim is not None and arr.shape[1] != zdim:
        raise ValueError(f"{name} has latents of width {arr.shape[1]}; the model's zdim is {zdim}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} latent; the analysis needs at least 2")
    return arr


def load_latents(path: str | os.PathLike[str]) -> np.ndarray:
    """Latents ``(N, d)`` from a cryoDRGN ``z.pkl`` (mu), a ``.npy`` or a ``.txt`` file."""
    p = Path(os.fspath(path))
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".txt":
        return np.loadtxt(p, ndmin=2)
    return load_z_pkl(p)[0]


def load_per_particle(path: str | os.PathLike[str]) -> np.ndarray:
    """Per-particle values ``(N,)`` from ``.npy``, ``.txt`` (numbers, else strings) or ``.pkl``."""
    p = Path(os.fspath(path))
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".txt":
        try:
            return np.loadtxt(p, ndmin=1)
        except ValueError:
            return np.loadtxt(p, dtype=str, ndmin=1)
    obj = safe_load_pickle(p)
    if isinstance(obj, dict):
        raise ValueError(f"{p}: expected an array of per-particle values, got a dict")
    return np.asarray(obj)


def check_per_particle(values: Any, n: int, name: str, numeric: bool = False) -> np.ndarray:
    """``values`` as a 1-D array ``(n,)``; ``numeric`` also requires finite numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must hold one value per particle, shape (N,); got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but there are {n} latents")
    if numeric:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def parse_ks(text: str) -> tuple[int, ...]:
    """``"5,20"`` → ``(5, 20)``; raises :class:`ValueError` on anything but integers."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        ks = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--ks must be comma-separated integers such as 5,20; got {text!r}"
        ) from None
    if not ks:
        raise ValueError("--ks is empty; give e.g. 5,20")
    return ks


def check_ks(ks: Sequence[int], n: int) -> tuple[int, ...]:
    """Sorted distinct cluster counts, each ``2 ≤ k ≤ n`` (``n`` particles)."""
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if not 2 <= int(k) <= n:
            raise ValueError(f"k = {k} is out of range: k-means needs 2 ≤ k ≤ N = {n}")
        out.append(int(k))
    if not out:
        raise ValueError("no k given for k-means")
    return tuple(sorted(set(out)))
