"""Central slices of 3-D spectra: extraction, insertion (its adjoint), projection, backprojection.

Conventions (cryoDRGN's, pinned by ``tests/unit/test_slice.py``):

* A real-space volume ``V[z, y, x]`` has an even box ``n``; its spectrum lives on the odd lattice
  ``D = n + 1``: ``symmetrize_ht3(ht3_center(V))`` (Hartley, real) or the symmetrized centered
  FFT (complex). Both are accepted wherever a ``spectrum`` is expected.
* The slice at rotation ``R`` samples the spectrum at ``lattice_coords(D) @ R`` (row vectors,
  cycles/pixel). A point ``(kx, ky, kz)`` sits at voxel ``k·n + D // 2`` along each axis, with
  ``x`` the last axis, ``y`` the middle one and ``z`` the first; points outside the grid read 0.
* Real-space meaning: ``img[y, x] = Σ_z V[Rᵀ (x, y, z)]`` with coordinates in pixels relative to
  the centre voxel ``n // 2`` (the rotation centre).
* Trilinear extraction is ``F.grid_sample`` (``align_corners=True``: normalized ``u = 2·k``);
  :func:`insert_central_slices` spreads with the same weights, so it is its exact adjoint.

Example
-------
>>> vol = torch.randn(64, 64, 64)
>>> rot = random_rotations(8)
>>> images = PROJECTORS.get("fourier-trilinear")(vol, rot)       # (8, 64, 64)
>>> spectrum = symmetrize_ht3(ht3_center(vol))                     # (65, 65, 65)
>>> slices = extract_central_slices(spectrum, rot)                 # (8, 65, 65)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cryonoo.physics.fft import (
    ht2_center,
    ht3_center,
    iht2_center,
    iht3_center,
    symmetrize_ht,
    symmetrize_ht3,
    unsymmetrize_ht,
)
from cryonoo.physics.lattice import circular_mask, lattice_coords
from cryonoo.registry import Registry

__all__ = [
    "PROJECTORS",
    "Projector",
    "backproject",
    "extract_central_slices",
    "insert_central_slices",
    "project",
]

Projector = Callable[[Tensor, Tensor], Tensor]
PROJECTORS: Registry[Projector] = Registry("projector")

_INTERPOLATIONS = ("trilinear", "nearest")
_REAL_SPACE_POINTS = 1 << 23  # grid points per grid_sample call in the real-space projector
_SPLIT_MIN_POINTS = 1 << 15  # fewer points are sampled on one thread (as torch's own grain size)


def _check_rot(rot: Tensor, batch: int | None = None) -> Tensor:
    if not isinstance(rot, Tensor):
        raise TypeError(f"rot must be a torch.Tensor, got {type(rot).__name__}")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3) or not rot.is_floating_point():
        raise ValueError(f"rot must be a real (B, 3, 3) tensor, got {tuple(rot.shape)} {rot.dtype}")
    if batch is not None and rot.shape[0] != batch:
        raise ValueError(f"rot must have shape ({batch}, 3, 3) to match, got {tuple(rot.shape)}")
    return rot


def _check_volume(volume: Tensor) -> int:
    shape = tuple(volume.shape)
    if volume.ndim != 3 or len(set(shape)) != 1 or shape[0] % 2 or volume.is_complex():
        raise ValueError(f"volume must be a real (n, n, n) tensor with n even, got {shape}")
    return shape[0]


def _check_mask(mask: Tensor | None, D: int) -> None:
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (D * D,)):
        raise ValueError(f"mask must be a boolean ({D * D},) tensor, got {tuple(mask.shape)}")


def _same_precision_real_dtype(x: Tensor) -> torch.dtype:
    """``x``'s dtype, or that of its real part when complex: slices keep their input's
    precision (a float64 volume gives float64 coordinates and slices)."""
    return x.real.dtype if x.is_complex() else x.dtype


def _slice_points(
    D: int, rot: Tensor, mask: Tensor | None, like: Tensor, count: int | None = None
) -> Tensor:
    """``(B, N, 3)`` coordinates ``coords @ R`` in cycles/pixel (the first ``count`` points of
    the lattice or of the mask), with the real dtype and the device of ``like``."""
    dtype, device = _same_precision_real_dtype(like), like.device
    coords = lattice_coords(D, device=device, dtype=dtype)[:, :2]
    if mask is not None:
        coords = coords[mask.to(device)]
    coords = coords[:count]
    # z = 0 on the lattice: only the first two rows of R matter (einsum → one GEMM; a broadcast
    # (N, 3) @ (B, 3, 3) matmul is ~20× slower on CPU)
    return torch.einsum("nj,bjk->bnk", coords, rot[:, :2].to(device=device, dtype=dtype))


def _grid_sample(values: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Sample ``values (Bv, C, D, D, D)`` at normalized ``grid (B, N, 3)`` → ``(B, N, C)``.

    ``Bv`` is 1 (one volume shared by all points) or ``B``. The CPU kernel parallelizes over the
    batch axis only, so a shared volume is expanded (a stride-0 view) and the points are split
    into one chunk per thread (when there are enough of them to pay for the fork).
    """
    B, N, _ = grid.shape
    C = values.shape[1]
    if values.shape[0] == 1:
        k = torch.get_num_threads() if grid.device.type == "cpu" else 1
        k = k if k > 1 and (B * N) % k == 0 and B * N >= _SPLIT_MIN_POINTS else 1
        values, grid = values.expand(k, -1, -1, -1, -1), grid.reshape(k, 1, 1, -1, 3)
    else:
        grid = grid.reshape(B, 1, 1, N, 3)
    out = F.grid_sample(values, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(out.shape[0], C, -1).movedim(1, -1).reshape(B, N, C)


def extract_central_slices(
    spectrum: Tensor,
    rot: Tensor,
    *,
    interpolation: str = "trilinear",
    mask: Tensor | None = None,
    hermitian: bool = False,
) -> Tensor:
    """Central slices of a 3-D spectrum at rotations ``rot``.

    Parameters
    ----------
    spectrum:
        ``(D, D, D)`` real (Hartley) or complex spectrum on the odd lattice, indexed
        ``[kz, ky, kx]``; or ``(B, D, D, D)``, one spectrum per rotation.
    rot:
        ``(B, 3, 3)`` rotations; slice ``b`` samples the spectrum at ``coords @ rot[b]``.
    interpolation:
        ``"trilinear"`` or ``"nearest"`` (voxel index rounded half to even); both are
        ``F.grid_sample`` kernels.
    mask:
        Optional boolean ``(D²,)`` lattice mask (e.g. :func:`circular_mask`): only those points
        are sampled, which is proportionally faster.
    hermitian:
        For a complex spectrum with ``F(−k) = conj F(k)`` (that of a real volume): sample the
        first half of the point-symmetric lattice (or mask) and fill the rest by symmetry, which
        halves the work.

    Returns
    -------
    ``(B, D, D)`` slices (``(B, N)`` with a mask), same dtype as ``spectrum``; differentiable
    with respect to ``spectrum`` (and, trilinear, to ``rot``). Points outside the grid are 0.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    D, batched = spectrum.shape[-1], spectrum.ndim == 4
    if spectrum.ndim not in (3, 4) or len(set(spectrum.shape[-3:])) != 1 or D % 2 == 0:
        raise ValueError(
            f"spectrum must be (D, D, D) or (B, D, D, D) with D odd, got {tuple(spectrum.shape)}"
        )
    _check_rot(rot, spectrum.shape[0] if batched else None)  # one rotation per batched volume
    _check_mask(mask, D)
    B = rot.shape[0]
    N = D * D if mask is None else int(mask.sum())
    if hermitian and not spectrum.is_complex():
        raise ValueError("hermitian=True needs a complex spectrum (a Hartley spectrum is real)")
    if hermitian and mask is not None and not torch.equal(mask, mask.flip(0)):
        raise ValueError("hermitian=True needs a point-symmetric mask (mask == mask.flip(0))")
    count = N // 2 + N % 2 if hermitian else N  # entries i and N − 1 − i are k and −k
    pts = _slice_points(D, rot, mask, spectrum, count)  # (B, count, 3)
    spec = spectrum if batched else spectrum[None]
    chans = torch.view_as_real(spec).movedim(-1, 1) if spec.is_complex() else spec[:, None]
    # on a 5-D input "bilinear" is trilinear and "nearest" rounds the voxel index (half to even)
    mode = "bilinear" if interpolation == "trilinear" else "nearest"
    out = _grid_sample(chans, 2 * pts, mode)  # (B, count, C)
    out = torch.view_as_complex(out.contiguous()) if spec.is_complex() else out[..., 0]
    if hermitian:
        out = torch.cat([out, out[:, : N - count].flip(1).conj()], dim=1)
    return out if mask is not None else out.reshape(B, D, D)


def insert_central_slices(
    slices: Tensor,
    rot: Tensor,
    D: int,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Spread slices trilinearly into a 3-D spectrum: the adjoint of trilinear extraction.

    Parameters
    ----------
    slices:
        ``(B, D, D)`` real or complex slice values (``(B, N)`` with a mask).
    rot:
        ``(B, 3, 3)`` rotations, as in :func:`extract_central_slices`.
    D:
        Odd lattice size of the output.
    weights:
        Real weights broadcastable to ``slices`` (default 1), e.g. ``CTF²`` for a Wiener filter;
        they are spread with the same trilinear weights into ``weight_sum``.
    mask:
        Optional boolean ``(D²,)`` mask selecting the points ``slices`` holds.

    Returns
    -------
    ``(spectrum_sum, weight_sum)``, both ``(D, D, D)``: ``Σ_b Σ_i t_bi(v)·slice_bi`` (dtype of
    ``slices``, differentiable) and ``Σ_b Σ_i t_bi(v)·weight_bi`` (real), with ``t`` the trilinear
    weight of point ``i`` of slice ``b`` at voxel ``v``. ``⟨extract(x), y⟩ = ⟨x, insert(y)⟩``.
    """
    if not isinstance(D, int) or D < 3 or D % 2 == 0:
        raise ValueError(f"D must be an odd integer ≥ 3 (box + 1), got {D!r}")
    _check_rot(rot)
    _check_mask(mask, D)
    n_pts = D * D if mask is None else int(mask.sum())
    expected = (rot.shape[0], D, D) if mask is None else (rot.shape[0], n_pts)
    if tuple(slices.shape) != expected:
        raise ValueError(f"slices must have shape {expected}, got {tuple(slices.shape)}")
    real = _same_precision_real_dtype(slices)
    values = torch.view_as_real(slices) if slices.is_complex() else slices[..., None]
    values = values.reshape(-1, values.shape[-1])  # (P, C)
    w = None if weights is None else torch.broadcast_to(weights, slices.shape).reshape(-1)
    # voxel coordinates; points beyond the grid are clamped next to it, where the one-voxel
    # padding (two above) of the accumulators catches their weight, so no per-corner bounds checks
    idx = _slice_points(D, rot, mask, slices).reshape(-1, 3) * (D - 1) + D // 2
    idx = idx.clamp_(-1, D)
    base = idx.floor()
    hi = idx - base  # (P, 3) weights of the upper neighbours
    lo = 1 - hi
    Dp = D + 3
    base = base.long() + 1
    flat = (base[:, 2] * Dp + base[:, 1]) * Dp + base[:, 0]
    sums = [torch.zeros(Dp**3, dtype=real, device=slices.device) for _ in range(values.shape[1])]
    weight_sum = torch.zeros(Dp**3, dtype=real, device=slices.device)
    for dz, dy in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the 8 neighbours, all points at once
        t_yz = (hi if dy else lo)[:, 1] * (hi if dz else lo)[:, 2]
        for dx in (0, 1):
            t = t_yz * (hi if dx else lo)[:, 0]  # (P,) trilinear weight
            corner = flat + ((dz * Dp + dy) * Dp + dx)
            for acc, v in zip(sums, values.unbind(1), strict=True):
                acc.scatter_add_(0, corner, v * t)
            weight_sum.scatter_add_(0, corner, t if w is None else t * w)
    inner = slice(1, D + 1)
    out = [acc.reshape(Dp, Dp, Dp)[inner, inner, inner] for acc in [*sums, weight_sum]]
    spectrum_sum = torch.complex(out[0], out[1]) if slices.is_complex() else out[0]
    return spectrum_sum, out[-1]


def _fold_nyquist(x: Tensor) -> Tensor:
    """``(D, D, D)`` → ``(n, n, n)``: add each ``+Nyquist`` slab onto ``−Nyquist`` (the same
    frequency for an even box), the inverse of ``symmetrize_ht3`` for accumulated sums."""
    for dim in range(3):
        head = x.narrow(dim, 0, 1) + x.narrow(dim, x.shape[dim] - 1, 1)
        x = torch.cat([head, x.narrow(dim, 1, x.shape[dim] - 2)], dim=dim)
    return x


def backproject(
    images: Tensor,
    rot: Tensor,
    *,
    ctf: Tensor | None = None,
    reg: float = 1.0,
    batch_size: int | None = None,
) -> Tensor:
    """Homogeneous reconstruction from real-space images with known poses.

    Each image's symmetrized Hartley transform (points inside the Nyquist circle) is inserted
    with :func:`insert_central_slices`; with a CTF the data are multiplied by ``c`` and ``c²`` is
    accumulated as weight. The spectrum is ``Σ c·y / (Σ c² + reg·mean(Σ c²))·(1 + reg)`` (as
    cryoDRGN's ``backproject_voxel --reg-weight``, whose default is also 1), then inverted.

    Parameters
    ----------
    images:
        ``(B, n, n)`` real-space images, ``n`` even, used as given (no contrast inversion).
    rot:
        ``(B, 3, 3)`` poses (cryoDRGN convention).
    ctf:
        Optional ``(B, D, D)`` CTF values on the lattice (``D = n + 1``).
    reg:
        Regularization weight, relative to the mean accumulated weight (≥ 0).
    batch_size:
        Images inserted per step (bounds the memory); default all at once.

    Returns
    -------
    ``(n, n, n)`` real-space volume, indexed ``[z, y, x]``.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 2:
        raise ValueError(f"images must be (B, n, n) with n even, got {tuple(images.shape)}")
    B, n = images.shape[0], images.shape[-1]
    D = n + 1
    _check_rot(rot, B)
    if ctf is not None and tuple(ctf.shape) != (B, D, D):
        raise ValueError(f"ctf must have shape ({B}, {D}, {D}), got {tuple(ctf.shape)}")
    if reg < 0:
        raise ValueError(f"reg must be ≥ 0, got {reg}")
    mask = circular_mask(D, ignore_dc=False, device=images.device)
    values = symmetrize_ht(ht2_center(images)).reshape(B, -1)[:, mask]
    weights = None
    if ctf is not None:
        c = ctf.reshape(B, -1)[:, mask].to(values.dtype)
        values, weights = values * c, c * c
    step = B if batch_size is None else max(1, int(batch_size))
    total = torch.zeros(D, D, D, dtype=values.dtype, device=images.device)
    counts = torch.zeros_like(total)
    for start in range(0, B, step):
        part = slice(start, start + step)
        w = None if weights is None else weights[part]
        s, c_sum = insert_central_slices(values[part], rot[part], D, weights=w, mask=mask)
        total, counts = total + s, counts + c_sum
    total, counts = _fold_nyquist(total), _fold_nyquist(counts)
    denom = (counts + reg * counts.mean()) / (1 + reg)
    spectrum = torch.where(denom > 0, total / denom.clamp_min(1e-30), torch.zeros_like(total))
    return iht3_center(spectrum)


def _fourier_project(volume: Tensor, rot: Tensor, interpolation: str) -> Tensor:
    _check_volume(volume)
    spectrum = symmetrize_ht3(ht3_center(volume))
    slices = extract_central_slices(spectrum, rot, interpolation=interpolation)
    return iht2_center(unsymmetrize_ht(slices))


@PROJECTORS.register("fourier-trilinear")
def project_fourier_trilinear(volume: Tensor, rot: Tensor) -> Tensor:
    """Fourier slice theorem: trilinear central slices of the volume's 3-D Hartley spectrum."""
    return _fourier_project(volume, rot, "trilinear")


@PROJECTORS.register("fourier-nearest")
def project_fourier_nearest(volume: Tensor, rot: Tensor) -> Tensor:
    """Fourier slice theorem with nearest-voxel central slices (fast, least accurate)."""
    return _fourier_project(volume, rot, "nearest")


@PROJECTORS.register("real-space")
def project_real_space(volume: Tensor, rot: Tensor) -> Tensor:
    """Reference projector: rotate the volume (trilinear ``grid_sample``) and sum along z.

    ``img[y, x] = Σ_z V[Rᵀ (x, y, z)]`` around voxel ``n // 2``; rotations are processed in
    chunks of ``2²³`` grid points to bound the memory.
    """
    n = _check_volume(volume)
    _check_rot(rot)
    axis = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = torch.stack([x, y, z], dim=-1).reshape(-1, 3)  # (n³, 3) pixels, [z, y, x] order
    values = volume[None, None]
    chunk = max(1, _REAL_SPACE_POINTS // n**3)
    images = []
    for part in rot.to(volume).split(chunk):  # chunks of rotations, not single images
        p = torch.einsum("nj,bjk->bnk", r, part)  # (b, n³, 3): Rᵀ r as row vectors
        grid = (p + n // 2) * (2 / (n - 1)) - 1  # voxel index → align_corners=True coordinates
        out = _grid_sample(values, grid, "bilinear")  # (b, n³, 1)
        images.append(out.reshape(-1, n, n, n).sum(dim=1))
    return torch.cat(images) if images else volume.new_zeros(0, n, n)


def project(volume: Tensor, rot: Tensor, method: str = "fourier-trilinear") -> Tensor:
    """Project a real ``(n, n, n)`` volume (``n`` even) at ``rot (B, 3, 3)`` → ``(B, n, n)``.

    Every entry of :data:`PROJECTORS` has this contract; ``method`` names one (unknown names
    raise the registry's ``KeyError``).
    """
    return PROJECTORS.get(method)(volume, rot)
