"""cryoDRGN's pickle files (poses, CTF, latents, indices), read with a restricted unpickler.

Conventions
-----------
* Pickles are never trusted: :func:`safe_load_pickle` resolves only the globals numpy needs to
  rebuild arrays and scalars (``_reconstruct``, ``_frombuffer``, ``scalar``, ``ndarray``,
  ``dtype``, and ``_codecs.encode`` for protocol 0–2 byte strings); anything else raises
  :class:`UnsafePickleError` *before* it is called. Tuples, lists, dicts, str/bytes, numbers and
  ``None`` need no globals.
* ``pose.pkl`` = ``(rot (N, 3, 3), trans (N, 2))`` with translations in **fractions of the box**
  (cryoDRGN multiplies by ``D``); a bare ``rot`` array or two files (rot, trans) are also accepted.
  Written with pickle protocol 4, keeping the arrays' float dtype (cryoDRGN's own sample poses
  store float32 rotations and float64 translations; its parsers write float64).
* ``ctf.pkl`` = ``(N, 9)`` float32 ``[D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]``.
* ``z.pkl`` = two consecutive pickles in one file, ``mu (N, zdim)`` then ``logvar (N, zdim)``,
  float32; a plain ``pickle.load`` returns ``mu``.
* Index files (``--ind``) hold 0-based int arrays: ``.pkl``, ``.npy`` or ``.txt``; a split file
  is addressed as ``split.npz:train``.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from cryonoo.io.atomic import atomic_write
from cryonoo.io.mrc import ParticleFileError

__all__ = [
    "UnsafePickleError",
    "load_ctf_pkl",
    "load_indices",
    "load_poses",
    "load_split",
    "load_z_pkl",
    "safe_load_pickle",
    "save_ctf_pkl",
    "save_poses",
    "save_z_pkl",
]

PathLike = str | os.PathLike[str]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referred to a global outside the allowed numpy/builtin set."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy ≥ 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: object) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python-2 numpy pickles
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name} (only numpy arrays, "
                "numbers, strings, tuples, lists and dicts are accepted); if you trust this "
                "file, convert it to .npy/.npz"
            ) from None


def _load_all(f: IO[bytes], source: object, limit: int) -> list[Any]:
    objs = []
    for _ in range(limit):
        try:
            objs.append(_SafeUnpickler(f, source).load())
        except EOFError:
            break
    return objs


def safe_load_pickle(file_or_path: PathLike | IO[bytes]) -> Any:
    """The first object of a pickle file, allowing only numpy arrays and plain containers."""
    if hasattr(file_or_path, "read"):
        objs = _load_all(file_or_path, getattr(file_or_path, "name", "<stream>"), 1)  # type: ignore[arg-type]
        source = getattr(file_or_path, "name", "<stream>")
    else:
        source = Path(os.fspath(file_or_path))  # type: ignore[arg-type]
        with open(source, "rb") as f:
            objs = _load_all(f, source, 1)
    if not objs:
        raise ParticleFileError(f"{source}: empty file, no pickled object")
    return objs[0]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _float(a: np.ndarray) -> np.ndarray:
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _check_count(n_found: int, n: int | None, what: str, source: object) -> None:
    if n is not None and n_found != n:
        raise ParticleFileError(
            f"{source}: {n_found} {what} but {n} particles; the file must describe the same "
            "particles as the image stack (apply the same --ind selection to both)"
        )


def _check_poses(rot: Any, trans: Any, source: object, n: int | None) -> tuple:
    rot = _float(_to_numpy(rot))
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ParticleFileError(f"{source}: rotations must have shape (N, 3, 3), got {rot.shape}")
    if not np.isfinite(rot).all():
        raise ParticleFileError(f"{source}: rotations contain NaN or Inf")
    eye_err = np.abs(np.swapaxes(rot, 1, 2) @ rot - np.eye(3)).max(initial=0.0)
    if eye_err > 1e-3:
        raise ParticleFileError(
            f"{source}: rotations are not orthonormal (max |RᵀR − I| = {eye_err:.3g})"
        )
    _check_count(len(rot), n, "rotations", source)
    if trans is not None:
        trans = _float(_to_numpy(trans))
        if trans.shape != (len(rot), 2):
            raise ParticleFileError(
                f"{source}: translations must have shape ({len(rot)}, 2) to match {len(rot)} "
                f"rotations, got {trans.shape}"
            )
        big = float(np.abs(trans).max(initial=0.0))
        if not big <= 1:
            raise ParticleFileError(
                f"{source}: old pose format detected: translations must be fractions of the box "
                f"(|trans| ≤ 1) but reach {big:g}; divide pixel shifts by the box size D"
            )
    return rot, trans


def load_poses(
    path_or_paths: PathLike | Sequence[PathLike], n: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``rots (N, 3, 3)`` and ``trans (N, 2)`` (box fractions, or None if absent).

    ``path_or_paths``: one ``pose.pkl`` holding ``(rot, trans)`` or a bare ``rot`` array, or two
    files ``(rot.pkl, trans.pkl)``. ``n`` = expected number of particles.
    """
    if isinstance(path_or_paths, (list, tuple)):
        if len(path_or_paths) == 1:
            return load_poses(path_or_paths[0], n)
        if len(path_or_paths) != 2:
            raise ValueError(f"give one pose file or two (rot, trans), got {len(path_or_paths)}")
        rot_path, trans_path = (Path(os.fspath(p)) for p in path_or_paths)
        rot, trans = safe_load_pickle(rot_path), safe_load_pickle(trans_path)
        return _check_poses(rot, trans, f"{rot_path} + {trans_path}", n)
    path = Path(os.fspath(path_or_paths))
    obj = safe_load_pickle(path)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _check_poses(obj[0], obj[1], path, n)
    if isinstance(obj, np.ndarray):
        return _check_poses(obj, None, path, n)
    raise ParticleFileError(
        f"{path}: expected a (rot, trans) tuple or a rot array, got {type(obj).__name__}"
    )


