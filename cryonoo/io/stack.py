"""Lazy particle-image sources: ``.mrcs`` stacks, ``.txt`` lists, ``.star`` and ``.cs`` tables.

Conventions
-----------
* A source has ``N = len(source)`` square images of ``box × box`` pixels; ``images(indices)``
  returns a new ``(k, box, box)`` float32 array in the order of ``indices`` (0-based; negative
  indices count from the end; duplicates allowed). Nothing is read before it is asked for.
* MRC stacks are memory-mapped; a set of indices forming one contiguous run is read as one slice,
  other sets with one vectorized gather per file.
* ``.star`` ``_rlnImageName`` is ``idx@path`` with a **1-based** ``idx``; ``.cs`` ``blob/idx`` is
  **0-based** and ``blob/path`` may start with ``>`` (stripped). A stack path is tried as given,
  then ``datadir/path``, then ``datadir/basename(path)``; ``datadir`` defaults to the table's
  directory. Paths are resolved when the source is built (a missing file fails early and names the
  row), stacks are opened on first use and kept in a small cache of open memory maps.
* Sources pickle cheaply (memory maps are dropped and reopened), so they can be handed to
  ``spawn``-ed data-loader workers.
* ``.txt``: one stack path per line, relative paths resolved against the ``.txt`` directory; the
  stacks are concatenated in order.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryonoo.io.mrc import MRCHeaderInfo, ParticleFileError, read_mrc, read_mrc_header

__all__ = [
    "CsSource",
    "ImageSource",
    "MRCSource",
    "StarSource",
    "Subset",
    "TxtSource",
    "check_finite",
    "open_images",
    "resolve_path",
]

Indices = int | slice | Sequence[int] | np.ndarray


def _as_indices(indices: Indices, n: int) -> np.ndarray:
    """Normalize to a 1-D int64 array in ``[0, n)``; IndexError names the bad index."""
    if isinstance(indices, slice):
        return np.arange(n, dtype=np.int64)[indices]
    idx = np.asarray(indices)
    if idx.dtype == bool:
        raise TypeError("boolean masks are not accepted as indices; use np.flatnonzero(mask)")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False).reshape(-1)
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise IndexError(f"particle index {int(idx[bad][0])} out of range for {n} images")
    return np.where(idx < 0, idx + n, idx)


def _gather(data: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``data[local]`` as a new float32 array; one slice read when ``local`` is a contiguous run."""
    if local.size and local[-1] - local[0] == local.size - 1 and np.all(np.diff(local) == 1):
        return np.array(data[int(local[0]) : int(local[-1]) + 1], dtype=np.float32)  # a copy
    return np.asarray(data[local], dtype=np.float32)  # fancy indexing already copies


class ImageSource:
    """Base class: a lazily read collection of square particle images."""

    box: int
    dtype: np.dtype
    apix: float | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """``(k, box, box)`` float32 for valid, 0-based ``idx`` (subclasses)."""
        raise NotImplementedError

    def images(self, indices: Indices) -> np.ndarray:
        """Images ``(k, box, box)`` float32 for ``indices`` (int, slice, sequence or array)."""
        idx = _as_indices(indices, len(self))
        if idx.size == 0:
            return np.zeros((0, self.box, self.box), np.float32)
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = self._read(uniq)
        return out if uniq.size == idx.size and np.all(np.diff(idx) > 0) else out[inverse]

    def __getitem__(self, indices: Indices) -> np.ndarray:
        out = self.images(indices)
        return out[0] if np.ndim(indices) == 0 and not isinstance(indices, slice) else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, box={self.box}, apix={self.apix})"


def _check_square(info: MRCHeaderInfo) -> None:
    if info.shape[1] != info.shape[2]:
        raise ParticleFileError(
            f"{info.path}: images must be square, got ny × nx = {info.shape[1]} × {info.shape[2]}; "
            "re-extract or pad/crop the particles to a square box"
        )


