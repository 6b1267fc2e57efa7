"""Benchmark tasks in worker processes: results in order, progress forwarded, errors raised."""

from __future__ import annotations

import os

import pytest

from cryonoo.experiments.jobs import run_tasks, threads_per_job, usable_cpus


def _square(task, log, on_step):
    """A task: reports one log line and one step event, returns (task², its process id)."""
    import torch

    log(f"task {task}")
    if on_step is not None:
        on_step({"images": task, "threads": torch.get_num_threads()})
    return task * task, os.getpid()


def _fails_on_two(task, log, on_step):
    if task == 2:
        raise ValueError("task 2 is bad")
    return task


def test_in_process_when_one_job() -> None:
    messages, events = [], []
    out = run_tasks(_square, [3, 1, 2], jobs=1, log=messages.append, on_step=events.append)
    assert [r for r, _ in out] == [9, 1, 4]
    assert {pid for _, pid in out} == {os.getpid()}
    assert messages == ["task 3", "task 1", "task 2"] and [e["images"] for e in events] == [3, 1, 2]


def test_workers_return_in_task_order_and_forward_progress() -> None:
    messages, events = [], []
    tasks = [5, 4, 3, 2, 1]
    out = run_tasks(_square, tasks, jobs=2, threads=1, log=messages.append, on_step=events.append)
    assert [r for r, _ in out] == [t * t for t in tasks]  # the order given, not finishing order
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert sorted(messages) == sorted(f"task {t}" for t in tasks)
    assert sorted(e["images"] for e in events) == sorted(tasks)
    assert {e["threads"] for e in events} == {1}  # the worker's torch thread count


def test_a_failing_task_raises_in_the_caller() -> None:
    with pytest.raises(ValueError, match="task 2 is bad"):
        run_tasks(_fails_on_two, [1, 2, 3], jobs=2, threads=1)
    with pytest.raises(ValueError, match="task 2 is bad"):
        run_tasks(_fails_on_two, [1, 2, 3], jobs=1)


def _reads_marker(task, log, on_step):
    """A task that needs what ``prepare`` wrote (its path is the task)."""
    with open(task) as fh:
        return fh.read(), os.getpid()


@pytest.mark.parametrize("jobs", [1, 2])
def test_prepare_runs_before_any_task(tmp_path, jobs) -> None:
    marker = tmp_path / "dataset.txt"
    calls = []

    def prepare() -> None:
        calls.append(1)
        marker.write_text("simulated")

    out = run_tasks(_reads_marker, [str(marker)] * 4, jobs=jobs, threads=1, prepare=prepare)
    assert calls == [1] and [text for text, _ in out] == ["simulated"] * 4
    if jobs == 2:  # both workers were started (while prepare ran), not in this process
        assert len({pid for _, pid in out} - {os.getpid()}) == len({pid for _, pid in out})


def test_a_failing_prepare_raises_and_runs_no_task(tmp_path) -> None:
    def prepare() -> None:
        raise OSError("disk full")

    for jobs in (1, 2):
        with pytest.raises(OSError, match="disk full"):
            run_tasks(_reads_marker, [str(tmp_path / "none")] * 2, jobs=jobs, prepare=prepare)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_job_counts_are_refused(jobs) -> None:
    with pytest.raises(ValueError, match="jobs must be an integer"):
        run_tasks(_square, [1], jobs=jobs)


def test_threads_share_the_cpus() -> None:
    n = usable_cpus()
    assert threads_per_job(1) == n and threads_per_job(n) == 1 and threads_per_job(4 * n) == 1


def _sleeps_and_reports(task, log, on_step):
    """A task that writes its process id to ``task`` and then sleeps far past the test."""
    import time

    with open(task, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)


_KILLED_CALLER = """
import sys
from cryonoo.experiments.jobs import run_tasks
sys.path.insert(0, sys.argv[2])
from test_jobs import _sleeps_and_reports
run_tasks(_sleeps_and_reports, [sys.argv[1] + ".0", sys.argv[1] + ".1"], jobs=2, threads=1)
"""


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, parent, …), ``None``
    once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited, only reaping is left


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid``."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(entry)
        if fields is not None and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def test_workers_exit_when_the_caller_is_killed(tmp_path) -> None:
    """SIGKILL of the calling process (no clean-up) must not leave a worker running."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to follow the processes")
    import signal
    import subprocess
    import sys
    import time

    markers = [tmp_path / "worker.pid.0", tmp_path / "worker.pid.1"]  # two tasks: two workers
    here = os.path.dirname(__file__)
    caller = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CALLER, str(tmp_path / "worker.pid"), here]
    )
    try:
        deadline = time.monotonic() + 60
        while not all(m.exists() and m.read_text() for m in markers):
            assert caller.poll() is None, "the calling process ended early"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = {int(m.read_text()) for m in markers}
        spawned = _children(caller.pid)  # the workers, and whatever helper the pool started
        assert workers <= spawned and all(map(_alive, workers))
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, spawned)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in spawned if _alive(pid)], "processes outlived their killed caller"
