"""ChimeraX scripts that open a series of maps as one volume series, and their display level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["chimerax_script", "map_level"]


def map_level(volume: Any) -> float:
    """Display threshold of a map ``(n, n, n)``: ``mean + 2·std`` of its voxels (map units)."""
    arr = np.asarray(volume, dtype=np.float64)
    return float(arr.mean() + 2.0 * arr.std())


def chimerax_script(map_names: Sequence[str], level: float, title: str, play: bool = False) -> str:
    """ChimeraX ``{title}.cxc`` text opening ``map_names`` (relative to it) as one series.

    The series becomes model ``#1`` in a new session; ``volume #1 level`` sets the threshold for
    every map of the series; ``play`` adds an oscillating playback (traversals).
    """
    if not map_names:
        raise ValueError("a ChimeraX series needs at least one map")
    quoted = " ".join(f'"{m}"' if " " in m else m for m in map_names)
    lines = [
        f"# {title}: {len(map_names)} maps as one volume series (model #1 in a new session)",
        f"# run: chimerax {title}.cxc, or `open {title}.cxc` in ChimeraX (paths relative to it)",
        f"open {quoted} vseries true",
        f"volume #1 level {level:.6g} style surface",
    ]
    if play:
        lines.append("vseries play #1 loop true direction oscillate")
    return "\n".join(lines) + "\n"
