"""Positional encodings of 3-D frequencies for implicit (coordinate-network) decoders.

Conventions (cryoDRGN's ``FTPositionalDecoder``; pinned by ``tests/unit/test_models_*.py``):

* Inputs are frequencies ``(…, 3)`` ``[kx, ky, kz]`` in **cycles/pixel**, ``|k_i| ≤ 0.5``.
* ``D`` is the odd lattice size (``box + 1``), ``D2 = D // 2`` and ``enc_dim`` defaults to ``D2``.
* The ``geom_*``/``linear_lowf`` encodings use ``enc_dim`` scalar frequencies ``f_i`` per axis and
  the feature layout ``[sin(kx·f)…, cos(kx·f)…, sin(ky·f)…, cos(ky·f)…, sin(kz·f)…, cos(kz·f)…]``
  (``6·enc_dim`` features). Frequencies, ``i = 0 … enc_dim − 1``, ``n = enc_dim``:

  - ``geom_lowf``:    ``D2·(1/D2)^(i/(n−1))``           (D2 … 1)
  - ``geom_nohighf``: ``D2·(2π/D2)^(i/(n−1))``          (D2 … 2π)
  - ``geom_ft``:      ``2·D2·π·(2/(2·D2))^(i/(n−1))``   (box·π … 2π)
  - ``geom_full``:    ``2·D2·π·(1/(2·D2·π))^(i/(n−1))`` (box·π … 1)
  - ``linear_lowf``:  ``1, 2, …, D2`` (``enc_dim`` is ignored: always ``6·D2`` features)

* ``gaussian`` (cryoDRGN's default): ``3·enc_dim`` random vectors ``ω ~ N(0, feat_sigma²)`` drawn
  from a ``torch.Generator`` seeded with ``seed``, stored in the persistent buffer ``rand_freqs``
  ``(3·enc_dim, 3)``; ``t = D2·(k·ω)`` (no 2π) and the features are ``[sin t…, cos t…]``
  (again ``6·enc_dim``).
* ``none`` passes the raw coordinates through (3 features).

The phases are always computed in float32 with autocast disabled: half precision would make
``sin(D2·k·ω)`` inaccurate at high frequency.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cryonoo.physics.lattice import check_odd_lattice
from cryonoo.registry import Registry

__all__ = ["POSITIONAL", "GaussianEncoding", "GeometricEncoding", "IdentityEncoding"]

POSITIONAL: Registry = Registry("positional encoding")


def _enc_dim(D: int, enc_dim: int | None) -> int:
    check_odd_lattice(D)
    n = D // 2 if enc_dim is None else enc_dim
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"enc_dim (pe_dim) must be a positive integer or None, got {enc_dim!r}")
    return n


def _exponents(n: int) -> Tensor:
    """``i/(n−1)`` for ``i = 0 … n−1`` (float64; a single frequency uses exponent 0)."""
    return torch.arange(n, dtype=torch.float64) / max(n - 1, 1)


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


class GeometricEncoding(nn.Module):
    """Per-axis sinusoids at fixed scalar frequencies ``freqs (enc_dim,)`` (radians per cycle/px).

    ``forward(coords (…, 3)) → (…, 6·enc_dim)`` features, layout described in the module docstring.
    """

    def __init__(self, freqs: Tensor) -> None:
        super().__init__()
        if freqs.ndim != 1 or freqs.numel() < 1:
            raise ValueError(f"freqs must be a non-empty 1-D tensor, got {tuple(freqs.shape)}")
        # derived from D and enc_dim, so not saved in checkpoints (as in cryoDRGN)
        self.register_buffer("freqs", freqs.to(torch.float32), persistent=False)
        self.out_dim = 6 * freqs.numel()

    def forward(self, coords: Tensor) -> Tensor:
        with _no_autocast(coords.device):
            t = coords.float()[..., None] * self.freqs  # (…, 3, n)
            feats = torch.cat([torch.sin(t), torch.cos(t)], dim=-1)  # (…, 3, 2n)
            return feats.flatten(-2)


class GaussianEncoding(nn.Module):
    """Random Fourier features ``[sin(D2·k·ω)…, cos(D2·k·ω)…]`` with ``ω`` in ``rand_freqs``."""

    def __init__(self, D: int, enc_dim: int, feat_sigma: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not (math.isfinite(feat_sigma) and feat_sigma > 0):
            raise ValueError(f"feat_sigma must be finite and > 0, got {feat_sigma}")
        gen = torch.Generator().manual_seed(int(seed))
        rand = torch.randn((3 * enc_dim, 3), generator=gen, dtype=torch.float32) * feat_sigma
        self.register_buffer("rand_freqs", rand)  # persistent: maps cryoDRGN's `rand_freqs`
        self.D2 = D // 2
        self.out_dim = 6 * enc_dim

    def forward(self, coords: Tensor) -> Tensor:
        with _no_autocast(coords.device):
            t = (coords.float() @ self.rand_freqs.T) * self.D2  # (…, 3·enc_dim)
            return torch.cat([torch.sin(t), torch.cos(t)], dim=-1)


class IdentityEncoding(nn.Module):
    """The raw coordinates (3 features)."""

    out_dim = 3

    def forward(self, coords: Tensor) -> Tensor:
        return coords


@POSITIONAL.register("gaussian")
def gaussian(
    D: int, enc_dim: int | None = None, feat_sigma: float = 0.5, seed: int = 0
) -> GaussianEncoding:
    """Random Gaussian Fourier features, ω ~ N(0, feat_sigma²) (cryoDRGN's default)."""
    return GaussianEncoding(D, _enc_dim(D, enc_dim), feat_sigma, seed)


def _geometric(D: int, enc_dim: int | None, top: float, bottom: float) -> GeometricEncoding:
    n = _enc_dim(D, enc_dim)
    return GeometricEncoding(top * (bottom / top) ** _exponents(n))


@POSITIONAL.register("geom_lowf")
def geom_lowf(D: int, enc_dim: int | None = None, **_: object) -> GeometricEncoding:
    """Geometric frequencies from D//2 down to 1 per axis."""
    d2 = D // 2
    return _geometric(D, enc_dim, d2, 1.0)


@POSITIONAL.register("geom_nohighf")
def geom_nohighf(D: int, enc_dim: int | None = None, **_: object) -> GeometricEncoding:
    """Geometric frequencies from D//2 down to 2π per axis."""
    d2 = D // 2
    return _geometric(D, enc_dim, d2, 2 * math.pi)


@POSITIONAL.register("geom_ft")
def geom_ft(D: int, enc_dim: int | None = None, **_: object) -> GeometricEncoding:
    """Geometric frequencies from box·π down to 2π per axis."""
    dd = 2 * (D // 2)
    return _geometric(D, enc_dim, dd * math.pi, 2 * math.pi)


@POSITIONAL.register("geom_full")
def geom_full(D: int, enc_dim: int | None = None, **_: object) -> GeometricEncoding:
    """Geometric frequencies from box·π down to 1 per axis."""
    dd = 2 * (D // 2)
    return _geometric(D, enc_dim, dd * math.pi, 1.0)


@POSITIONAL.register("linear_lowf")
def linear_lowf(D: int, enc_dim: int | None = None, **_: object) -> GeometricEncoding:
    """Integer frequencies 1, 2, …, D//2 per axis (ignores enc_dim)."""
    check_odd_lattice(D)
    return GeometricEncoding(torch.arange(1, D // 2 + 1, dtype=torch.float64))


@POSITIONAL.register("none")
def none(D: int, **_: object) -> IdentityEncoding:
    """No encoding: the raw (kx, ky, kz) coordinates."""
    check_odd_lattice(D)
    return IdentityEncoding()
