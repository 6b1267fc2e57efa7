"""Additive white Gaussian noise at a target SNR, and the radial-power noise-level estimator.

Conventions:

* **SNR** follows CryoBench's ``add_noise.py``: ``SNR = Var(clean) / σ²`` where ``Var(clean)`` is
  the population variance (ddof 0) of **all pixels of all given noise-free images pooled**, about
  their global mean, background included. Hence ``σ = std(clean) / sqrt(SNR)``, in the units of
  the images. Noise is i.i.d. ``N(0, σ²)`` per pixel, drawn from a ``torch.Generator``.
* :func:`estimate_noise_sigma` implements the radially averaged high-frequency power estimator
  (the paper's Algorithm 1) on the **unnormalized** DFT ``F = fft2(x)``: white noise of std σ
  has ``E|F(k)|² = D²σ²`` at every frequency. Per image, the power ``|F|²`` is averaged over each
  radial bin ``b = round(|k|)`` (integer frequency coordinates ``−D/2 … D/2−1``, or
  ``−(D−1)/2 … (D−1)/2`` for odd ``D``); the bins ``k_thresh < b ≤ D//2`` are averaged with equal
  weight into ``P_n``, and ``σ_n = sqrt(P_n / D²)``. The estimate is ``σ = mean_n σ_n``. The
  default ``k_thresh = floor(0.8·D/2)`` keeps the outer fifth of the spectrum, where signal power
  is small; leaked signal can only bias σ **upward**.
* Estimate on the images as fed to the model but before any real-space window or normalization:
  a window makes the noise non-white and lowers its power by the window's mean square.
* Accumulation is float64. Everything is vectorized over images; a huge stack (anything with
  ``len()`` and slicing, e.g. a numpy memmap) can be streamed in chunks of ``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["NoiseEstimate", "add_gaussian_noise", "estimate_noise_sigma", "sigma_for_snr"]


@dataclass(frozen=True, eq=False)
class NoiseEstimate:
    """Result of :func:`estimate_noise_sigma`.

    Attributes
    ----------
    sigma:
        Mean of the per-image estimates, in the units of the images.
    per_image:
        ``(N,)`` float64 per-image estimates ``σ_n`` (on the device the work ran on).
    k_thresh:
        The radial bin threshold used (bins ``k_thresh < b ≤ D//2`` were averaged).
    """

    sigma: float
    per_image: Tensor
    k_thresh: int


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.is_complex() or images.ndim < 2:
        raise ValueError(f"{name} must be real with shape (…, ny, nx), got {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def sigma_for_snr(images: Tensor, snr: float) -> float:
    """Noise std ``σ = std(images) / sqrt(snr)`` for a target SNR.

    ``images`` ``(…, ny, nx)`` are noise-free; the std is the population std (ddof 0) over all
    pixels of all images pooled, about the global mean, computed in float64.
    """
    _check_images(images)
    if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    std = float(images.to(torch.float64).std(correction=0))
    if std == 0:
        raise ValueError("images have zero variance, so an SNR is undefined")
    return std / math.sqrt(snr)


def add_gaussian_noise(
    images: Tensor,
    sigma: float | None = None,
    snr: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """Add i.i.d. ``N(0, σ²)`` noise to ``images``; give exactly one of ``sigma`` and ``snr``.

    Parameters
    ----------
    images:
        ``(…, ny, nx)`` noise-free real images (any float dtype, any device).
    sigma:
        Noise std in image units (≥ 0).
    snr:
        Target SNR (> 0), converted with :func:`sigma_for_snr` (pooled-pixel variance / σ²).
    generator:
        Source of randomness; its device may differ from the images' (the noise is drawn on the
        generator's device and moved), so a CPU generator gives the same noise everywhere.

    Returns
    -------
    (noisy, sigma)
        ``noisy`` has the shape, dtype and device of ``images``; ``sigma`` is the std used.
    """
    _check_images(images)
    if (sigma is None) == (snr is None):
        raise ValueError("give exactly one of sigma and snr")
    if snr is not None:
        sigma = sigma_for_snr(images, snr)
    elif not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
    assert sigma is not None
    dtype = images.dtype if images.is_floating_point() else torch.float32
    gen_device = generator.device if generator is not None else images.device
    noise = torch.randn(images.shape, generator=generator, dtype=dtype, device=gen_device)
    noisy = images.to(dtype) + float(sigma) * noise.to(images.device)
    return noisy, float(sigma)


def _bin_weights(D: int, k_thresh: int, device: torch.device) -> Tensor:
    """``(D, D//2 + 1)`` weights on the ``rfft2`` half-plane such that ``Σ w·|F|²`` is the
    equal-weight mean over bins ``k_thresh < b ≤ D//2`` of the radially averaged full-plane power.

    Columns other than 0 (and ``D/2`` for even ``D``) stand for themselves and their Hermitian
    mirror, which has the same radius and power, so they count twice.
    """
    k = torch.fft.fftfreq(D, d=1.0 / D, dtype=torch.float64, device=device)
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    b = torch.round(r).long().reshape(-1)  # no ties: r² is an integer
    counts = torch.bincount(b, minlength=D // 2 + 1).to(torch.float64)
    selected = (b > k_thresh) & (b <= D // 2)
    n_bins = D // 2 - k_thresh
    w_full = torch.where(selected, 1.0 / (counts[b] * n_bins), 0.0).reshape(D, D)
    half = D // 2 + 1
    w = w_full[:, :half].clone()
    mirrored = torch.ones(half, dtype=torch.bool, device=device)
    mirrored[0] = False
    if D % 2 == 0:
        mirrored[-1] = False
    w[:, mirrored] *= 2.0
    return w


def _sigma_chunk(x: Tensor, w: Tensor) -> Tensor:
    """``(…, D, D)`` images → ``(…,)`` per-image σ_n, float64."""
    D = x.shape[-1]
    f = torch.fft.rfft2(x.to(torch.float64))
    power = f.real**2 + f.imag**2
    p = (power * w).sum(dim=(-2, -1))
    return torch.sqrt(p / D**2)


def estimate_noise_sigma(
    images: Any,
    k_thresh: int | None = None,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> NoiseEstimate:
    """Estimate the white-noise std of an image stack from its high-frequency radial power.

    Parameters
    ----------
    images:
        ``(N, D, D)`` (or ``(…, D, D)``) real images as a tensor or numpy array; with
        ``batch_size``, any object with ``len()`` whose slices ``images[i:j]`` are arrays or
        tensors of shape ``(j − i, D, D)`` (e.g. a numpy memmap), read one chunk at a time.
    k_thresh:
        Bins ``b`` with ``k_thresh < b ≤ D//2`` are used; default ``floor(0.8·D/2)``.
        Must satisfy ``0 ≤ k_thresh < D//2``.
    batch_size:
        Images per chunk; ``None`` processes everything at once.
    device:
        Where to compute; default the tensor's device (CPU for arrays).

    Returns
    -------
    NoiseEstimate
        ``sigma`` (float) and ``per_image`` ``(N,)`` (or the leading shape ``(…)``).
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    def to_tensor(chunk: Any) -> Tensor:
        if not isinstance(chunk, Tensor):
            chunk = torch.from_numpy(np.array(chunk, dtype=np.float64, copy=True))
        if device is not None:
            chunk = chunk.to(device)
        _check_images(chunk)
        D = chunk.shape[-1]
        if chunk.shape[-2] != D:
            raise ValueError(f"images must be square (…, D, D), got {tuple(chunk.shape)}")
        if D < 8:
            raise ValueError(f"images must be at least 8×8, got D = {D}")
        return chunk

    if batch_size is None:
        chunks: Any = [to_tensor(images)]
        n_total = None
    else:
        n_total = len(images)
        if n_total == 0:
            raise ValueError("images is empty")
        chunks = (to_tensor(images[i : i + batch_size]) for i in range(0, n_total, batch_size))

    results: list[Tensor] = []
    w: Tensor | None = None
    D = -1
    for chunk in chunks:
        if w is None:
            D = chunk.shape[-1]
            if k_thresh is None:
                k_thresh = math.floor(0.8 * D / 2)
            if not isinstance(k_thresh, int) or not 0 <= k_thresh < D // 2:
                raise ValueError(f"k_thresh must be an integer in [0, {D // 2}), got {k_thresh!r}")
            w = _bin_weights(D, k_thresh, chunk.device)
        elif chunk.shape[-2:] != (D, D):
            raise ValueError(f"images chunk has shape {tuple(chunk.shape)}, expected (…, {D}, {D})")
        results.append(_sigma_chunk(chunk, w.to(chunk.device)))
    per_image = results[0] if len(results) == 1 else torch.cat(results)
    assert k_thresh is not None
    return NoiseEstimate(sigma=float(per_image.mean()), per_image=per_image, k_thresh=k_thresh)
