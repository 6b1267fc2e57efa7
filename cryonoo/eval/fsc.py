"""Fourier shell correlation (FSC), its area under the curve and resolution, as in CryoBench.

Conventions (identical to cryoDRGN 4.3 ``get_fsc_curve``, which CryoBench copies):

* Inputs are real cubic volumes ``(…, n, n, n)`` indexed ``[z, y, x]``, ``n`` even. An optional
  real-space mask ``(n, n, n)`` multiplies **both** volumes before the transform.
* Spectra are the centered, unnormalized 3-D DFT ``fftshift(fftn(fftshift(v)))`` computed in
  **float64** (float32 input is promoted; round-off would otherwise dominate high shells).
* The radius is measured on the integer frequency grid ``−n/2 … n/2−1`` per axis. The curve has
  ``n/2`` entries: entry ``0`` is fixed at ``1.0``; entry ``i ≥ 1`` is the shell
  ``i − 1 ≤ r < i`` (entry 1 is the DC voxel alone, so it is ±1). Voxels with ``r ≥ n/2 − 1``,
  the Nyquist shell and the corners, are never used.
* ``FSC_i = Re Σ conj(A)·B / sqrt(Σ|A|² · Σ|B|²)`` over the shell. Entry ``i`` is labelled
  ``freq_px = i/n`` cycles/pixel (divide by the pixel size for 1/Å).
* Zero-power guard: cryoDRGN returns 1.0 when a shell's denominator is exactly 0, so an all-zero
  volume would score the maximum. Here such shells get **FSC = 0** by default (a shell without
  power carries no evidence of agreement). ``zero_power="cryodrgn"`` restores 1.0 for parity;
  ``zero_power="raise"`` raises when a volume has no power at all and otherwise keeps 1.0.
  Zero-power shells essentially never occur in float data, with one exception worth knowing:
  a volume whose voxels sum to exactly 0 has a zero DC entry (entry 1).
* :func:`fsc_auc` integrates with the trapezoid rule over the ``n/2`` points, so the maximum is
  ``0.5 − 1/n`` (0.484375 at n = 64), not 0.5.

Everything is batched over leading axes (which broadcast between the two volumes) and runs on the
volumes' device; shell sums use one ``index_add_`` over a precomputed shell index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["FSCCurve", "fsc_auc", "fsc_curve", "fsc_resolution"]

ZeroPower = Literal["zero", "cryodrgn", "raise"]
_DIMS3 = (-3, -2, -1)


@dataclass(frozen=True, eq=False)
class FSCCurve:
    """An FSC curve in CryoBench's layout.

    Attributes
    ----------
    freq_px:
        ``(n/2,)`` float64 frequencies ``i/n`` in cycles/pixel, ``0 … 0.5 − 1/n``.
    fsc:
        ``(…, n/2)`` float64 correlations; entry 0 is 1.0 by definition.
    """

    freq_px: Tensor
    fsc: Tensor

    @property
    def box(self) -> int:
        """Box size ``n`` of the volumes the curve was computed from."""
        return 2 * self.freq_px.shape[-1]

    def freq_angstrom(self, apix: float) -> Tensor:
        """``(n/2,)`` frequencies in 1/Å for a pixel size ``apix`` (Å/pixel)."""
        if not apix > 0:
            raise ValueError(f"apix must be > 0, got {apix!r}")
        return self.freq_px / apix


def _as_volume(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape (…, n, n, n), got {tuple(x.shape)}")
    n = x.shape[-1]
    if x.shape[-3:] != (n, n, n):
        raise ValueError(f"{name} must be cubic (…, n, n, n), got {tuple(x.shape)}")
    if n < 2 or n % 2:
        raise ValueError(f"{name} must have an even box n ≥ 2, got n = {n}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x.to(torch.float64)


def _shell_index(n: int, device: torch.device) -> Tensor:
    """``(n³,)`` curve entry of each voxel in **unshifted** FFT order; ``n/2`` marks unused voxels.

    Entry ``i = floor(r) + 1`` holds ``i − 1 ≤ r < i``; the integer ``r²`` makes ``sqrt`` exact on
    perfect squares, so the floor never lands on the wrong side of a shell edge.
    """
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    idx = torch.floor(torch.sqrt(r2)).long() + 1
    return idx.clamp_(max=n // 2).reshape(-1)


def fsc_curve(
    vol_a: Tensor | np.ndarray,
    vol_b: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    *,
    zero_power: ZeroPower = "zero",
) -> FSCCurve:
    """FSC between real volumes ``vol_a`` and ``vol_b``, float64, cryoDRGN's shell definition.

    Parameters
    ----------
    vol_a, vol_b:
        ``(…, n, n, n)`` real volumes, ``n`` even; leading axes broadcast against each other
        (e.g. a batch of decoded volumes against one ground truth).
    mask:
        Optional ``(n, n, n)`` real-space mask multiplied into both volumes before the FFT.
    zero_power:
        Value of a shell whose ``Σ|A|² · Σ|B|²`` is exactly 0: ``"zero"`` (default) → 0;
        ``"cryodrgn"`` → 1.0 as in cryoDRGN/CryoBench; ``"raise"`` → ``ValueError`` if either
        volume has zero power over all used shells, else 1.0.

    Returns
    -------
    FSCCurve
        ``freq_px`` ``(n/2,)`` and ``fsc`` ``(broadcast(…), n/2)``, on the volumes' device.
    """
    a = _as_volume(vol_a, "vol_a")
    b = _as_volume(vol_b, "vol_b")
    if a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"vol_b has shape {tuple(b.shape)}, incompatible with vol_a {a.shape}")
    if a.device != b.device:
        raise ValueError(f"vol_b is on {b.device}, vol_a on {a.device}")
    try:
        batch = torch.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    except RuntimeError:
        raise ValueError(
            f"leading axes of vol_a {tuple(a.shape)} and vol_b {tuple(b.shape)} do not broadcast"
        ) from None
    if zero_power not in ("zero", "cryodrgn", "raise"):
        raise ValueError(f"zero_power must be 'zero', 'cryodrgn' or 'raise', got {zero_power!r}")
    n = a.shape[-1]
    if mask is not None:
        m = _as_volume(mask, "mask")
        if m.shape != a.shape[-3:]:
            raise ValueError(f"mask must have shape {tuple(a.shape[-3:])}, got {tuple(m.shape)}")
        m = m.to(a.device)
        a, b = a * m, b * m

    # The input fftshift multiplies the spectrum by (−1)^(kx+ky+kz), identically for both volumes,
    # and the output fftshift only permutes voxels: neither changes a shell sum, so the sums are
    # taken on the plain FFT with the shell index laid out in unshifted order.
    fa = torch.fft.fftn(a, dim=_DIMS3).reshape(*a.shape[:-3], -1)
    fb = torch.fft.fftn(b, dim=_DIMS3).reshape(*b.shape[:-3], -1)
    cross = (fa.real * fb.real + fa.imag * fb.imag).expand(*batch, -1)
    idx = _shell_index(n, a.device)
    n_out = n // 2 + 1  # entries 0 … n/2 − 1 plus one bin for unused voxels

    def shell_sum(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.zeros(flat.shape[0], n_out, dtype=torch.float64, device=x.device)
        out.index_add_(1, idx, flat)
        return out.reshape(*x.shape[:-1], n_out)[..., : n // 2]

    s_ab = shell_sum(cross)
    p_a = shell_sum(fa.real**2 + fa.imag**2)
    p_b = shell_sum(fb.real**2 + fb.imag**2)
    denom = torch.sqrt(p_a * p_b)
    if zero_power == "raise":
        for name, p in (("vol_a", p_a), ("vol_b", p_b)):
            if bool((p[..., 1:].sum(-1) == 0).any()):
                raise ValueError(f"{name} has zero power in every FSC shell (all-zero volume?)")
    fill = 0.0 if zero_power == "zero" else 1.0
    zero = denom == 0
    fsc = torch.where(zero, fill, s_ab / torch.where(zero, 1.0, denom))
    fsc[..., 0] = 1.0
    freq = torch.arange(n // 2, dtype=torch.float64, device=a.device) / n
    return FSCCurve(freq_px=freq, fsc=fsc)


def fsc_auc(curve: FSCCurve, sign_rule: Literal["abs", "clip"] = "abs") -> Tensor:
    """Area under the FSC curve, as CryoBench computes ``FSC_AUC``.

    Trapezoid rule over the ``n/2`` points ``freq_px = 0 … 0.5 − 1/n`` (``sklearn.metrics.auc``),
    no interpolation and no extension to 0.5, so identical volumes give ``0.5 − 1/n``.

    Parameters
    ----------
    curve:
        An :class:`FSCCurve`.
    sign_rule:
        ``"abs"`` integrates ``|FSC|`` (CryoBench's per-image script; a contrast-inverted volume
        scores the maximum). ``"clip"`` integrates FSC clipped to ``[0, 1]`` (CryoBench's plotting
        script; a contrast-inverted volume scores ``1/(2n)``).

    Returns
    -------
    Tensor
        ``(…)`` float64 AUC per curve, in cycles/pixel units.
    """
    if sign_rule == "abs":
        y = curve.fsc.abs()
    elif sign_rule == "clip":
        y = curve.fsc.clamp(0.0, 1.0)
    else:
        raise ValueError(f"sign_rule must be 'abs' or 'clip', got {sign_rule!r}")
    return torch.trapezoid(y, x=curve.freq_px, dim=-1)


def fsc_resolution(
    curve: FSCCurve,
    threshold: float = 0.5,
    apix: float = 1.0,
    rule: Literal["last", "first"] = "last",
) -> Tensor:
    """Resolution in Å at which the FSC meets ``threshold`` (typically 0.5 or 0.143).

    Parameters
    ----------
    curve:
        An :class:`FSCCurve` with ``fsc`` of shape ``(…, n/2)``.
    threshold:
        FSC threshold in ``(0, 1)``.
    apix:
        Pixel size in Å/pixel.
    rule:
        ``"last"`` is cryoDRGN's ``get_fsc_thresholds`` rule: the **highest** entry whose FSC
        is ≥ ``threshold`` (no interpolation; the curve may dip and recover), resolution
        ``apix / freq_px``. Entry 1 (the DC voxel) is usually +1, so two unrelated volumes report
        ``n·apix``; if only entry 0 qualifies the result is ``inf``.
        ``"first"``: the first entry whose FSC drops **below** ``threshold``, linearly
        interpolated in frequency with the entry before it. If the curve never drops below the
        threshold, ``2·apix`` (Nyquist) is returned, as CryoBench's ``get_fsc_cutoff`` does.

    Returns
    -------
    Tensor
        ``(…)`` float64 resolution in Å.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if not apix > 0:
        raise ValueError(f"apix must be > 0, got {apix!r}")
    fsc, freq = curve.fsc, curve.freq_px.to(curve.fsc.device)
    if rule == "last":
        entries = torch.arange(fsc.shape[-1], device=fsc.device)
        last = torch.where(fsc >= threshold, entries, 0).amax(dim=-1)
        return apix / freq[last]  # freq 0 → inf
    if rule == "first":
        below = fsc < threshold
        first = torch.argmax(below.to(torch.uint8), dim=-1).clamp(min=1)
        f_hi = fsc.gather(-1, first[..., None])[..., 0]
        f_lo = fsc.gather(-1, (first - 1)[..., None])[..., 0]
        t = (f_lo - threshold) / (f_lo - f_hi)  # f_lo ≥ threshold > f_hi, so 0 ≤ t < 1
        x = freq[first - 1] + t * (freq[first] - freq[first - 1])
        res = apix / x
        return torch.where(below.any(dim=-1), res, torch.full_like(res, 2.0 * apix))
    raise ValueError(f"rule must be 'last' or 'first', got {rule!r}")
