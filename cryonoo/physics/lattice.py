"""The odd Fourier lattice of cryoDRGN.

Conventions (pinned by ``tests/unit/test_lattice.py``):

* An image of ``box`` pixels (``box`` even) lives on a *symmetrized* lattice of ``D = box + 1``
  points per side, so that ``+Nyquist`` and ``−Nyquist`` are both present.
* ``lattice_coords(D)`` is ``(D², 3)`` with rows ``[x, y, 0]``; ``x`` is the column index (fast
  axis), ``y`` the row index; raster order ``row·D + col``; values ``linspace(-extent, extent, D)``.
  With the default ``extent = 0.5`` the coordinates are frequencies in **cycles/pixel** and the
  spacing is ``1/box``. The DC point is at flat index ``D² // 2``.
* A 2-D slice through a volume's spectrum at rotation ``R`` is sampled at ``coords @ R``
  (row vectors), i.e. the 3-D frequency is ``Rᵀ k``.
* Circular masks keep ``|k| ≤ radius_px / box`` cycles/pixel; by default the DC point is removed
  (cryoDRGN's ``ignore_DC``). A masked set in raster order is point symmetric: entry ``i`` and
  entry ``N − 1 − i`` are ``k`` and ``−k``. Hence a Hermitian-symmetric field needs only its first
  :func:`half_count` points.

Example
-------
>>> lat = Lattice(65)
>>> mask = lat.circular_mask()          # (65*65,) bool, |k| <= 0.5 cycles/px, no DC
>>> coords = lat.coords[mask]           # (N, 3)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Lattice",
    "check_band",
    "check_odd_lattice",
    "circular_mask",
    "half_count",
    "lattice_coords",
    "lattice_freqs",
    "radial_index",
]


def check_band(band: object, name: str = "band") -> float:
    """``band`` as a ``float`` frequency radius in ``(0, 0.5]`` cycles/pixel (0.5: Nyquist);
    anything else (a bool, a non-number, a value outside) raises ``ValueError`` naming ``name``."""
    if isinstance(band, bool) or not isinstance(band, numbers.Real) or not 0.0 < band <= 0.5:
        raise ValueError(f"{name} must be in (0, 0.5] cycles/pixel, got {band!r}")
    return float(band)


def check_odd_lattice(D: int, name: str = "D") -> int:
    """Validate an odd lattice size ``D = box + 1`` (``D ≥ 3``) and return it."""
    if not isinstance(D, int) or D < 3 or D % 2 == 0:
        raise ValueError(f"{name} must be an odd integer ≥ 3 (box + 1), got {D!r}")
    return D


def lattice_coords(
    D: int,
    extent: float = 0.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(D², 3)`` lattice points ``[x, y, 0]`` in ``[-extent, extent]``, x fastest."""
    check_odd_lattice(D)
    # float64 then cast: exact point symmetry (−k is exactly representable) as in numpy/cryoDRGN
    axis = torch.linspace(-extent, extent, D, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    coords = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros_like(x).reshape(-1)], dim=-1)
    return coords.to(device=device, dtype=dtype)


def lattice_freqs(
    D: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(D², 2)`` lattice frequencies ``[kx, ky]`` in cycles/pixel (divide by Apix for 1/Å)."""
    return lattice_coords(D, 0.5, device=device, dtype=dtype)[:, :2]


def radial_index(D: int, *, device: torch.device | str | None = None) -> Tensor:
    """``(D, D)`` distance of each lattice point from DC, in lattice pixels (float32)."""
    check_odd_lattice(D)
    c = torch.arange(D, device=device, dtype=torch.float32) - D // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def circular_mask(
    D: int,
    radius_px: float | None = None,
    *,
    radius_freq: float | None = None,
    ignore_dc: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(D²,)`` boolean disk mask in raster order.

    Parameters
    ----------
    D:
        Odd lattice size.
    radius_px:
        Radius in lattice pixels; default ``D // 2`` (the inscribed disk, |k| ≤ 0.5 cycles/px).
    radius_freq:
        Alternatively the radius in cycles/pixel (``radius_px = radius_freq · box``).
    ignore_dc:
        Drop the DC point (cryoDRGN's default for the loss and encoder masks).
    """
    check_odd_lattice(D)
    box = D - 1
    if radius_px is not None and radius_freq is not None:
        raise ValueError("give radius_px or radius_freq, not both")
    if radius_freq is not None:
        radius_px = radius_freq * box
    if radius_px is None:
        radius_px = D // 2
    if radius_px < 0:
        raise ValueError(f"radius_px must be ≥ 0, got {radius_px}")
    r = radial_index(D, device=device).reshape(-1)
    # cryoDRGN compares coordinates in extent units; the 1e-6 slack keeps grid points on the circle.
    mask = r <= radius_px * (1 + 1e-6)
    if ignore_dc:
        mask[D * D // 2] = False
    return mask


def half_count(n_points: int) -> int:
    """Number of leading points of a point-symmetric raster-ordered set needed to define a
    Hermitian-symmetric field on it (``n // 2``, plus the DC when ``n`` is odd)."""
    return n_points // 2 + (n_points % 2)


@dataclass
class Lattice:
    """Cached lattice tensors for one ``D`` and device.

    ``coords`` and ``freqs2d`` as in :func:`lattice_coords` / :func:`lattice_freqs`; masks are
    computed once per radius.
    """

    D: int
    extent: float = 0.5
    device: torch.device | str | None = None
    _masks: dict[tuple[float, bool], Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_odd_lattice(self.D)
        self.coords = lattice_coords(self.D, self.extent, device=self.device)
        self.freqs2d = self.coords[:, :2] / self.extent / 2

    @property
    def box(self) -> int:
        """Image size in pixels (``D − 1``)."""
        return self.D - 1

    def circular_mask(self, radius_px: float | None = None, ignore_dc: bool = True) -> Tensor:
        """Cached :func:`circular_mask` on this lattice's device."""
        key = (float(self.D // 2 if radius_px is None else radius_px), ignore_dc)
        if key not in self._masks:
            self._masks[key] = circular_mask(
                self.D, key[0], ignore_dc=ignore_dc, device=self.device
            )
        return self._masks[key]

    def to(self, device: torch.device | str) -> Lattice:
        """The same lattice on another device."""
        return Lattice(self.D, self.extent, device)
