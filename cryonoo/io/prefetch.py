"""Read ahead of the consumer: iterate a loader on a background thread.

:func:`prefetched` lets the next batches be read from disk and preprocessed (memory-map reads,
float16 → float32, Hartley transform, normalization: numpy and torch work that releases the
GIL) while the caller runs the model on the current one, so a streaming pass costs about
``max(read, compute)`` instead of ``read + compute``. No worker processes, no copies between
processes: the batches are the loader's own tensors. At most ``depth`` batches wait in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items`` in order, produced up to ``depth`` ahead on a daemon thread.

    ``depth = 0`` iterates ``items`` in the calling thread (no thread at all). An exception
    raised while producing an item is re-raised here, at that item's place. When the consumer
    stops early (``break``, an exception, garbage collection of the generator) the thread is
    told to stop and joined, and the items it had read are dropped.
    """
    if depth < 0:
        raise ValueError(f"depth must be ≥ 0, got {depth}")
    if depth == 0:
        yield from items
        return
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
            return
        put(_DONE)

    worker = threading.Thread(target=produce, name="cryonoo-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
