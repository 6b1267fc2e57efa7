import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryonoo.physics.rotations import (
    axis_angle_to_matrix,
    check_rotations,
    cryosparc_to_matrix,
    matrix_to_axis_angle,
    matrix_to_cryosparc,
    matrix_to_quaternion,
    matrix_to_relion_euler,
    quaternion_to_matrix,
    random_quaternions,
    random_rotations,
    relion_euler_to_matrix,
)

F64 = torch.float64


def rz_passive(deg: float) -> np.ndarray:
    """RELION's rotation of the *coordinate frame* about z (the transpose of the active one)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def ry_passive(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def relion_ref(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix by definition: frame rotations rot (z), tilt (y), psi (z)."""
    return rz_passive(psi) @ ry_passive(tilt) @ rz_passive(rot)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def rotation_angle(rot: torch.Tensor) -> torch.Tensor:
    tr = rot.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((tr - 1) / 2).clamp(-1, 1))


# --------------------------------------------------------------------------- random sampling


def test_random_rotations_are_proper_orthonormal():
    rot = random_rotations(2000, torch.Generator().manual_seed(0))
    assert rot.shape == (2000, 3, 3) and rot.dtype == torch.float32
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot @ rot.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2000), atol=1e-5)
    q = random_quaternions(100, torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(q.norm(dim=-1), torch.ones(100, dtype=F64))


def test_random_rotations_are_haar_uniform():
    rot = random_rotations(20000, torch.Generator().manual_seed(1), dtype=F64)
    assert rot.mean(0).abs().max() < 0.02  # E[R] = 0 for the Haar measure
    # angle density (1 − cos θ)/π on [0, π]: mean π/2 + 2/π, variance π²/3 + 2 − mean²
    mean = math.pi / 2 + 2 / math.pi
    assert rotation_angle(rot).mean().item() == pytest.approx(mean, abs=0.02)
    std = math.sqrt(math.pi**2 / 3 + 2 - mean**2)
    assert rotation_angle(rot).std().item() == pytest.approx(std, abs=0.02)
    # the image of a fixed axis is uniform on the sphere: each component has mean 0, var 1/3
    z = rot[:, :, 2]
    assert torch.allclose(z.var(0), torch.full((3,), 1 / 3, dtype=F64), atol=0.01)


def test_random_rotations_reproducible():
    a = random_rotations(10, torch.Generator().manual_seed(7))
    b = random_rotations(10, torch.Generator().manual_seed(7))
    c = random_rotations(10, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert random_rotations(0).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="n"):
        random_rotations(-1)


# --------------------------------------------------------------------------- quaternions


def test_quaternion_to_matrix_matches_scipy():
    q = random_quaternions(50, torch.Generator().manual_seed(2), dtype=F64)
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()  # scipy: scalar last
    assert np.allclose(quaternion_to_matrix(q).numpy(), ref, atol=1e-12)
    # a 90° rotation about z by hand: x → y
    q90 = t64([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert np.allclose(quaternion_to_matrix(q90).numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]])


def test_quaternion_round_trips():
    q = random_quaternions(500, torch.Generator().manual_seed(3), dtype=F64)
    q = torch.where(q[:, :1] < 0, -q, q)
    rot = quaternion_to_matrix(q)
    assert torch.allclose(matrix_to_quaternion(rot), q, atol=1e-10)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(rot)), rot, atol=1e-10)
    # 180° rotations (w = 0) and the identity, where branch selection matters
    special = t64([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0.6, 0.8, 0]])
    r = quaternion_to_matrix(special)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-12)
    # batched over several leading axes
    assert matrix_to_quaternion(rot.reshape(5, 100, 3, 3)).shape == (5, 100, 4)


# --------------------------------------------------------------------------- RELION Euler


def test_relion_elementary_matrices_by_hand():
    # rot = 90: the frame turns by 90° about z, so the old x axis reads as −y
    assert np.allclose(
        relion_euler_to_matrix(t64(90.0), t64(0.0), t64(0.0)).numpy(),
        [[0, 1, 0], [-1, 0, 0], [0, 0, 1]],
        atol=1e-12,
    )
    assert np.allclose(
        relion_euler_to_matrix(t64(0.0), t64(90.0), t64(0.0)).numpy(),
        [[0, 0, -1], [0, 1, 0], [1, 0, 0]],
        atol=1e-12,
    )
    assert np.allclose(
        relion_euler_to_matrix(t64(0.0), t64(0.0), t64(90.0)).numpy(),
        [[0, 1, 0], [-1, 0, 0], [0, 0, 1]],
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "angles", [(30.0, 60.0, -45.0), (-170.0, 10.0, 100.0), (12.5, 179.0, 3.0), (250.0, 95.0, 0.1)]
)
def test_relion_general_triple_by_composition(angles):
    got = relion_euler_to_matrix(*(t64(a) for a in angles)).numpy()
    assert np.allclose(got, relion_ref(*angles), atol=1e-12)


