"""Atomic writing of the analysis files (text, ``.npy``, rows of numbers) and relative paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryonoo.io.atomic import atomic_path, atomic_write

__all__ = ["relative", "write_npy", "write_rows", "write_text"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def write_rows(path: Path, array: np.ndarray, fmt: str = "%.6g") -> None:
    """Write ``array`` ``(m,)`` or ``(m, d)`` as text rows (``np.savetxt``) atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        np.savetxt(f, np.atleast_1d(array), fmt=fmt)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes (as linked from the report)."""
    return path.relative_to(root).as_posix()
