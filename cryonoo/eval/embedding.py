"""UMAP embeddings (the optional ``umap-learn`` extra), fitted without changing torch's threads.

``umap-learn`` runs on numba, whose OpenMP layer sets the process's OpenMP thread count to every
core; torch shares that pool, so after one UMAP a process started with ``OMP_NUM_THREADS=1``
(or ``torch.set_num_threads``) trained on all cores, and two such jobs side by side spent most
of their time waiting in each other's barriers. :func:`umap_fit_transform` restores torch's
thread count when UMAP is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["torch_threads_kept", "umap_available", "umap_fit_transform"]


def umap_available() -> bool:
    """Whether the optional ``umap-learn`` package can be imported."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def torch_threads_kept() -> Iterator[int]:
    """Run the block, then set torch's intra-op thread count back to what it was (yielded)."""
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def umap_fit_transform(
    fit: np.ndarray, rest: np.ndarray | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """2-D UMAP fitted on ``fit`` ``(N, d)``, also applied to ``rest`` ``(M, d)`` when given →
    ``(emb_fit (N, 2), emb_rest (M, 2) | None)`` float64; ``None`` without ``umap-learn``."""
    try:
        import umap
    except ImportError:
        return None
    with torch_threads_kept():
        reducer = umap.UMAP(n_components=2, random_state=seed)
        emb_fit = np.asarray(reducer.fit_transform(fit), dtype=np.float64)
        emb_rest = None if rest is None else np.asarray(reducer.transform(rest), dtype=np.float64)
    return emb_fit, emb_rest
