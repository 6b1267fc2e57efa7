"""Rotations: random sampling, quaternions, RELION Euler angles, cryoSPARC axis-angle.

Conventions
-----------
* A pose matrix ``R`` is used as cryoDRGN uses it: lattice frequencies (row vectors) are rotated
  as ``coords @ R``. In real space the projection is ``img(x, y) = Σ_z V(Rᵀ (x, y, z))`` for a
  volume indexed ``V[z, y, x]``.
* :func:`relion_euler_to_matrix` is RELION's ``Euler_angles2matrix(rot, tilt, psi)`` (ZYZ, angles
  in degrees) and equals cryoDRGN's ``R_from_relion``: a ``.star`` pose is used as is.
* cryoSPARC stores a rotation vector (axis · angle in radians); cryoDRGN's pose is the
  **transpose** of its exponential map: :func:`cryosparc_to_matrix`.
* Quaternions are ``(w, x, y, z)`` with the scalar first.

All functions are batched over leading axes and differentiable where that makes sense.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "axis_angle_to_matrix",
    "check_rotations",
    "cryosparc_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_cryosparc",
    "matrix_to_quaternion",
    "matrix_to_relion_euler",
    "quaternion_to_matrix",
    "random_quaternions",
    "random_rotations",
    "relion_euler_to_matrix",
]


def check_rotations(rot: Tensor, name: str = "rot") -> Tensor:
    """Raise ``ValueError`` unless ``rot`` is a floating ``(…, 3, 3)`` tensor; return it."""
    if not isinstance(rot, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(rot).__name__}")
    if rot.ndim < 2 or tuple(rot.shape[-2:]) != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(rot.shape)}")
    if not rot.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {rot.dtype}")
    return rot


def random_quaternions(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(n, 4)`` unit quaternions uniform on SO(3) (Shoemake's subgroup algorithm)."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64, device=gen_device)
    a, b = torch.sqrt(1 - u[:, 0]), torch.sqrt(u[:, 0])
    t1, t2 = 2 * math.pi * u[:, 1], 2 * math.pi * u[:, 2]
    q = torch.stack([a * torch.sin(t1), a * torch.cos(t1), b * torch.sin(t2), b * torch.cos(t2)], 1)
    return q.to(device=device, dtype=dtype)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(n, 3, 3)`` rotation matrices uniform (Haar) on SO(3)."""
    q = random_quaternions(n, generator, dtype=torch.float64)
    return quaternion_to_matrix(q).to(device=device, dtype=dtype)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """``(…, 4)`` quaternions ``(w, x, y, z)`` (normalized here) → ``(…, 3, 3)`` matrices."""
    if q.shape[-1] != 4:
        raise ValueError(f"q must have shape (..., 4), got {tuple(q.shape)}")
    norm = q.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("q contains a zero quaternion, which is not a rotation")
    q = q / norm
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(rot: Tensor) -> Tensor:
    """``(…, 3, 3)`` rotation matrices → ``(…, 4)`` unit quaternions with ``w ≥ 0``.

    Uses the numerically stable branch (largest of ``w, x, y, z``) for every matrix.
    """
    check_rotations(rot)
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4·(w², x², y², z²), each from the diagonal
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    ).clamp_min(0)
    # candidate quaternions, each scaled by 4·(its largest component)
    cand = torch.stack(
        [
            torch.stack([sq[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                         m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], sq[..., 1], m[..., 1, 0] + m[..., 0, 1],
                         m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], sq[..., 2],
                         m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 2, 1] + m[..., 1, 2], sq[..., 3]], -1),
        ],
        dim=-2,
    )  # fmt: skip
    best = sq.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def relion_euler_to_matrix(rot_deg: Tensor, tilt_deg: Tensor, psi_deg: Tensor) -> Tensor:
    """RELION ``(rot, tilt, psi)`` Euler angles in degrees (``(…)`` each) → ``(…, 3, 3)``.

    Identical to RELION's ``Euler_angles2matrix`` and cryoDRGN's ``R_from_relion``.
    """
    a, b, g = (torch.deg2rad(torch.as_tensor(t)) for t in (rot_deg, tilt_deg, psi_deg))
    try:
        a, b, g = torch.broadcast_tensors(a, b, g)
    except RuntimeError:
        raise ValueError(
            "rot_deg, tilt_deg and psi_deg must have broadcastable shapes, got "
            f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(g.shape)}"
        ) from None
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb,
        -sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb,
        sc, ss, cb,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*a.shape, 3, 3)


def matrix_to_relion_euler(rot: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`relion_euler_to_matrix`: ``(…, 3, 3)`` → ``(rot, tilt, psi)`` degrees.

    ``tilt ∈ [0, 180]``; in the gimbal-lock cases (tilt 0 or 180) ``rot`` is set to 0.
    """
    check_rotations(rot)
    m = rot
    tilt = torch.acos(m[..., 2, 2].clamp(-1, 1))
    regular = torch.sin(tilt).abs() > eps
    rot_a = torch.where(regular, torch.atan2(m[..., 2, 1], m[..., 2, 0]), torch.zeros_like(tilt))
    psi_regular = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    psi_up = torch.atan2(-m[..., 1, 0], m[..., 0, 0])  # tilt = 0: A = Rz(psi + rot)
    psi_down = torch.atan2(m[..., 1, 0], -m[..., 0, 0])  # tilt = 180
    psi = torch.where(regular, psi_regular, torch.where(m[..., 2, 2] > 0, psi_up, psi_down))
    return torch.rad2deg(rot_a), torch.rad2deg(tilt), torch.rad2deg(psi)


def _hat(v: Tensor) -> Tensor:
    """``(…, 3)`` → ``(…, 3, 3)`` skew-symmetric cross-product matrix."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(vec: Tensor) -> Tensor:
    """``(…, 3)`` rotation vectors (axis × angle in radians) → ``(…, 3, 3)`` (Rodrigues)."""
    if vec.shape[-1] != 3:
        raise ValueError(f"vec must have shape (..., 3), got {tuple(vec.shape)}")
    theta = vec.norm(dim=-1, keepdim=True)[..., None]  # (…, 1, 1)
    k = _hat(vec)
    small = theta < 1e-8
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta**2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(safe)) / safe**2)
    eye = torch.eye(3, dtype=vec.dtype, device=vec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """Inverse of :func:`axis_angle_to_matrix` (angles in ``[0, π]``)."""
    q = matrix_to_quaternion(rot)
    w, xyz = q[..., :1], q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s > 1e-12, angle / s.clamp_min(1e-12), torch.full_like(s, 2.0))
    return xyz * scale


def cryosparc_to_matrix(pose_vec: Tensor) -> Tensor:
    """cryoSPARC ``alignments3D/pose`` rotation vectors ``(…, 3)`` → cryoDRGN ``(…, 3, 3)``."""
    return axis_angle_to_matrix(pose_vec).transpose(-1, -2)


def matrix_to_cryosparc(rot: Tensor) -> Tensor:
    """cryoDRGN pose matrices ``(…, 3, 3)`` → cryoSPARC rotation vectors ``(…, 3)``."""
    return matrix_to_axis_angle(check_rotations(rot).transpose(-1, -2))
