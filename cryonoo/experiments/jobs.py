"""Independent benchmark tasks in worker processes, with their progress in the caller.

A benchmark's (seed, recipe) runs and label ceilings share nothing but the simulated dataset on
disk, so they can train side by side. :func:`run_tasks` runs ``fn(task, log, on_step)`` for
every task, either in this process (``jobs = 1``, in order) or in ``jobs`` spawned worker
processes of ``threads`` torch threads each. On a CPU, two one-thread processes do more work
than one two-thread process (small matrix products scale poorly across threads), and a task's
results do not depend on the order or the process it ran in: every task seeds its own
generators. They may depend, in the last bits, on the number of torch threads (MKL's FFT and
matrix-product rounding can change with it on some CPUs), both the workers' and that of the
calling process, where ``prepare`` simulates the data.

Workers report through a queue that the caller drains: ``log`` messages and ``on_step`` events
(shallow copies of the training loop's dicts) arrive in the calling process, so a progress bar
there counts every worker's images. A task that raises stops the run: tasks not yet started are
cancelled, running ones finish (their outputs on disk let a rerun resume), and the error is
raised in the caller. The workers and the queue's manager process exit within a second
when the calling process is killed outright (``kill``, no clean-up) instead of running on.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.managers import SyncManager
from typing import Any, TypeVar

__all__ = ["TaskFn", "run_tasks", "threads_per_job", "usable_cpus"]

T = TypeVar("T")
Log = Callable[[str], None]
StepHook = Callable[[dict[str, Any]], None]
#: ``fn(task, log, on_step) → result``; a module-level function (workers import it by name)
TaskFn = Callable[[Any, Log, StepHook | None], Any]

_events: Any = None  # the worker's queue to the caller (set by _start_worker)
_POLL_S = 0.2
_PARENT_POLL_S = 0.5


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the usable CPUs (at least 1)."""
    return max(1, usable_cpus() // max(1, jobs))


def _exit_with_parent(parent: int) -> None:
    """Poll until this process's parent is gone (killed without shutting its pool and
    manager down: this process was re-parented), then end this process at once."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _watch_parent() -> None:
    """Start :func:`_exit_with_parent` on a daemon thread of this (child) process."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _start_worker(threads: int, events: Any) -> None:
    import torch

    global _events
    _watch_parent()
    torch.set_num_threads(threads)
    _events = events


def _worker_log(message: str) -> None:
    _events.put(("log", message))


def _worker_step(event: dict[str, Any]) -> None:
    _events.put(("step", dict(event)))


def _warm_up(module: str) -> None:
    """Import ``module`` (the task function's) in a freshly started worker."""
    importlib.import_module(module)


def _in_worker(fn: TaskFn, task: Any, report_steps: bool) -> Any:
    return fn(task, _worker_log, _worker_step if report_steps else None)


def _drain(events: Any, log: Log | None, on_step: StepHook | None) -> None:
    while True:
        try:
            kind, payload = events.get_nowait()
        except queue.Empty:
            return
        if kind == "log" and log is not None:
            log(payload)
        elif kind == "step" and on_step is not None:
            on_step(payload)


def run_tasks(
    fn: TaskFn,
    tasks: Sequence[T],
    *,
    jobs: int = 1,
    threads: int | None = None,
    log: Log | None = None,
    on_step: StepHook | None = None,
    prepare: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(task, log, on_step) for task in tasks]``, in ``jobs`` worker processes when > 1.

    Tasks are started in the order given (put the longest first: the run ends when the last
    worker does); results come back in that order whatever order they finish in. ``threads``
    defaults to :func:`threads_per_job`. ``prepare()`` (e.g. simulating the tasks' dataset)
    runs in this process before any task starts; with workers it runs while they start up and
    import ``fn``'s module, which hides their start-up time. ``ValueError`` for ``jobs < 1``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer ≥ 1, got {jobs!r}")
    quiet: Log = log or (lambda _msg: None)
    if jobs == 1 or len(tasks) <= 1:
        if prepare is not None:
            prepare()
        return [fn(task, quiet, on_step) for task in tasks]
    n_threads = threads_per_job(jobs) if threads is None else threads
    workers = min(jobs, len(tasks))
    ctx = mp.get_context("spawn")  # a clean interpreter: no forked torch thread pools
    manager = SyncManager(ctx=ctx)
    manager.start(_watch_parent)
    with manager:
        events = manager.Queue()
        pool = ProcessPoolExecutor(
            workers,  # started by the warm-up calls below
            mp_context=ctx,
            initializer=_start_worker,
            initargs=(n_threads, events),
        )
        try:
            warming = [pool.submit(_warm_up, fn.__module__) for _ in range(workers)]
            if prepare is not None:
                prepare()
            for future in warming:
                future.result()
            futures: list[Future] = [
                pool.submit(_in_worker, fn, task, on_step is not None) for task in tasks
            ]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                _drain(events, log, on_step)
                for future in done:
                    future.result()  # a failed task stops the run here
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            _drain(events, log, on_step)
            raise
        pool.shutdown(wait=True)
        _drain(events, log, on_step)
        return [future.result() for future in futures]
