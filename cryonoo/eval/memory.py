"""This process's memory, read from ``/proc/self/status`` (Linux; zeros elsewhere).

``peak_rss_bytes`` is the peak resident set (``VmHWM``, which starts afresh at ``exec``, unlike
``ru_maxrss`` which carries a parent's peak over a fork); ``reset_peak_rss`` restarts it;
``AnonSampler`` polls the anonymous resident memory (``RssAnon``: the process's own
allocations, without the page cache of memory-mapped files) on a thread.
"""

from __future__ import annotations

import threading

__all__ = ["AnonSampler", "peak_rss_bytes", "reset_peak_rss", "status_bytes"]


def status_bytes(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """This process's peak resident set (bytes): ``VmHWM``, else ``ru_maxrss``."""
    import resource

    return status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Restart ``VmHWM`` from the current resident set (Linux); whether it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class AnonSampler:
    """Peak anonymous resident memory (``RssAnon``, bytes), polled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.peak, self._stop, self._interval = (
            status_bytes("RssAnon"),
            threading.Event(),
            interval_s,
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, status_bytes("RssAnon"))

    def stop(self) -> int:
        """Stop polling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_bytes("RssAnon"))
