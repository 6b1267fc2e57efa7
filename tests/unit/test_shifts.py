import numpy as np
import pytest
import torch

from cryonoo.physics.fft import fft2_center, ht2_center, ifft2_center, symmetrize_ht
from cryonoo.physics.lattice import Lattice
from cryonoo.physics.shifts import shift_fourier, shift_ht, shift_ht_points, shift_images

F64 = torch.float64


def plane_waves(ny: int, nx: int, shift=(0.0, 0.0), seed: int = 0) -> torch.Tensor:
    """A periodic, band-limited image Σ a·cos(2π k·(r − t) + φ) evaluated analytically.

    Frequencies are integer cycles per box strictly below Nyquist, so the image is exactly
    representable and its sub-pixel shift is known in closed form (independent of the FFT).
    """
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    tx, ty = shift
    img = np.zeros((ny, nx))
    for _ in range(6):
        mx = rng.integers(-(nx // 2) + 1, nx // 2)
        my = rng.integers(-(ny // 2) + 1, ny // 2)
        a, phi = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        img += a * np.cos(2 * np.pi * (mx * (x - tx) / nx + my * (y - ty) / ny) + phi)
    return torch.tensor(img)


@pytest.fixture
def images():
    return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=F64)


@pytest.mark.parametrize("t", [(1, 0), (0, 1), (3, -2), (-5, 7), (16, 0)])
def test_integer_shift_equals_roll(t):
    img = torch.randn(2, 12, 20, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = shift_images(img, torch.tensor([float(t[0]), float(t[1])], dtype=F64))
    ref = torch.roll(img, shifts=(t[1], t[0]), dims=(-2, -1))  # ty along rows, tx along columns
    assert torch.allclose(got, ref, atol=1e-12)


def test_delta_moves_by_plus_t():
    img = torch.zeros(16, 16)
    img[5, 4] = 1.0  # row y = 5, column x = 4
    out = shift_images(img, torch.tensor([3.0, 2.0]))
    assert tuple((out == out.max()).nonzero()[0].tolist()) == (7, 7)
    assert out.dtype == torch.float32


def test_batched_shifts_broadcast(images):
    shifts = torch.tensor([[1.0, 0.0], [0.0, -2.0], [4.0, 3.0]], dtype=F64)
    got = shift_images(images, shifts)
    for i, (tx, ty) in enumerate(shifts.int().tolist()):
        assert torch.allclose(got[i], torch.roll(images[i], (ty, tx), (-2, -1)), atol=1e-12)
    # one image, T shifts
    many = shift_images(images[0], shifts)
    assert many.shape == (3, 16, 16)


@pytest.mark.parametrize("t", [(0.5, 0.0), (0.3, -1.7), (-2.25, 0.8)])
def test_subpixel_shift_matches_analytic(t):
    img = plane_waves(16, 24)
    got = shift_images(img, torch.tensor(t, dtype=F64))
    assert torch.allclose(got, plane_waves(16, 24, shift=t), atol=1e-10)
    spec = shift_fourier(fft2_center(img), torch.tensor(t, dtype=F64))
    assert torch.allclose(ifft2_center(spec).real, plane_waves(16, 24, shift=t), atol=1e-10)


def test_shift_fourier_integer_equals_roll(images):
    t = torch.tensor([[2.0, -3.0]], dtype=F64)
    got = shift_fourier(fft2_center(images), t)
    ref = fft2_center(torch.roll(images, (-3, 2), (-2, -1)))
    assert torch.allclose(got, ref, atol=1e-10)


def test_shift_fourier_phase_sign():
    f = torch.ones(8, 8, dtype=torch.complex128)
    out = shift_fourier(f, torch.tensor([0.25, 0.0], dtype=F64))
    # k_x = 1/8 cycles/px at column 5: factor exp(−2πi·(1/8)·0.25)
    assert out[4, 5].item() == pytest.approx(complex(np.exp(-2j * np.pi * 0.125 * 0.25)))
    assert out[4, 4].item() == pytest.approx(1.0)


@pytest.mark.parametrize("t", [(1.0, 0.0), (-3.0, 2.0), (5.0, -7.0)])
def test_shift_ht_integer_equals_roll_everywhere(images, t):
    ht = symmetrize_ht(ht2_center(images))
    got = shift_ht(ht, torch.tensor(t, dtype=F64))
    rolled = torch.roll(images, (int(t[1]), int(t[0])), (-2, -1))
    assert torch.allclose(got, symmetrize_ht(ht2_center(rolled)), atol=1e-10)


@pytest.mark.parametrize("t", [(0.5, 0.0), (0.3, -1.7), (-2.25, 0.8)])
def test_shift_ht_matches_hartley_of_shifted_image(t):
    img, shifted = plane_waves(20, 20, seed=4), plane_waves(20, 20, shift=t, seed=4)
    got = shift_ht(symmetrize_ht(ht2_center(img)), torch.tensor(t, dtype=F64))
    ref = symmetrize_ht(ht2_center(shifted))
    assert torch.allclose(got, ref, atol=1e-9)


def test_shift_ht_inside_mask_for_generic_images(images):
    t = torch.tensor([[0.4, -1.3], [2.7, 0.1], [-0.5, -0.5]], dtype=F64)
    got = shift_ht(symmetrize_ht(ht2_center(images)), t).reshape(3, -1)
    ref = symmetrize_ht(ht2_center(shift_images(images, t))).reshape(3, -1)
    mask = Lattice(17).circular_mask(radius_px=7)  # strictly inside Nyquist
    assert torch.allclose(got[:, mask], ref[:, mask], atol=1e-9)


def test_round_trips(images):
    t = torch.tensor([[0.4, -1.3], [2.7, 0.1], [-0.5, 3.5]], dtype=F64)
    back = shift_images(shift_images(plane_waves(16, 16), t), -t)
    assert torch.allclose(back, plane_waves(16, 16).expand(3, 16, 16), atol=1e-10)
    f = fft2_center(images)
    assert torch.allclose(shift_fourier(shift_fourier(f, t), -t), f, atol=1e-10)
    ht = symmetrize_ht(ht2_center(images))
    assert torch.allclose(shift_ht(shift_ht(ht, t), -t), ht, atol=1e-10)


def test_points_version_equals_full_lattice(images):
    lat = Lattice(17)
    mask = lat.circular_mask()
    ht = symmetrize_ht(ht2_center(images))
    t = torch.tensor([[0.4, -1.3], [2.7, 0.1], [-0.5, 3.5]], dtype=F64)
    full = shift_ht(ht, t).reshape(3, -1)[:, mask]
    pts = shift_ht_points(ht.reshape(3, -1)[:, mask], lat.freqs2d[mask], t)
    assert torch.allclose(pts, full, atol=1e-6)
    # several shifts per image: (B, 1, N) values with (B, T, 2) shifts → (B, T, N)
    tt = torch.stack([t, -t, 2 * t], dim=1)
    many = shift_ht_points(ht.reshape(3, -1)[:, mask][:, None], lat.freqs2d[mask], tt)
    assert many.shape == (3, 3, int(mask.sum()))
    assert torch.allclose(many[:, 0], full, atol=1e-6)


def test_points_in_place_path_equals_autograd_path(images):
    """Without gradients the points version works in place; the values are the same."""
    lat = Lattice(17)
    mask = lat.circular_mask()
    values = symmetrize_ht(ht2_center(images)).reshape(3, -1)[:, mask]
    t = torch.tensor([[0.4, -1.3], [2.7, 0.1], [-0.5, 3.5]], dtype=F64)
    fast = shift_ht_points(values, lat.freqs2d[mask], t)
    slow = shift_ht_points(values, lat.freqs2d[mask], t.clone().requires_grad_(True))
    assert slow.requires_grad and not fast.requires_grad
    assert torch.equal(fast, slow.detach())


def test_points_formula_by_hand():
    freqs = torch.tensor([[-0.25, 0.0], [0.0, 0.0], [0.25, 0.0]], dtype=F64)
    values = torch.tensor([1.0, 5.0, 2.0], dtype=F64)
    out = shift_ht_points(values, freqs, torch.tensor([1.0, 0.0], dtype=F64))
    # phase 2π·(∓0.25)·1 = ∓π/2: H'(k) = sin(phase)·H(−k)
    assert torch.allclose(out, torch.tensor([-2.0, 5.0, 1.0], dtype=F64), atol=1e-12)


def test_gradients_wrt_shift(images):
    t = torch.tensor([[0.3, -0.2]], dtype=F64, requires_grad=True)
    ht = symmetrize_ht(ht2_center(images[:1, :8, :8]))
    assert torch.autograd.gradcheck(lambda s: shift_ht(ht, s), (t,))
    assert torch.autograd.gradcheck(lambda s: shift_images(images[:1, :8, :8], s), (t,))


def test_validation(images):
    with pytest.raises(ValueError, match="shift_px"):
        shift_images(images, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="images"):
        shift_images(torch.zeros(5), torch.zeros(2))
    with pytest.raises(ValueError, match="f must be a complex"):
        shift_fourier(images, torch.zeros(2))
    with pytest.raises(ValueError, match="odd lattice"):
        shift_ht(images, torch.zeros(2))
    with pytest.raises(ValueError, match="freqs_cpx"):
        shift_ht_points(torch.zeros(2, 5), torch.zeros(4, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="point symmetric"):
        shift_ht_points(torch.zeros(2, 3), torch.rand(3, 2) + 0.1, torch.zeros(2, 2))


def test_full_period_shift_is_identity_on_lattice():
    ht = symmetrize_ht(ht2_center(plane_waves(10, 10)))
    assert torch.allclose(shift_ht(ht, torch.tensor([10.0, -10.0], dtype=F64)), ht, atol=1e-9)
