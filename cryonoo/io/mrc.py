"""MRC volumes and image stacks (read memory-mapped, write atomically), through ``mrcfile``.

Conventions
-----------
* Arrays are always 3-D ``(nz, ny, nx)``: a volume indexed ``[z, y, x]`` or a stack of ``nz``
  images ``[i, y, x]`` (a single image is ``(1, ny, nx)``). As in cryoDRGN and RELION the header's
  ``mapc/mapr/maps`` axis order and the origin are *not* applied.
* The voxel size (Å) is MRC2014's ``cella.x / mx`` (``mrcfile.voxel_size``). cryoDRGN uses
  ``cella.x / nx`` instead; the two agree for every file whose sampling ``mx`` equals ``nx``.
* Supported modes: 0 int8, 1 int16, 2 float32, 4 complex64, 6 uint16, 12 float16 (``mrcfile``'s
  list). Files written here are float32 (mode 2) or, on request, float16 (mode 12).
* The header is parsed by ``mrcfile`` in permissive mode (many RELION stacks lack the ``MAP`` id
  and machine stamp); the data block is memory-mapped with :class:`numpy.memmap` so a stack
  larger than memory is never read whole. The data size implied by the header is checked against
  the file size first: a truncated file raises :class:`ParticleFileError` before any work starts.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.utils import data_dtype_from_header

from cryonoo.io.atomic import atomic_path

__all__ = ["MRCHeaderInfo", "ParticleFileError", "read_mrc", "read_mrc_header", "write_mrc"]

HEADER_BYTES = 1024


class ParticleFileError(ValueError):
    """A particle/volume file that cannot be used: corrupt, truncated, non-square, missing rows."""


@dataclass(frozen=True)
class MRCHeaderInfo:
    """What cryonoo uses from an MRC header.

    Attributes
    ----------
    path: the file.
    shape: ``(nz, ny, nx)`` of the data block.
    mode: MRC mode number; ``dtype`` the matching numpy dtype (file byte order).
    voxel_size: Å per voxel along x (``cella.x / mx``); 0.0 when the header does not say.
    voxel_size_xyz: the three voxel sizes (Å).
    ispg: space group (0 = image stack, 1 = volume).
    data_offset: byte offset of the data block (1024 + extended header).
    """

    path: Path
    shape: tuple[int, int, int]
    mode: int
    dtype: np.dtype
    voxel_size: float
    voxel_size_xyz: tuple[float, float, float]
    ispg: int
    data_offset: int

    @property
    def data_bytes(self) -> int:
        """Size of the data block implied by the header (bytes)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def is_stack(self) -> bool:
        """True for an image stack (space group 0)."""
        return self.ispg == 0


def _corrupt(path: Path, what: str) -> ParticleFileError:
    return ParticleFileError(
        f"{path}: {what}. The file is corrupt or incomplete; re-export or re-copy it "
        "(e.g. re-run the extraction job, or compare its size with the original)."
    )


def read_mrc_header(path: str | os.PathLike[str]) -> MRCHeaderInfo:
    """Parse and validate the header of ``path`` without touching the data block.

    Raises :class:`ParticleFileError` when the header is unreadable, the mode unsupported, the
    dimensions invalid, or the file shorter than the header says (truncated).
    """
    path = Path(os.fspath(path))
    size = path.stat().st_size  # FileNotFoundError names the path
    if size < HEADER_BYTES:
        raise _corrupt(path, f"file size {size} bytes is less than the {HEADER_BYTES}-byte header")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                vs = mrc.voxel_size
                voxel_xyz = (float(vs.x), float(vs.y), float(vs.z))
    except (ValueError, OSError, AttributeError) as exc:
        raise _corrupt(path, f"unreadable MRC header ({exc})") from exc
    mode = int(header.mode)
    try:
        dtype = data_dtype_from_header(header)
    except ValueError as exc:
        raise _corrupt(path, f"unsupported MRC mode {mode} (supported: 0, 1, 2, 4, 6, 12)") from exc
    shape = (int(header.nz), int(header.ny), int(header.nx))
    if min(shape) <= 0:
        raise _corrupt(path, f"invalid dimensions nz, ny, nx = {shape} in the header")
    nsymbt = int(header.nsymbt)
    if nsymbt < 0:
        raise _corrupt(path, f"negative extended-header size {nsymbt}")
    info = MRCHeaderInfo(
        path=path,
        shape=shape,
        mode=mode,
        dtype=dtype,
        voxel_size=voxel_xyz[0] if np.isfinite(voxel_xyz[0]) else 0.0,
        voxel_size_xyz=voxel_xyz,
        ispg=int(header.ispg),
        data_offset=HEADER_BYTES + nsymbt,
    )
    expected = info.data_offset + info.data_bytes
    if size < expected:
        raise _corrupt(
            path,
            f"truncated: the header ({shape[0]} × {shape[1]} × {shape[2]} {dtype.name} + "
            f"{info.data_offset}-byte header) implies {expected} bytes but the file has {size} "
            f"bytes ({expected - size} missing)",
        )
    return info


def read_mrc(path: str | os.PathLike[str], mmap: bool = True) -> tuple[np.ndarray, MRCHeaderInfo]:
    """Read an MRC volume or stack: ``(nz, ny, nx)`` array in the file's dtype, and its header.

    With ``mmap=True`` (default) the array is a read-only :class:`numpy.memmap`: nothing is read
    until indexed. With ``mmap=False`` the data are read into memory (native byte order).
    """
    info = read_mrc_header(path)
    if mmap:
        data = np.memmap(
            info.path, dtype=info.dtype, mode="r", offset=info.data_offset, shape=info.shape
        )
        return data, info
    count = int(np.prod(info.shape, dtype=np.int64))
    with open(info.path, "rb") as f:
        f.seek(info.data_offset)
        data = np.fromfile(f, dtype=info.dtype, count=count)
    if data.size != count:  # the file shrank after the header check
        raise _corrupt(info.path, f"expected {count} values, read {data.size}")
    data = data.reshape(info.shape)
    return data.astype(info.dtype.newbyteorder("="), copy=False), info


def write_mrc(
    path: str | os.PathLike[str],
    array: np.ndarray,
    voxel_size: float = 1.0,
    dtype: str | np.dtype | type = np.float32,
    is_stack: bool | None = None,
) -> None:
    """Write a volume ``(n, n, n)`` or an image stack ``(N, ny, nx)`` (a 2-D array = one image).

    Parameters
    ----------
    array: the data (numpy or anything ``np.asarray`` accepts, e.g. a CPU tensor).
    voxel_size: Å per voxel, stored as ``cella = voxel_size · n`` in the header.
    dtype: ``float32`` (mode 2, default) or ``float16`` (mode 12).
    is_stack: header space group 0 (stack) vs 1 (volume); default: volume iff the three
        dimensions are equal, stack otherwise.

    The file is written atomically (see :mod:`cryonoo.io.atomic`); header statistics
    (min/max/mean/rms) are computed from the data.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"write_mrc writes float32 or float16, got dtype={dtype}")
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"write_mrc expects a (n, n, n) volume or (N, ny, nx) stack, got shape {arr.shape}"
        )
    if not float(voxel_size) > 0:
        raise ValueError(f"voxel_size must be > 0 Å, got {voxel_size}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if is_stack is None:
        is_stack = not (arr.shape[0] == arr.shape[1] == arr.shape[2])
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        if is_stack:
            mrc.set_image_stack()
        else:
            mrc.set_volume()
        mrc.voxel_size = float(voxel_size)