class MRCSource(ImageSource):
    """One ``.mrc``/``.mrcs`` stack, memory-mapped (``mmap=False`` reads it into memory)."""

    def __init__(self, path: str | os.PathLike[str], mmap: bool = True) -> None:
        self.mmap = mmap
        self.data, self.info = read_mrc(path, mmap=mmap)
        _check_square(self.info)
        self.path = self.info.path
        self.box = self.info.shape[1]
        self.dtype = self.info.dtype
        self.apix = self.info.voxel_size or None

    def __len__(self) -> int:
        return self.info.shape[0]

    def _read(self, idx: np.ndarray) -> np.ndarray:
        return _gather(self.data, idx)

    def __getstate__(self) -> dict:  # pickled (e.g. to worker processes) without the data
        return {**self.__dict__, "data": None} if self.mmap else self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.data is None:
            self.data, _ = read_mrc(self.path, mmap=True)


class _MultiFileSource(ImageSource):
    """Images spread over several stacks: per particle a file code and a 0-based local index."""

    def __init__(
        self,
        files: list[Path],
        file_code: np.ndarray,
        local: np.ndarray,
        table: Path,
        row_numbers: np.ndarray,
        cache_size: int = 8,
    ) -> None:
        self.files, self.file_code, self.local = files, file_code, local
        self.table, self._row_numbers = table, row_numbers
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = max(1, cache_size)
        if len(file_code) == 0:
            raise ParticleFileError(f"{table}: no particles listed")
        self._max_local = np.full(len(files), -1, np.int64)  # per file, largest index used
        np.maximum.at(self._max_local, file_code, local)
        first = read_mrc_header(files[int(file_code[0])])
        _check_square(first)
        self.box, self.dtype = first.shape[1], first.dtype
        self.apix = first.voxel_size or None

    def __len__(self) -> int:
        return len(self.file_code)

    def _open(self, code: int) -> np.ndarray:
        if code in self._cache:
            self._cache.move_to_end(code)
            return self._cache[code]
        data, info = read_mrc(self.files[code], mmap=True)
        _check_square(info)
        if info.shape[1] != self.box:
            raise ParticleFileError(
                f"{info.path}: box {info.shape[1]} differs from the {self.box}-pixel box of the "
                f"first stack listed in {self.table}; all particles must share one box size"
            )
        if self._max_local[code] >= info.shape[0]:
            bad = (self.file_code == code) & (self.local >= info.shape[0])
            i = int(np.flatnonzero(bad)[0])
            raise ParticleFileError(
                f"{self.table}, row {self._row_numbers[i]}: image {self.local[i]} (0-based) "
                f"requested from {info.path}, which holds only {info.shape[0]} images"
            )
        self._cache[code] = data
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def __getstate__(self) -> dict:  # open memory maps are not pickled, reopened on demand
        return {**self.__dict__, "_cache": OrderedDict()}

    def _read(self, idx: np.ndarray) -> np.ndarray:
        codes = self.file_code[idx]
        out = np.empty((idx.size, self.box, self.box), np.float32)
        for code in np.unique(codes):  # loop over files, vectorized within a file
            sel = np.flatnonzero(codes == code)
            out[sel] = _gather(self._open(int(code)), self.local[idx[sel]])
        return out


def resolve_path(name: str, datadir: Path, table: Path, row: int) -> Path:
    """``name`` as given, else ``datadir/name``, else ``datadir/basename``; error names the row."""
    tried = [Path(name), datadir / name, datadir / Path(name).name]
    for p in tried:
        if p.is_file():
            return p
    listed = ", ".join(str(p) for p in dict.fromkeys(tried))
    raise ParticleFileError(
        f"{table}, row {row}: image stack {name!r} not found (tried {listed}); "
        "pass datadir= (--datadir) pointing at the directory holding the stacks"
    )


def _resolve_names(
    names: np.ndarray, datadir: Path, table: Path, rows: np.ndarray
) -> tuple[list[Path], np.ndarray]:
    """Resolve each distinct stack name once → (files, per-particle file code)."""
    uniq, first, code = np.unique(names, return_index=True, return_inverse=True)
    files = [
        resolve_path(str(n), datadir, table, int(rows[i])) for n, i in zip(uniq, first, strict=True)
    ]
    return files, code.reshape(-1)