def test_relion_batched_and_broadcast():
    rng = np.random.default_rng(4)
    rot, tilt, psi = rng.uniform(-180, 180, 20), rng.uniform(0, 180, 20), rng.uniform(-180, 180, 20)
    got = relion_euler_to_matrix(t64(rot), t64(tilt), t64(psi)).numpy()
    ref = np.stack([relion_ref(a, b, c) for a, b, c in zip(rot, tilt, psi, strict=True)])
    assert np.allclose(got, ref, atol=1e-12)
    assert relion_euler_to_matrix(t64(rot), t64(10.0), t64(0.0)).shape == (20, 3, 3)


def test_relion_round_trip_regular():
    rng = np.random.default_rng(5)
    rot, tilt, psi = (
        rng.uniform(-179, 179, 200),
        rng.uniform(1, 179, 200),
        rng.uniform(-179, 179, 200),
    )
    mats = relion_euler_to_matrix(t64(rot), t64(tilt), t64(psi))
    r2, t2, p2 = matrix_to_relion_euler(mats)
    assert np.allclose(r2.numpy(), rot, atol=1e-8)
    assert np.allclose(t2.numpy(), tilt, atol=1e-8)
    assert np.allclose(p2.numpy(), psi, atol=1e-8)
    rand = random_rotations(500, torch.Generator().manual_seed(6), dtype=F64)
    assert torch.allclose(relion_euler_to_matrix(*matrix_to_relion_euler(rand)), rand, atol=1e-8)


@pytest.mark.parametrize(("tilt", "psi_expected"), [(0.0, 70.0), (180.0, 10.0)])
def test_relion_round_trip_gimbal_lock(tilt, psi_expected):
    # tilt 0: only rot + psi matters; tilt 180: only psi − rot matters
    mat = relion_euler_to_matrix(t64(30.0), t64(tilt), t64(40.0))
    rot, tilt_out, psi = matrix_to_relion_euler(mat)
    assert rot.item() == 0.0
    assert tilt_out.item() == pytest.approx(tilt, abs=1e-6)
    assert psi.item() == pytest.approx(psi_expected, abs=1e-6)
    assert torch.allclose(relion_euler_to_matrix(rot, tilt_out, psi), mat, atol=1e-12)
    assert np.allclose(mat.numpy(), relion_ref(30.0, tilt, 40.0), atol=1e-12)


# --------------------------------------------------------------------------- axis-angle / cryoSPARC


def test_axis_angle_matches_scipy_and_round_trips():
    rng = np.random.default_rng(7)
    axes = rng.normal(size=(100, 3))
    vec = axes / np.linalg.norm(axes, axis=1, keepdims=True) * rng.uniform(0, math.pi, (100, 1))
    mats = axis_angle_to_matrix(t64(vec))
    assert np.allclose(mats.numpy(), Rotation.from_rotvec(vec).as_matrix(), atol=1e-12)
    assert np.allclose(matrix_to_axis_angle(mats).numpy(), vec, atol=1e-9)
    # 90° about z by hand
    rz = axis_angle_to_matrix(t64([0.0, 0.0, math.pi / 2])).numpy()
    assert np.allclose(rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_axis_angle_edge_cases():
    tiny = t64([[1e-10, -2e-10, 3e-10], [0.0, 0.0, 0.0]])
    assert torch.allclose(axis_angle_to_matrix(tiny), torch.eye(3, dtype=F64).expand(2, 3, 3))
    assert torch.allclose(matrix_to_axis_angle(axis_angle_to_matrix(tiny)), tiny, atol=1e-15)
    half_turn = t64([0.0, math.pi, 0.0])
    m = axis_angle_to_matrix(half_turn)
    assert torch.allclose(axis_angle_to_matrix(matrix_to_axis_angle(m)), m, atol=1e-12)
    # differentiable, with finite gradients at the identity
    v = t64([[0.3, -0.2, 0.5]]).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))
    z = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    axis_angle_to_matrix(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_cryosparc_is_transposed_exponential_map():
    rng = np.random.default_rng(8)
    vec = rng.normal(size=(30, 3))
    got = cryosparc_to_matrix(t64(vec)).numpy()
    ref = Rotation.from_rotvec(vec).as_matrix().transpose(0, 2, 1)
    assert np.allclose(got, ref, atol=1e-12)
    back = cryosparc_to_matrix(matrix_to_cryosparc(t64(got)))
    assert np.allclose(back.numpy(), got, atol=1e-10)


# --------------------------------------------------------------------------- validation


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="q"):
        quaternion_to_matrix(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="vec"):
        axis_angle_to_matrix(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_quaternion(torch.zeros(5, 3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_relion_euler(torch.zeros(3))
    with pytest.raises(ValueError, match="rot"):
        check_rotations(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="floating"):
        check_rotations(torch.zeros(2, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError):
        matrix_to_cryosparc(torch.zeros(4, 9))


def test_invalid_angle_shapes_and_zero_quaternion():
    from cryonoo.physics.rotations import quaternion_to_matrix, relion_euler_to_matrix

    with pytest.raises(ValueError, match="broadcastable"):
        relion_euler_to_matrix(torch.zeros(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="zero quaternion"):
        quaternion_to_matrix(torch.zeros(2, 4))
