"""Atomic file writing: a file is either fully written or not touched at all.

Conventions
-----------
* Data go to a temporary file ``.<name>.<random>.tmp`` in the destination directory (same file
  system, so the final rename is atomic), which is flushed and ``fsync``-ed, then renamed onto the
  final name with :func:`os.replace`; the directory is ``fsync``-ed afterwards so the rename
  survives a crash.
* On any exception the temporary file is removed and a previous file of the same name is left
  untouched.
* Operating-system errors (unwritable or missing directory, disk full, …) are re-raised as
  :class:`OSError` whose message names the destination path.
* The final file gets the usual permissions (``0o666`` minus the umask), or those of the file it
  replaces.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write"]


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named_error(exc: OSError, path: Path) -> OSError:
    """An ``OSError`` (same errno) whose message names ``path``; ``exc`` if it already does."""
    if str(path) in str(exc):
        return exc
    reason = exc.strerror or str(exc)
    err = OSError(exc.errno, f"cannot write {path}: {reason}")
    err.filename = str(path)
    return err


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsync-ed and renamed onto ``path``.

    For writers that need a file *name* (``mrcfile.new``, ``np.savez``); the temporary file
    already exists (empty) when yielded, so such writers must be allowed to overwrite it.
    """
    path = Path(os.fspath(path))
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
    except OSError as exc:
        raise _named_error(exc, path) from exc
    tmp = Path(tmp_name)
    try:
        try:
            previous = os.stat(path).st_mode
            mode = stat.S_IMODE(previous)
        except OSError:
            mode = 0o666 & ~_umask()
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _named_error(exc, path) from exc
        raise
    _fsync_dir(directory)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any
) -> Iterator[IO]:
    """Open ``path`` for writing atomically; yields the open file object.

    ``mode`` must be a write mode (``"wb"``, ``"w"``, ``"wt"``, optionally with ``+``);
    ``open_kwargs`` (``encoding``, ``newline``, …) go to :func:`open`. Example::

        with atomic_write("poses.pkl") as f:
            pickle.dump(obj, f)
    """
    if "w" not in mode or any(c in mode for c in "ax"):
        raise ValueError(f"atomic_write needs a write mode ('w', 'wb', 'wt'), got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
