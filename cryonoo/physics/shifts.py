"""Sub-pixel in-plane translations by Fourier phase shifts, cryoDRGN conventions.

Conventions (pinned by ``tests/unit/test_shifts.py``):

* Shifts are in **pixels**, ``t = (tx, ty)``: ``tx`` along the columns (x, last axis), ``ty`` along
  the rows (y, second-to-last axis).
* Image content moves by ``+t``: ``f'(r) = f(r − t)``, i.e. ``F'(k) = exp(−2πi k·t)·F(k)`` with
  ``k`` in cycles/pixel. An integer shift equals ``torch.roll(f, (ty, tx), dims=(-2, -1))``.
* On a Hartley image ``H = Re F − Im F`` the same shift reads
  ``H'(k) = cos(2πk·t)·H(k) + sin(2πk·t)·H(−k)`` (cryoDRGN's ``Lattice.translate_ht``).
  On the symmetrized odd lattice ``H(−k)`` is the point reflection (both axes flipped); on a
  point-symmetric masked point set in raster order it is the reversed vector.
* For non-integer shifts the ±Nyquist row/column of the odd lattice no longer agree (the two
  copies receive opposite phases); that frequency lies outside the usual circular mask.

All functions broadcast the shift's leading axes against the data's leading axes and are
differentiable in both arguments.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["shift_fourier", "shift_ht", "shift_ht_points", "shift_images"]


def _check_tensor(x: Tensor, name: str, min_ndim: int, shape_doc: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")


def _check_shift(shift_px: Tensor) -> None:
    _check_tensor(shift_px, "shift_px", 1, "(..., 2)")
    if shift_px.shape[-1] != 2:
        raise ValueError(f"shift_px must have shape (..., 2) = (tx, ty), got {shift_px.shape}")
    if shift_px.is_complex():
        raise ValueError("shift_px must be real")


def _phase_dtype(x: Tensor) -> torch.dtype:
    """The real dtype the shift of ``x`` is computed in: that of a complex ``x``'s parts, else
    ``x``'s float32/float64, else float32 (half precision and integers are promoted: phases of
    2π·k·t need at least single precision)."""
    if x.is_complex():
        return x.real.dtype
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _phase(kx: Tensor, ky: Tensor, shift_px: Tensor) -> Tensor:
    """``2π(kx·tx + ky·ty)`` as ``(…, ny, nx)`` for ``kx`` ``(nx,)``, ``ky`` ``(ny,)``."""
    tx = shift_px[..., 0, None, None]
    ty = shift_px[..., 1, None, None]
    return 2 * math.pi * (kx * tx + ky[:, None] * ty)


def shift_images(images: Tensor, shift_px: Tensor) -> Tensor:
    """Translate real-space images by ``shift_px`` pixels (content moves by ``+t``).

    Parameters
    ----------
    images:
        ``(…, ny, nx)`` real images (periodic boundary).
    shift_px:
        ``(…, 2)`` shifts ``(tx, ty)`` in pixels, broadcast against ``images.shape[:-2]``.

    Returns
    -------
    Tensor
        ``(…, ny, nx)`` real images, the real part of ``ifft2(exp(−2πi k·t)·fft2(images))``.
    """
    _check_tensor(images, "images", 2, "(..., ny, nx)")
    _check_shift(shift_px)
    if images.is_complex():
        raise ValueError("images must be real; use shift_fourier for spectra")
    dtype = _phase_dtype(images)
    images = images.to(dtype)
    shift_px = shift_px.to(device=images.device, dtype=dtype)
    ny, nx = images.shape[-2:]
    kx = torch.fft.fftfreq(nx, dtype=dtype, device=images.device)
    ky = torch.fft.fftfreq(ny, dtype=dtype, device=images.device)
    phase = _phase(kx, ky, shift_px)
    spectrum = torch.fft.fft2(images) * torch.polar(torch.ones_like(phase), -phase)
    return torch.fft.ifft2(spectrum).real


def shift_fourier(f: Tensor, shift_px: Tensor) -> Tensor:
    """Translate images given by their centered FFT (``fft2_center``; DC at index ``n // 2``).

    Parameters
    ----------
    f:
        ``(…, ny, nx)`` complex centered spectra.
    shift_px:
        ``(…, 2)`` shifts ``(tx, ty)`` in pixels.

    Returns
    -------
    Tensor
        ``(…, ny, nx)`` complex: ``f · exp(−2πi k·t)``, ``k = (index − n//2)/n`` cycles/pixel.
    """
    _check_tensor(f, "f", 2, "(..., ny, nx)")
    _check_shift(shift_px)
    if not f.is_complex():
        raise ValueError(f"f must be a complex centered spectrum, got dtype {f.dtype}")
    dtype = _phase_dtype(f)
    shift_px = shift_px.to(device=f.device, dtype=dtype)
    ny, nx = f.shape[-2:]
    kx = (torch.arange(nx, device=f.device, dtype=dtype) - nx // 2) / nx
    ky = (torch.arange(ny, device=f.device, dtype=dtype) - ny // 2) / ny
    phase = _phase(kx, ky, shift_px)
    return f * torch.polar(torch.ones_like(phase), -phase)


def shift_ht(ht: Tensor, shift_px: Tensor) -> Tensor:
    """Translate symmetrized Hartley images on the odd lattice.

    Parameters
    ----------
    ht:
        ``(…, D, D)`` real Hartley images on the odd lattice (``D = box + 1``, frequencies
        ``linspace(−0.5, 0.5, D)`` cycles/pixel along each axis).
    shift_px:
        ``(…, 2)`` shifts ``(tx, ty)`` in pixels.

    Returns
    -------
    Tensor
        ``(…, D, D)``: ``cos(2πk·t)·H(k) + sin(2πk·t)·H(−k)``.
    """
    _check_tensor(ht, "ht", 2, "(..., D, D)")
    _check_shift(shift_px)
    d = ht.shape[-1]
    if ht.shape[-2] != d or d % 2 == 0 or d < 3:
        raise ValueError(f"ht must be (..., D, D) on the odd lattice (D odd ≥ 3), got {ht.shape}")
    if ht.is_complex():
        raise ValueError("ht must be real (a Hartley transform)")
    dtype = _phase_dtype(ht)
    ht = ht.to(dtype)
    shift_px = shift_px.to(device=ht.device, dtype=dtype)
    k = torch.linspace(-0.5, 0.5, d, dtype=torch.float64, device=ht.device).to(dtype)
    phase = _phase(k, k, shift_px)
    return torch.cos(phase) * ht + torch.sin(phase) * ht.flip(-1, -2)


def shift_ht_points(
    values: Tensor, freqs_cpx: Tensor, shift_px: Tensor, *, validate: bool = True
) -> Tensor:
    """Translate Hartley values given on a point-symmetric set of lattice points.

    Parameters
    ----------
    values:
        ``(…, N)`` Hartley values at ``freqs_cpx`` (e.g. ``ht.reshape(B, -1)[:, mask]``).
    freqs_cpx:
        ``(N, 2)`` frequencies ``[kx, ky]`` in cycles/pixel, point symmetric in raster order
        (entry ``N − 1 − i`` is ``−k_i``), e.g. ``Lattice.freqs2d[mask]``.
    shift_px:
        ``(…, 2)`` shifts ``(tx, ty)`` in pixels. For ``T`` shifts per image pass
        ``values[:, None]`` and a ``(B, T, 2)`` shift to get ``(B, T, N)``.
    validate:
        Check that ``freqs_cpx`` is point symmetric (one device synchronization).

    Returns
    -------
    Tensor
        ``(…, N)``: ``cos(2πk·t)·values + sin(2πk·t)·values.flip(-1)``.
    """
    _check_tensor(values, "values", 1, "(..., N)")
    _check_tensor(freqs_cpx, "freqs_cpx", 2, "(N, 2)")
    _check_shift(shift_px)
    n = values.shape[-1]
    if freqs_cpx.ndim != 2 or tuple(freqs_cpx.shape) != (n, 2):
        raise ValueError(
            f"freqs_cpx must have shape (N, 2) with N = values.shape[-1] = {n}, "
            f"got {tuple(freqs_cpx.shape)}"
        )
    if validate and not torch.allclose(freqs_cpx, -freqs_cpx.flip(0), atol=1e-6):
        raise ValueError("freqs_cpx must be point symmetric in raster order (k[N-1-i] = -k[i])")
    dtype = _phase_dtype(values)
    values = values.to(dtype)
    freqs = freqs_cpx.to(device=values.device, dtype=dtype)
    shift_px = shift_px.to(device=values.device, dtype=dtype)
    phase = shift_px @ (2 * math.pi * freqs).T  # 2π folded into the (N, 2) frequencies
    grad = torch.is_grad_enabled() and (values.requires_grad or shift_px.requires_grad)
    if grad or phase.shape != values.shape:
        return torch.cos(phase) * values + torch.sin(phase) * values.flip(-1)
    # the same products and sum, in place: two fewer (B, N) allocations
    cos = torch.cos(phase).mul_(values)
    return cos.add_(phase.sin_().mul_(values.flip(-1)))
