"""How glibc's heap serves a process's large buffers: streamed (bounded) or reused (fast).

glibc serves an allocation with ``mmap`` above its *mmap threshold* and returns it to the system
on ``free``; below it, from the heap, where freed memory stays for the next allocation. By
default the threshold starts at 128 KiB and rises (to at most 32 MiB) each time an mmapped block
is freed, and every thread that allocates may get an *arena* (a heap) of its own. A buffer
served by ``mmap`` is page-faulted in anew on every allocation: 13 k faults for a 52 MB buffer,
several times the cost of an element-wise pass over it. The settings:

* **Training** (:func:`reuse_heap`): every step allocates and frees the same activation
  buffers. Those above 32 MiB (the decoder's activations of a batch of renderings, e.g. 128 ×
  398 points × 256 features in float32 is 52 MB) would always be mmapped, so every step
  page-faults them in again. A high threshold serves them from the heap and a high trim
  threshold keeps them there, so the next step reuses the same pages.
* **Streaming a stack** (:func:`pipeline_heap`, what encoding a stack does): batches read and
  preprocessed on a read-ahead thread, encoded on the main one. The reused heap of training,
  shared by both threads (one arena: a buffer the reader allocates and the encoder frees goes
  back where the next batch's buffers come from), so no batch page-faults its buffers in;
  :func:`trim_heap`, called every few batches (:func:`cryonoo.io.dataset.in_order`), returns
  the free pages that fragmentation would otherwise keep resident, so the peak memory does not
  grow with the stack's size. At box 128 (bf16, 2 threads) this is 1.9 × the throughput of
  :func:`stream_heap` (``docs/benchmarks.md``, "Encoding from disk").
* :func:`stream_heap`: a low, fixed threshold, every large buffer mmapped and unmapped on
  ``free`` — bounded, but every batch pays the page faults (the earlier streaming setting).

None changes any result. Each returns whether the setting took effect (``False`` off
Linux/glibc) and may be called any number of times; the last call wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

__all__ = ["pin_mmap_threshold", "pipeline_heap", "reuse_heap", "stream_heap", "trim_heap"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt(settings: dict[int, int]) -> bool:
    libc = _libc()
    if libc is None:
        return False
    try:
        ok = all(bool(libc.mallopt(key, int(value))) for key, value in settings.items())
    except AttributeError:  # not glibc (e.g. musl has no mallopt)
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


def pipeline_heap(limit_bytes: int = 1 << 30) -> bool:
    """:func:`reuse_heap` with one arena for every thread created from now on (the main
    thread's): what a read-ahead thread allocates and the main thread frees is reused by the
    next batch. Pair it with :func:`trim_heap` every few batches to bound the peak memory."""
    return reuse_heap(limit_bytes) and _mallopt({_M_ARENA_MAX: 1})


def trim_heap() -> bool:
    """Return every whole free page of the heap to the system (glibc's ``malloc_trim(0)``):
    the holes that fragmentation leaves between live buffers, which a high trim threshold
    would keep resident. ``False`` where glibc is not available."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True