def _dump(path: PathLike, *objs: Any) -> None:
    with atomic_write(path) as f:
        for obj in objs:
            pickle.dump(obj, f, protocol=4)


def save_poses(path: PathLike, rots: Any, trans: Any | None = None) -> None:
    """Write ``(rots, trans)`` (or the bare ``rots`` if ``trans`` is None) atomically."""
    rot, tr = _check_poses(rots, trans, path, None)
    _dump(path, rot if tr is None else (rot, tr))


def load_ctf_pkl(path: PathLike, n: int | None = None) -> np.ndarray:
    """``(N, 9)`` float32 CTF parameters from a cryoDRGN ``ctf.pkl``."""
    path = Path(os.fspath(path))
    ctf = _to_numpy(safe_load_pickle(path))
    if ctf.ndim != 2 or ctf.shape[1] != 9:
        raise ParticleFileError(
            f"{path}: ctf.pkl must be (N, 9) [D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase], "
            f"got shape {ctf.shape}"
        )
    ctf = ctf.astype(np.float32)
    if not np.isfinite(ctf).all():
        raise ParticleFileError(f"{path}: CTF parameters contain NaN or Inf")
    _check_count(len(ctf), n, "CTF rows", path)
    return ctf


def save_ctf_pkl(path: PathLike, ctf: Any) -> None:
    """Write an ``(N, 9)`` CTF table as float32 atomically."""
    arr = _to_numpy(ctf).astype(np.float32)
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise ValueError(f"ctf must be (N, 9), got shape {arr.shape}")
    _dump(path, arr)


def save_z_pkl(path: PathLike, mu: Any, logvar: Any | None = None) -> None:
    """Write latents in cryoDRGN's layout: pickle(mu) then pickle(logvar), float32."""
    m = _to_numpy(mu).astype(np.float32)
    if m.ndim != 2:
        raise ValueError(f"mu must be (N, zdim), got shape {m.shape}")
    if logvar is None:
        _dump(path, m)
        return
    lv = _to_numpy(logvar).astype(np.float32)
    if lv.shape != m.shape:
        raise ValueError(f"logvar shape {lv.shape} differs from mu shape {m.shape}")
    _dump(path, m, lv)


def load_z_pkl(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mu (N, zdim), logvar (N, zdim) | None)`` from a cryoDRGN ``z.pkl``."""
    path = Path(os.fspath(path))
    with open(path, "rb") as f:
        objs = _load_all(f, path, 2)
    if not objs:
        raise ParticleFileError(f"{path}: empty file, no pickled latents")
    mu = _to_numpy(objs[0])
    if mu.ndim == 1:
        mu = mu[:, None]
    if mu.ndim != 2:
        raise ParticleFileError(f"{path}: z must be (N, zdim), got shape {mu.shape}")
    logvar = None
    if len(objs) > 1:
        logvar = _to_numpy(objs[1]).reshape(mu.shape[0], -1)
        if logvar.shape != mu.shape:
            raise ParticleFileError(f"{path}: logvar {logvar.shape} does not match mu {mu.shape}")
    return mu, logvar


def _check_indices(ind: Any, source: object, n: int | None) -> np.ndarray:
    arr = _to_numpy(ind)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ParticleFileError(
            f"{source}: indices must be a 1-D integer array, got {arr.dtype} {arr.shape}"
        )
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ParticleFileError(f"{source}: negative index {int(arr.min())} (indices are 0-based)")
    if n is not None and arr.size and arr.max() >= n:
        raise ParticleFileError(
            f"{source}: index {int(arr.max())} out of range for {n} particles (0-based)"
        )
    return arr


def load_split(path_with_key: PathLike, n: int | None = None) -> np.ndarray:
    """Indices stored under a key: ``"split.npz:train"`` (``.npz``, or a pickled dict)."""
    text = os.fspath(path_with_key)
    path, key = Path(text), None
    if not path.exists() and ":" in text:
        head, key = text.rsplit(":", 1)
        path = Path(head)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = key if key is not None or len(keys) != 1 else keys[0]
            if key not in keys:
                raise KeyError(f"{path}: no array {key!r}; choose one of {keys} ({path}:<key>)")
            return _check_indices(z[key], f"{path}:{key}", n)
    obj = safe_load_pickle(path)
    if key is None:
        return _check_indices(obj, path, n)
    if not isinstance(obj, dict) or key not in obj:
        have = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise KeyError(f"{path}: no entry {key!r} (found {have})")
    return _check_indices(obj[key], f"{path}:{key}", n)


def load_indices(path: PathLike, n: int | None = None) -> np.ndarray:
    """0-based ``(k,)`` int64 particle indices from ``.pkl``, ``.npy``, ``.txt`` or ``x.npz:key``.

    ``n`` (number of particles) enables the range check.
    """
    text = os.fspath(path)
    p = Path(text)
    if p.suffix == ".npz" or (not p.exists() and ":" in text):
        return load_split(text, n)
    if p.suffix == ".npy":
        return _check_indices(np.load(p, allow_pickle=False), p, n)
    if p.suffix == ".txt":
        return _check_indices(np.loadtxt(p, dtype=np.int64, ndmin=1), p, n)
    return _check_indices(safe_load_pickle(p), p, n)
