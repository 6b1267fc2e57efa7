"""Keep a streaming process's heap from growing with the number of batches (glibc only).

glibc serves a large allocation with ``mmap`` (returned to the system on ``free``) only above
its *mmap threshold*, and it raises that threshold each time such a block is freed. A loop that
allocates and frees batch-sized buffers (images, Hartley transforms, activations) therefore soon
serves them from the heap, where fragmentation keeps freed memory resident: encoding a 4 GB
stack at box 128 held ~1.4 GB of anonymous memory against ~0.75 GB for a 0.5 GB stack
(``benchmarks/memory.py``). Pinning the threshold keeps the peak independent of the stack size;
:func:`cryonoo.io.dataset.make_loader` does it for every lazy dataset.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["pin_mmap_threshold"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_pinned = False


def pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Serve allocations ≥ ``threshold_bytes`` by ``mmap`` for the rest of the process.

    Returns whether the setting took effect (False off Linux/glibc; harmless to call twice).
    """
    global _pinned
    if _pinned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    if not ok:
        logger.debug("mallopt(M_MMAP_THRESHOLD) was refused")
    _pinned = ok
    return ok
