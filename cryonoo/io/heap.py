"""How glibc's heap serves a process's large buffers: streamed (bounded) or reused (fast).

glibc serves an allocation with ``mmap`` above its *mmap threshold* and returns it to the system
on ``free``; below it, from the heap, where freed memory stays for the next allocation. By
default the threshold starts at 128 KiB and rises (to at most 32 MiB) each time an mmapped block
is freed. Two workloads want opposite settings:

* **Streaming** (:func:`stream_heap`, what encoding a stack does): batch after batch of
  buffers of varying sizes. Once the threshold has risen they come from the heap, where
  fragmentation keeps freed memory resident: encoding a 4 GB stack at box 128 held ~1.4 GB of
  anonymous memory against ~0.75 GB for a 0.5 GB stack (``benchmarks/memory.py``). A low, fixed
  threshold keeps the peak independent of the stack's size.
* **Training** (:func:`reuse_heap`): every step allocates and frees the same activation
  buffers. Those above 32 MiB (the decoder's activations of a batch of renderings, e.g. 128 ×
  398 points × 256 features in float32 is 52 MB) are always mmapped, so every step page-faults
  them in again (13 k faults per such buffer) — an element-wise pass on such a buffer then
  costs several times its arithmetic. A high threshold serves them from the heap and a high
  trim threshold keeps them there, so the next step reuses the same pages.

Neither changes any result. Both return whether the setting took effect (``False`` off
Linux/glibc) and may be called any number of times; the last call wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["pin_mmap_threshold", "reuse_heap", "stream_heap"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3


def _mallopt(settings: dict[int, int]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(bool(libc.mallopt(key, int(value))) for key, value in settings.items())
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    if not ok:
        logger.debug("mallopt(%s) was refused", settings)
    return ok


_DEFAULT_TRIM = 128 * 1024  # glibc's M_TRIM_THRESHOLD default


def stream_heap(threshold_bytes: int = 1 << 20) -> bool:
    """Serve allocations ≥ ``threshold_bytes`` by ``mmap`` (returned on ``free``) from now on,
    and return freed heap memory above glibc's default trim threshold (128 KiB)."""
    return _mallopt({_M_MMAP_THRESHOLD: threshold_bytes, _M_TRIM_THRESHOLD: _DEFAULT_TRIM})


def reuse_heap(limit_bytes: int = 1 << 30) -> bool:
    """Serve allocations below ``limit_bytes`` from the heap and keep up to twice that of freed
    memory there for reuse (instead of returning it to the system) from now on."""
    return _mallopt({_M_MMAP_THRESHOLD: limit_bytes, _M_TRIM_THRESHOLD: 2 * limit_bytes})


def pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """The streaming setting (:func:`stream_heap`), under its earlier name."""
    return stream_heap(threshold_bytes)