class TxtSource(_MultiFileSource):
    """A ``.txt`` list of stacks (one path per line; relative to the ``.txt`` directory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(os.fspath(path))
        files, counts = [], []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            f = Path(name) if Path(name).is_absolute() else path.parent / name
            if not f.is_file():
                raise ParticleFileError(f"{path}, line {lineno}: stack {f} not found")
            files.append(f)
            counts.append(read_mrc_header(f).shape[0])
        counts_arr = np.asarray(counts, np.int64)
        code = np.repeat(np.arange(len(files)), counts_arr)
        starts = np.repeat(np.cumsum(counts_arr) - counts_arr, counts_arr)
        local = np.arange(code.size, dtype=np.int64) - starts
        super().__init__(files, code, local, path, np.arange(1, code.size + 1))


class StarSource(_MultiFileSource):
    """Images named by ``_rlnImageName = idx@path`` (1-based ``idx``) in a ``.star`` file."""

    def __init__(
        self, path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
    ) -> None:
        from cryonoo.io.star import read_star

        path = Path(os.fspath(path))
        star = read_star(path)
        if "_rlnImageName" not in star.particles:
            raise ParticleFileError(f"{path}: no _rlnImageName column, so no images to read")
        names = star.particles.column("_rlnImageName")
        split = np.char.partition(names.astype(str), "@")
        bad = (split[:, 1] != "@") | ~np.char.isdigit(split[:, 0])
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise ParticleFileError(
                f"{path}, row {row}: _rlnImageName {str(names[row - 1])!r} is not idx@path"
            )
        local = split[:, 0].astype(np.int64) - 1
        if (local < 0).any():
            row = int(np.flatnonzero(local < 0)[0]) + 1
            raise ParticleFileError(f"{path}, row {row}: image index must be ≥ 1 (1-based)")
        d = Path(os.fspath(datadir)) if datadir is not None else path.parent
        rows = np.arange(1, len(names) + 1)
        files, code = _resolve_names(split[:, 2], d, path, rows)
        super().__init__(files, code, local, path, rows)


class CsSource(_MultiFileSource):
    """Images named by ``blob/path`` and 0-based ``blob/idx`` in a cryoSPARC ``.cs`` file."""

    def __init__(
        self, path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
    ) -> None:
        from cryonoo.io.cryosparc import cs_field, read_cs

        path = Path(os.fspath(path))
        cs = read_cs(path)
        names = np.char.decode(cs_field(cs, "blob/path", path).astype(bytes), "utf-8")
        names = np.where(np.char.startswith(names, ">"), np.char.lstrip(names, ">"), names)
        local = cs_field(cs, "blob/idx", path).astype(np.int64)
        d = Path(os.fspath(datadir)) if datadir is not None else path.parent
        rows = np.arange(1, len(cs) + 1)
        files, code = _resolve_names(names, d, path, rows)
        super().__init__(files, code, local, path, rows)


class Subset(ImageSource):
    """The images ``indices`` (0-based, in that order) of another source."""

    def __init__(self, source: ImageSource, indices: Indices) -> None:
        self.source, self.indices = source, _as_indices(indices, len(source))
        self.box, self.dtype, self.apix = source.box, source.dtype, source.apix

    def __len__(self) -> int:
        return self.indices.size

    def _read(self, idx: np.ndarray) -> np.ndarray:
        return self.source.images(self.indices[idx])


def open_images(
    path: str | os.PathLike[str],
    datadir: str | os.PathLike[str] | None = None,
    indices: Indices | None = None,
) -> ImageSource:
    """Open particle images by extension: ``.mrc``/``.mrcs``, ``.txt``, ``.star``, ``.cs``.

    ``indices`` (0-based) restricts the source to those particles (``--ind``).
    """
    path = Path(os.fspath(path))
    ext = path.suffix.lower()
    if ext in (".mrc", ".mrcs"):
        src: ImageSource = MRCSource(path)
    elif ext == ".txt":
        src = TxtSource(path)
    elif ext == ".star":
        src = StarSource(path, datadir)
    elif ext == ".cs":
        src = CsSource(path, datadir)
    else:
        raise ParticleFileError(
            f"{path}: unknown particle file type {ext!r}; expected .mrcs, .mrc, .txt, .star or .cs"
        )
    return src if indices is None else Subset(src, indices)


def check_finite(source: ImageSource, batch_size: int = 1024) -> np.ndarray:
    """0-based indices of particles with NaN/Inf pixels or constant (all-equal) pixels."""
    bad = []
    for start in range(0, len(source), batch_size):
        imgs = source.images(slice(start, start + batch_size)).reshape(-1, source.box**2)
        nonfinite = ~np.isfinite(imgs).all(axis=1)
        constant = imgs.max(axis=1) == imgs.min(axis=1)
        bad.append(np.flatnonzero(nonfinite | constant) + start)
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)
