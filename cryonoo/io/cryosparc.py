"""cryoSPARC ``.cs`` particle files (numpy structured arrays): poses and CTF parameters.

Conventions
-----------
* ``.cs`` files are read with ``np.load(allow_pickle=False)``; fields are named ``group/name``
  (``blob/path``, ``alignments3D/pose``, ``ctf/df1_A``, …).
* Poses follow cryoDRGN's ``parse_pose_csparc``: ``alignments3D/pose`` is a rotation vector
  (axis × angle, radians) and cryoDRGN's matrix is the **transpose** of its exponential map
  (:func:`cryonoo.physics.rotations.cryosparc_to_matrix`); translations are
  ``alignments3D/shift`` (pixels, no sign change) divided by the box ``D = blob/shape[0]``,
  doubled with ``hetrefine=True``; ``abinit=True`` reads ``alignments_class_0/*`` instead.
* CTF rows follow cryoDRGN's ``parse_ctf_csparc`` and ``ctf.pkl``: ``[D, Apix, df1_A, df2_A,
  df_angle (deg), accel_kv, cs_mm, amp_contrast, phase_shift (deg)]`` float32, with
  ``D = blob/shape[0]`` and ``Apix = blob/psize_A``.
* torch (for the rotation conversion) is imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryonoo.io.mrc import ParticleFileError

__all__ = ["cs_ctf", "cs_field", "cs_poses", "read_cs"]


def read_cs(path: str | os.PathLike[str]) -> np.ndarray:
    """The structured array of a ``.cs`` file (no pickled objects are ever loaded)."""
    path = Path(os.fspath(path))
    try:
        cs = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ParticleFileError(f"{path}: not a cryoSPARC .cs file (numpy .npy) ({exc})") from exc
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None or cs.ndim != 1:
        raise ParticleFileError(
            f"{path}: expected a 1-D numpy structured array (cryoSPARC .cs), got "
            f"{type(cs).__name__} {getattr(cs, 'shape', '')}"
        )
    return cs


def _as_cs(
    cs: np.ndarray | str | os.PathLike[str], where: object | None = None
) -> tuple[np.ndarray, object]:
    """The array and what errors call it: ``where``, else the file's path."""
    if isinstance(cs, np.ndarray):
        return cs, "cryoSPARC array" if where is None else where
    return read_cs(cs), Path(os.fspath(cs)) if where is None else where


def cs_field(cs: np.ndarray, name: str, where: object = "cryoSPARC array") -> np.ndarray:
    """Field ``name`` of ``cs``; ParticleFileError naming the field and the file if missing."""
    if cs.dtype.names is None or name not in cs.dtype.names:
        groups = sorted({n.split("/")[0] for n in (cs.dtype.names or ())})
        raise ParticleFileError(
            f"{where}: field {name!r} not found (field groups present: {groups}); export the "
            "particles from a cryoSPARC job that produced it"
        )
    return cs[name]


def _box(cs: np.ndarray, box: int | None, where: object) -> np.ndarray:
    if box is not None:
        return np.full(len(cs), float(box))
    return cs_field(cs, "blob/shape", where)[:, 0].astype(np.float64)


def cs_poses(
    cs: np.ndarray | str | os.PathLike[str],
    box: int | None = None,
    abinit: bool = False,
    hetrefine: bool = False,
    where: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of every particle: ``rots (N, 3, 3)`` float64 and ``trans (N, 2)`` box fractions.

    ``where`` names the source in errors when ``cs`` is an array already read (its file)."""
    import torch

    from cryonoo.physics.rotations import cryosparc_to_matrix

    cs, where = _as_cs(cs, where)
    group = "alignments_class_0" if abinit else "alignments3D"
    pose = cs_field(cs, f"{group}/pose", where).astype(np.float64)
    shift = cs_field(cs, f"{group}/shift", where).astype(np.float64)
    rots = cryosparc_to_matrix(torch.from_numpy(pose)).numpy()
    trans = shift / _box(cs, box, where)[:, None]
    if hetrefine:
        trans = trans * 2
    return rots, trans


def cs_ctf(cs: np.ndarray | str | os.PathLike[str], where: object | None = None) -> np.ndarray:
    """``(N, 9)`` float32 CTF table (see the module docstring); ``where`` as in :func:`cs_poses`."""
    cs, where = _as_cs(cs, where)

    def f(name: str) -> np.ndarray:
        return cs_field(cs, name, where).astype(np.float64)

    cols = [
        _box(cs, None, where),
        f("blob/psize_A"),
        f("ctf/df1_A"),
        f("ctf/df2_A"),
        np.rad2deg(f("ctf/df_angle_rad")),
        f("ctf/accel_kv"),
        f("ctf/cs_mm"),
        f("ctf/amp_contrast"),
        np.rad2deg(f("ctf/phase_shift_rad")),
    ]
    return np.stack(cols, 1).astype(np.float32)
