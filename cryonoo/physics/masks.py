"""Real-space masks: cryoDRGN's soft circular image window and 2-D/3-D radial masks.

Conventions (pinned by ``tests/unit/test_masks.py``):

* Arrays are indexed ``[y, x]`` (images) or ``[z, y, x]`` (volumes); the centre is pixel
  ``box // 2`` on every axis, as for the centered FFT (``fft2_center``).
* :func:`soft_circular_window` is cryoDRGN's ``spherical_window_mask`` used on particle images
  before the Hartley transform: radius in units of **half the box** on the grid
  ``linspace(−1, 1, box + 1)[:-1]`` (so pixel ``box // 2`` is at 0), value
  ``clip(1 − (r − inner)/(outer − inner), 0, 1)``.
* :func:`circular_mask_2d`, :func:`spherical_mask` and :func:`soft_spherical_mask` take radii in
  **pixels** (distance from the centre pixel) and return float masks (1 inside, 0 outside), ready to
  multiply images or volumes (e.g. before an FSC).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "circular_mask_2d",
    "radius_grid",
    "soft_circular_window",
    "soft_spherical_mask",
    "spherical_mask",
]

Device = torch.device | str | None


def _check_box(box: int) -> int:
    if isinstance(box, bool) or not isinstance(box, int) or box < 2:
        raise ValueError(f"box must be an integer ≥ 2 (pixels per side), got {box!r}")
    return box


def _check_radius(value: float, name: str, box: int, allow_zero: bool = False) -> float:
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not math.isfinite(value) or not low_ok or value > box:
        low = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite, {low} and ≤ box = {box} pixels, got {value}")
    return value


def radius_grid(box: int, ndim: int = 2, *, device: Device = None) -> Tensor:
    """``(box,)*ndim`` float32 distance in pixels of every pixel/voxel from the centre pixel
    ``box // 2`` (on every axis)."""
    _check_box(box)
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    c = (torch.arange(box, device=device, dtype=torch.float64) - box // 2) ** 2
    if ndim == 2:
        r2 = c[:, None] + c[None, :]
    else:
        r2 = c[:, None, None] + c[None, :, None] + c[None, None, :]
    return torch.sqrt(r2).to(torch.float32)


def soft_circular_window(
    box: int,
    inner_radius: float = 0.85,
    outer_radius: float = 0.99,
    *,
    device: Device = None,
) -> Tensor:
    """cryoDRGN's real-space image window (``spherical_window_mask``), ``(box, box)`` float32.

    Parameters
    ----------
    box:
        Image size in pixels.
    inner_radius, outer_radius:
        Radii in units of half the box (``0 ≤ inner < outer``): 1 for ``r ≤ inner``, a linear
        ramp to 0 at ``r = outer``, 0 beyond.
    """
    _check_box(box)
    inner, outer = float(inner_radius), float(outer_radius)
    if not (math.isfinite(inner) and math.isfinite(outer)) or inner < 0 or outer <= 0:
        raise ValueError(
            f"inner_radius and outer_radius must be finite and ≥ 0 (units of half-box), "
            f"got {inner_radius}, {outer_radius}"
        )
    if inner >= outer:
        raise ValueError(
            f"inner_radius must be < outer_radius, got inner={inner_radius}, outer={outer_radius}"
        )
    # float32 grid and arithmetic, as cryoDRGN computes it
    axis = torch.linspace(-1, 1, box + 1, dtype=torch.float64, device=device)[:-1].float()
    r = torch.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)
    return (1 - (r - inner) / (outer - inner)).clamp(0.0, 1.0)


def circular_mask_2d(box: int, radius_px: float, *, device: Device = None) -> Tensor:
    """Hard disk ``(box, box)`` float32: 1 where the distance from pixel ``box // 2`` is
    ``≤ radius_px`` (pixels, in ``(0, box]``), else 0."""
    _check_box(box)
    radius = _check_radius(radius_px, "radius_px", box)
    return (radius_grid(box, 2, device=device) <= radius).to(torch.float32)


def spherical_mask(box: int, radius_px: float, *, device: Device = None) -> Tensor:
    """Hard ball ``(box, box, box)`` float32: 1 where the distance from voxel
    ``(box//2,)*3`` is ``≤ radius_px`` (pixels, in ``(0, box]``), else 0."""
    _check_box(box)
    radius = _check_radius(radius_px, "radius_px", box)
    return (radius_grid(box, 3, device=device) <= radius).to(torch.float32)


def soft_spherical_mask(
    box: int, radius_px: float, edge_px: float, *, device: Device = None
) -> Tensor:
    """Ball with a raised-cosine edge, ``(box, box, box)`` float32 in ``[0, 1]``.

    1 for ``r ≤ radius_px``; ``½(1 + cos(π (r − radius_px)/edge_px))`` for
    ``radius_px < r < radius_px + edge_px``; 0 beyond. ``edge_px = 0`` gives
    :func:`spherical_mask`. Radii in pixels from voxel ``(box//2,)*3``.
    """
    _check_box(box)
    radius = _check_radius(radius_px, "radius_px", box)
    edge = _check_radius(edge_px, "edge_px", box, allow_zero=True)
    r = radius_grid(box, 3, device=device).to(torch.float64)
    if edge == 0:
        return (r <= radius).to(torch.float32)
    t = ((r - radius) / edge).clamp(0.0, 1.0)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(torch.float32)
