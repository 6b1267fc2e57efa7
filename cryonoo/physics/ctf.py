"""Contrast transfer function, cryoDRGN conventions.

Conventions (pinned by ``tests/unit/test_ctf.py``):

* Spatial frequencies ``freqs`` are ``(…, N, 2)`` rows ``[x, y]`` with ``x`` the **column** axis
  and ``y`` the row axis. :func:`compute_ctf` takes them in **1/Å**; :func:`ctf_from_params`
  takes lattice frequencies in **cycles/pixel** (``Lattice.freqs2d``) and divides by ``Apix``
  per particle.
* Defocus ``dfu``/``dfv`` in Å, positive = underfocus; ``dfu`` acts along the direction ``dfang``
  (degrees) measured from ``+x`` toward ``+y``. Voltage in kV, ``Cs`` in mm, amplitude contrast
  ``w`` in ``[0, 1]``, phase shift in degrees, B-factor in Å².
* The sign is cryoDRGN's: ``CTF(0) = −w`` (negative at low frequency).
* A CTF parameter row is cryoDRGN's ``ctf.pkl`` without its first column:
  ``[Apix, dfu, dfv, dfang, kV, Cs, w, phase]`` (``Batch.ctf``, shape ``(B, 8)``).

Everything is computed in float32 unless a float64 tensor is given, and is differentiable with
respect to the frequencies and every parameter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CTF_PARAM_NAMES",
    "compute_ctf",
    "ctf_from_params",
    "ctf_params_for_box",
    "electron_wavelength",
]

#: Column names of a ``(B, 8)`` CTF parameter tensor.
CTF_PARAM_NAMES = ("apix_A", "dfu_A", "dfv_A", "dfang_deg", "volt_kV", "cs_mm", "w", "phase_deg")

ParamLike = Tensor | float


def _is_f64(x: object) -> bool:
    return isinstance(x, Tensor) and x.dtype == torch.float64


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")


def _param(x: ParamLike, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A scalar, ``(B,)`` (→ ``(B, 1)``) or already-broadcastable parameter tensor."""
    t = x.to(device) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=dtype, device=device)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got {t.dtype}")
    t = t.to(dtype)
    return t[:, None] if t.ndim == 1 else t


