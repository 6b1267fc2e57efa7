"""Central sections of maps as PNG images, and fast maps at a small box for viewing them.

* :func:`central_sections` puts the three orthogonal central slices of a map ``[z, y, x]``
  side by side: ``vol[n//2]`` (the xy plane), ``vol[:, n//2]`` (xz) and ``vol[:, :, n//2]``
  (yz), each ``(n, n)``, into one ``(n, 3n)`` image.
* :func:`sections_png` writes such an image as an 8-bit greyscale PNG, scaled linearly between
  the 0.5th and 99.5th percentiles of the three slices (white = dense).
* :func:`preview_volume` decodes one latent at a box of at most :data:`PREVIEW_BOX` voxels: the
  decoder is evaluated only on the central ``(b+1)³`` points of its lattice (a Fourier crop,
  voxel size ``apix · box / b``), so a click in the viewer stays fast for any training box. At
  ``b = box`` it equals the model's own :meth:`volume`. The amplitudes are for display only.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch

from cryonoo.physics.fft import iht3_center

__all__ = [
    "PREVIEW_BOX",
    "central_sections",
    "png_data_uri",
    "preview_volume",
    "sections_png",
]

PREVIEW_BOX = 64
"""Largest box (voxels) of the maps decoded for the viewer's sections."""
_CHUNK = 1 << 17  # decoder points per chunk


def central_sections(vol: Any) -> np.ndarray:
    """``(n, 3n)`` float32: the xy, xz and yz central slices of a map ``(n, n, n)`` [z, y, x]."""
    arr = np.asarray(vol, dtype=np.float32)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"a map must have shape (n, n, n), got {arr.shape}")
    c = arr.shape[0] // 2
    return np.concatenate([arr[c], arr[:, c, :], arr[:, :, c]], axis=1)


def sections_png(vol: Any) -> bytes:
    """PNG bytes of :func:`central_sections` of ``vol`` (8-bit grey, percentile-scaled)."""
    from matplotlib.image import imsave

    img = central_sections(vol)
    lo, hi = np.percentile(img, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(img.min()), float(img.min()) + 1.0
    buf = io.BytesIO()
    imsave(buf, img, cmap="gray", vmin=lo, vmax=hi, format="png", origin="lower")
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` URI of PNG bytes (for a self-contained page)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _unit_lattice(b: int) -> torch.Tensor:
    """``((b+1)³, 3)`` float64 ``[kx, ky, kz]`` of a ``(b+1)³`` lattice in ``[-0.5, 0.5]``."""
    axis = (torch.arange(b + 1, dtype=torch.float64) - b // 2) / b
    kz, ky, kx = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1).reshape(-1, 3)


@torch.no_grad()
def preview_volume(model: Any, z: Any, norm_std: float = 1.0, max_box: int = PREVIEW_BOX) -> Any:
    """Map ``(b, b, b)`` ``[z, y, x]`` (float32 CPU tensor), ``b = min(box, max_box)`` (even).

    ``model`` is a lattice model (``model.D`` = box + 1, ``model.decoder``); ``z`` ``(zdim,)``.
    The spectrum is evaluated as in :meth:`~cryonoo.models.decoders.FourierDecoder.volume`
    (the ``kz = 0`` plane through ``forward``, the rest through ``hartley``, zero outside the
    sphere) on the central ``(b+1)³`` lattice points, then inverse-transformed.
    """
    box = int(model.D) - 1
    b = min(box, int(max_box) - int(max_box) % 2)
    if b < 2:
        raise ValueError(f"max_box must be ≥ 2, got {max_box}")
    dec = model.decoder
    device = next(dec.parameters()).device
    unit = _unit_lattice(b).to(device)
    keep = unit.to(torch.float32).pow(2).sum(-1) <= 0.25
    plane = keep & (torch.arange(unit.shape[0], device=device) // ((b + 1) ** 2) == b // 2)
    rest = keep & ~plane
    grid = (unit * (b / box)).to(torch.float32)
    zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=device).reshape(1, -1)
    zt = zt if model.zdim else None
    spec = torch.zeros(unit.shape[0], device=device, dtype=torch.float32)
    spec[plane] = dec(grid[plane][None], zt)[0]
    values = [dec.hartley(p[None], zt)[0] for p in grid[rest].split(_CHUNK)]
    spec[rest] = torch.cat(values) if values else spec[rest]
    spec = spec * float(norm_std)
    return iht3_center(spec.reshape(b + 1, b + 1, b + 1)[:-1, :-1, :-1]).float().cpu()
