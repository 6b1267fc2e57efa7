"""Image formation for simulated datasets: projection, CTF, translation, contrast.

Pure functions; writing a whole dataset directory lives in :mod:`cryonoo.data.simulate`.

The model (as in CryoBench, cryoDRGN conventions throughout)::

    image = contrast · iHT( shift_t( CTF · Slice_R( HT3(V) ) ) )

* ``Slice_R`` is the central slice at pose ``R`` of the volume's 3-D Hartley spectrum
  (:func:`cryonoo.physics.slice.extract_central_slices`), i.e. the spectrum of the projection
  ``Σ_z V(Rᵀ(x, y, z))``;
* the CTF (cryoDRGN's formula, ``CTF(0) = −w``) multiplies the Hartley image directly (it is real
  and even);
* ``shift_t`` moves the image content by ``t`` pixels;
* ``contrast = −1`` by default: the stack holds *white*, contrast-inverted particles as RELION and
  cryoSPARC export them, which is what cryoDRGN's default data inversion expects; a model trained
  with the default preprocessing then reconstructs positive density.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from cryonoo.physics.ctf import ctf_from_params
from cryonoo.physics.fft import ht3_center, iht2_center, symmetrize_ht3, unsymmetrize_ht
from cryonoo.physics.lattice import lattice_freqs
from cryonoo.physics.shifts import shift_ht
from cryonoo.physics.slice import extract_central_slices

__all__ = [
    "CTFDistribution",
    "project_images",
    "sample_ctf_params",
    "sample_shifts",
    "volume_spectrum",
]


@dataclass(frozen=True)
class CTFDistribution:
    """How CTF parameters are drawn per particle (CryoBench-like defaults).

    ``dfu ~ U(defocus_min_A, defocus_max_A)``, ``dfv = dfu + N(0, astigmatism_std_A²)``,
    ``dfang ~ U(−90°, 90°)``; voltage, Cs, amplitude contrast and phase shift fixed.
    """

    defocus_min_A: float = 10_000.0
    defocus_max_A: float = 25_000.0
    astigmatism_std_A: float = 300.0
    volt_kV: float = 300.0
    cs_mm: float = 2.7
    w: float = 0.1
    phase_deg: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.defocus_min_A <= self.defocus_max_A:
            raise ValueError(
                f"need 0 < defocus_min_A ≤ defocus_max_A, got "
                f"{self.defocus_min_A}, {self.defocus_max_A}"
            )
        if self.volt_kV <= 0 or self.cs_mm < 0 or not 0 <= self.w <= 1:
            raise ValueError("volt_kV must be > 0, cs_mm ≥ 0 and 0 ≤ w ≤ 1")


def sample_ctf_params(
    n: int, box: int, apix: float, dist: CTFDistribution, rng: np.random.Generator
) -> np.ndarray:
    """``(n, 9)`` float32 rows ``[box, apix, dfu, dfv, dfang, kV, Cs, w, phase]`` (ctf.pkl)."""
    dfu = rng.uniform(dist.defocus_min_A, dist.defocus_max_A, n)
    dfv = dfu + rng.normal(0.0, dist.astigmatism_std_A, n)
    dfang = rng.uniform(-90.0, 90.0, n)
    fixed = np.array([dist.volt_kV, dist.cs_mm, dist.w, dist.phase_deg])
    out = np.empty((n, 9), dtype=np.float64)
    out[:, 0], out[:, 1] = box, apix
    out[:, 2], out[:, 3], out[:, 4] = dfu, dfv, dfang
    out[:, 5:] = fixed
    return out.astype(np.float32)


def sample_shifts(n: int, extent_px: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` in-plane shifts ``U[−extent, extent]²`` pixels (float64)."""
    if extent_px < 0:
        raise ValueError(f"extent_px must be ≥ 0, got {extent_px}")
    return rng.uniform(-extent_px, extent_px, (n, 2)) if extent_px > 0 else np.zeros((n, 2))


def volume_spectrum(volume: Tensor) -> Tensor:
    """``(n, n, n)`` real volume → ``(n+1, n+1, n+1)`` symmetrized centered Hartley spectrum."""
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or volume.shape[0] % 2:
        raise ValueError(f"volume must be (n, n, n) with n even, got {tuple(volume.shape)}")
    return symmetrize_ht3(ht3_center(volume))


def project_images(
    spectrum: Tensor,
    rot: Tensor,
    ctf_params: Tensor | None = None,
    shift_px: Tensor | None = None,
    *,
    contrast: float = -1.0,
) -> Tensor:
    """Noise-free images of one volume.

    Parameters
    ----------
    spectrum:
        ``(D, D, D)`` from :func:`volume_spectrum` (``D = n + 1``).
    rot:
        ``(B, 3, 3)`` poses.
    ctf_params:
        ``(B, 8)`` ``[Apix, dfu, dfv, dfang, kV, cs, w, phase]`` or ``None`` (no CTF).
    shift_px:
        ``(B, 2)`` content shifts in pixels or ``None``.
    contrast:
        Multiplier of the final image (−1: white particles, see the module docstring).

    Returns
    -------
    ``(B, n, n)`` real images.
    """
    D = spectrum.shape[-1]
    slices = extract_central_slices(spectrum, rot)  # (B, D, D) Hartley of the projections
    if ctf_params is not None:
        freqs = lattice_freqs(D, device=slices.device, dtype=slices.dtype)
        ctf = ctf_from_params(freqs, ctf_params.to(slices))  # (B, D²)
        slices = slices * ctf.reshape(-1, D, D)
    if shift_px is not None:
        slices = shift_ht(slices, shift_px.to(slices))
    return contrast * iht2_center(unsymmetrize_ht(slices))