def electron_wavelength(volt_kv: ParamLike) -> Tensor:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV.

    ``λ = 12.2639 / sqrt(V + 0.97845e-6·V²)`` with ``V`` in volts (cryoDRGN's constants).
    """
    v = torch.as_tensor(volt_kv)
    v = (v if v.is_floating_point() else v.to(torch.float32)) * 1e3
    return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)


def compute_ctf(
    freqs: Tensor,
    dfu: ParamLike,
    dfv: ParamLike,
    dfang: ParamLike,
    volt: ParamLike,
    cs: ParamLike,
    w: ParamLike,
    phase_shift: ParamLike = 0,
    bfactor: ParamLike | None = None,
    scalefactor: ParamLike | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    """The CTF at spatial frequencies ``freqs`` (1/Å), cryoDRGN's formula and sign.

    With ``x, y = freqs[..., 0], freqs[..., 1]``, ``s² = x² + y²``, ``α = atan2(y, x)``::

        λ  = 12.2639 / sqrt(V + 0.97845e-6·V²)            (Å; V = 1000·volt)
        df = ½[dfu + dfv + (dfu − dfv)·cos(2(α − dfang))]  (Å)
        γ  = 2π(−½·df·λ·s² + ¼·Cs·λ³·s⁴) − phase_shift     (Cs = 1e7·cs Å; angles in radians)
        CTF = sqrt(1 − w²)·sin γ − w·cos γ   [· scalefactor] [· exp(−bfactor·s²/4)]

    ``df·s²`` is evaluated as ``½[(dfu+dfv)s² + (dfu−dfv)((x²−y²)cos 2θ + 2xy sin 2θ)]``, the
    same quantity without ``atan2`` (smooth at ``s = 0``).

    Parameters
    ----------
    freqs:
        ``(N, 2)`` or ``(…, N, 2)`` frequencies in 1/Å, ``x`` (columns) first.
    dfu, dfv:
        Defocus in Å along ``dfang`` and perpendicular to it (positive = underfocus).
    dfang:
        Astigmatism angle in degrees, from ``+x`` toward ``+y``.
    volt:
        Acceleration voltage in kV (> 0).
    cs:
        Spherical aberration in mm (≥ 0).
    w:
        Amplitude contrast in ``[0, 1]``.
    phase_shift:
        Additional phase shift in degrees (phase plate).
    bfactor:
        Optional B-factor in Å²: envelope ``exp(−B·s²/4)``.
    scalefactor:
        Optional multiplicative scale.

    Every parameter is a Python number, a 0-d tensor, a ``(B,)`` tensor (one value per particle,
    treated as ``(B, 1)``) or a tensor broadcastable against ``freqs.shape[:-1]``.

    Returns
    -------
    Tensor
        ``(B, N)`` for ``(B,)`` parameters (``(N,)`` for scalars; in general the broadcast of
        ``freqs.shape[:-1]`` with the parameter shapes).
    """
    if not isinstance(freqs, Tensor):
        raise TypeError(f"freqs must be a torch.Tensor, got {type(freqs).__name__}")
    if freqs.ndim < 2 or freqs.shape[-1] != 2:
        raise ValueError(f"freqs must have shape (N, 2) or (..., N, 2), got {tuple(freqs.shape)}")
    given = (freqs, dfu, dfv, dfang, volt, cs, w, phase_shift, bfactor, scalefactor)
    dtype = torch.float64 if any(_is_f64(x) for x in given) else torch.float32
    dev = freqs.device
    freqs = freqs.to(dtype)
    names = ("dfu", "dfv", "dfang", "volt", "cs", "w", "phase_shift")
    values = (dfu, dfv, dfang, volt, cs, w, phase_shift)
    dfu_, dfv_, ang_, volt_, cs_, w_, ph_ = (
        _param(v, n, dtype, dev) for n, v in zip(names, values, strict=True)
    )
    b_ = None if bfactor is None else _param(bfactor, "bfactor", dtype, dev)
    sf_ = None if scalefactor is None else _param(scalefactor, "scalefactor", dtype, dev)
    params = dict(zip(names, (dfu_, dfv_, ang_, volt_, cs_, w_, ph_), strict=True))
    params.update({k: v for k, v in (("bfactor", b_), ("scalefactor", sf_)) if v is not None})
    try:
        torch.broadcast_shapes(freqs.shape[:-1], *(p.shape for p in params.values()))
    except RuntimeError:
        shapes = {k: tuple(v.shape) for k, v in params.items()}
        raise ValueError(
            f"CTF parameters must be scalars, (B,) or broadcastable against freqs.shape[:-1]="
            f"{tuple(freqs.shape[:-1])}; got shapes {shapes}"
        ) from None
    if validate:
        _check_finite(freqs, "freqs")
        for name, p in params.items():
            _check_finite(p, name)
        if bool((volt_ <= 0).any()):
            raise ValueError("volt (kV) must be > 0")
        if bool((cs_ < 0).any()):
            raise ValueError("cs (mm) must be ≥ 0")
        if bool(((w_ < 0) | (w_ > 1)).any()):
            raise ValueError("w (amplitude contrast) must lie in [0, 1]")

    lam = electron_wavelength(volt_)
    x, y = freqs[..., 0], freqs[..., 1]
    xx, yy = x * x, y * y
    s2 = xx + yy
    two_ang = 2 * torch.deg2rad(ang_)
    df_s2 = 0.5 * (
        (dfu_ + dfv_) * s2
        + (dfu_ - dfv_) * ((xx - yy) * torch.cos(two_ang) + 2 * x * y * torch.sin(two_ang))
    )
    cs_a = cs_ * 1e7
    gamma = 2 * math.pi * (-0.5 * lam * df_s2 + 0.25 * cs_a * lam**3 * s2 * s2)
    gamma = gamma - torch.deg2rad(ph_)
    ctf = torch.sqrt(1 - w_ * w_) * torch.sin(gamma) - w_ * torch.cos(gamma)
    if sf_ is not None:
        ctf = ctf * sf_
    if b_ is not None:
        ctf = ctf * torch.exp(-b_ * s2 / 4)
    return ctf


def _check_params(params: Tensor, name: str = "params") -> Tensor:
    if not isinstance(params, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(params).__name__}")
    if params.ndim != 2 or params.shape[-1] != 8:
        raise ValueError(
            f"{name} must have shape (B, 8) = [Apix, dfu, dfv, dfang, kV, cs, w, phase], "
            f"got {tuple(params.shape)}"
        )
    return params


def ctf_from_params(
    freqs_cpx: Tensor,
    params: Tensor,
    *,
    bfactor: ParamLike | None = None,
    validate: bool = True,
) -> Tensor:
    """The CTF of each particle on lattice frequencies given in cycles/pixel.

    Parameters
    ----------
    freqs_cpx:
        ``(N, 2)`` frequencies in cycles/pixel (e.g. ``Lattice.freqs2d[mask]``), or ``(B, N, 2)``.
    params:
        ``(B, 8)`` ``[Apix_Å, dfu_Å, dfv_Å, dfang_deg, volt_kV, cs_mm, w, phase_deg]``
        (cryoDRGN ``ctf.pkl`` columns 1–8, i.e. ``Batch.ctf``).
    bfactor:
        Optional B-factor in Å² (scalar or ``(B,)``).

    Returns
    -------
    Tensor
        ``(B, N)``: :func:`compute_ctf` at ``freqs_cpx / Apix`` for each particle.
    """
    _check_params(params)
    if not isinstance(freqs_cpx, Tensor) or freqs_cpx.ndim not in (2, 3):
        shape = tuple(freqs_cpx.shape) if isinstance(freqs_cpx, Tensor) else type(freqs_cpx)
        raise ValueError(f"freqs_cpx must have shape (N, 2) or (B, N, 2), got {shape}")
    if freqs_cpx.shape[-1] != 2:
        raise ValueError(f"freqs_cpx must have shape (N, 2) or (B, N, 2), got {freqs_cpx.shape}")
    apix = params[:, 0]
    if validate and bool((apix.detach() <= 0).any()):
        raise ValueError("params[:, 0] (Apix, Å/pixel) must be > 0")
    if freqs_cpx.ndim == 2 and bfactor is None:
        if validate:  # same checks as compute_ctf, then the fast path
            compute_ctf(freqs_cpx[:1] / apix[:, None, None], *params[:, 1:].unbind(-1))
        return _ctf_shared_freqs(freqs_cpx, params)
    freqs = freqs_cpx / apix[:, None, None].to(freqs_cpx.dtype)
    return compute_ctf(freqs, *params[:, 1:].unbind(-1), bfactor=bfactor, validate=validate)


def _ctf_shared_freqs(freqs_cpx: Tensor, params: Tensor) -> Tensor:
    """:func:`compute_ctf` for ``(N, 2)`` frequencies shared by all particles, as one matmul.

    ``γ`` is linear in the per-frequency features ``[s², x² − y², 2xy, s⁴]`` (cycles/px), with
    per-particle coefficients that absorb the pixel size, defocus, astigmatism and Cs:

    ``γ = c0·s² + c1·(x² − y²) + c2·2xy + c3·s⁴ − phase``, so the CTF costs one ``(B, 4) @ (4, N)``
    product and one sine per value (the amplitude contrast folded into the phase offset)
    instead of a dozen elementwise passes.
    """
    dtype = torch.promote_types(freqs_cpx.dtype, params.dtype)
    f = freqs_cpx.to(dtype)
    p = params.to(dtype)
    x, y = f[:, 0], f[:, 1]
    s2 = x * x + y * y
    feats = torch.stack([s2, x * x - y * y, 2 * x * y, s2 * s2])  # (4, N)
    apix, dfu, dfv, dfang, volt, cs, w, phase = p.unbind(-1)
    lam = electron_wavelength(volt)
    inv_a2 = 1.0 / (apix * apix)
    two_ang = 2 * torch.deg2rad(dfang)
    k = -0.5 * math.pi * lam * inv_a2  # 2π·(−½λ)·½ per Å⁻² → per (cycles/px)²
    coeffs = torch.stack(
        [
            k * (dfu + dfv),
            k * (dfu - dfv) * torch.cos(two_ang),
            k * (dfu - dfv) * torch.sin(two_ang),
            0.5 * math.pi * (cs * 1e7) * lam**3 * inv_a2 * inv_a2,
        ],
        dim=-1,
    )  # (B, 4)
    # √(1 − w²)·sin γ − w·cos γ = sin(γ − asin w): one sine per value, computed in place
    offset = torch.deg2rad(phase) + torch.asin(w)
    return torch.addmm(-offset[:, None], coeffs, feats).sin_()


def ctf_params_for_box(ctf_pkl_array: np.ndarray | Tensor, box: int) -> Tensor:
    """cryoDRGN ``ctf.pkl`` rows → ``(N, 8)`` float32 CTF parameters for images of ``box`` pixels.

    ``ctf_pkl_array`` is ``(N, 9)`` ``[D_px, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]``. As in
    cryoDRGN's ``load_ctf_for_training``, the pixel size of **every** row becomes
    ``D0·Apix0 / box`` from row 0 (images rescaled to ``box`` pixels keep their physical size) and
    the ``D`` column is dropped. The input is not modified.
    """
    if isinstance(ctf_pkl_array, Tensor):
        arr = ctf_pkl_array.detach().to("cpu", torch.float64)
    else:
        arr = torch.from_numpy(np.array(ctf_pkl_array, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise ValueError(
            "ctf_pkl_array must have shape (N, 9) = [D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase], "
            f"got {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise ValueError("ctf_pkl_array must have at least one row")
    if isinstance(box, bool) or not isinstance(box, int | np.integer) or box <= 0 or box % 2:
        raise ValueError(f"box must be a positive even integer (image size in pixels), got {box!r}")
    out = arr[:, 1:].clone()
    if not bool(torch.isfinite(out).all()):
        raise ValueError("ctf_pkl_array must be finite")
    apix = float(arr[0, 0]) * float(arr[0, 1]) / int(box)
    if not apix > 0:
        raise ValueError(
            f"ctf_pkl_array row 0 must have D > 0 and Apix > 0, got {arr[0, :2].tolist()}"
        )
    out[:, 0] = apix
    return out.to(torch.float32)
