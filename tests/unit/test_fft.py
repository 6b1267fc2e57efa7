import numpy as np
import pytest
import torch

from cryonoo.physics.fft import (
    fft2_center,
    fft3_center,
    fourier_crop,
    ht2_center,
    ht2_center_symmetrized,
    ht3_center,
    ifft2_center,
    ifft3_center,
    iht2_center,
    iht3_center,
    symmetrize_ht,
    symmetrize_ht3,
    unsymmetrize_ht,
    unsymmetrize_ht3,
)


@pytest.fixture
def images():
    return torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_fft_center_matches_numpy(images):
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.fftshift(images.numpy(), axes=(-2, -1))), axes=(-2, -1)
    )
    assert np.allclose(fft2_center(images).numpy(), ref)


def test_dc_is_sum_at_center(images):
    f = fft2_center(images)
    assert torch.allclose(f[:, 8, 8].real, images.sum(dim=(-1, -2)))


def test_ht_is_re_minus_im(images):
    f = fft2_center(images)
    assert torch.allclose(ht2_center(images), f.real - f.imag)


@pytest.mark.parametrize("n", [16, 15])
def test_round_trips(n):
    x = torch.randn(3, n, n, dtype=torch.float64)
    assert torch.allclose(iht2_center(ht2_center(x)), x)
    assert torch.allclose(ifft2_center(fft2_center(x)).real, x)
    v = torch.randn(2, n, n, n, dtype=torch.float64)
    assert torch.allclose(iht3_center(ht3_center(v)), v)
    assert torch.allclose(ifft3_center(fft3_center(v)).real, v)


def test_parseval(images):
    n = images.shape[-1] ** 2
    energy = (images**2).sum(dim=(-1, -2))
    assert torch.allclose((ht2_center(images) ** 2).sum(dim=(-1, -2)) / n, energy)
    assert torch.allclose((fft2_center(images).abs() ** 2).sum(dim=(-1, -2)) / n, energy)


def test_ht3_matches_fft3():
    v = torch.randn(8, 8, 8, dtype=torch.float64)
    f = fft3_center(v)
    assert torch.allclose(ht3_center(v), f.real - f.imag)


def test_half_precision_promoted():
    x = torch.randn(2, 8, 8).half()
    assert ht2_center(x).dtype == torch.float32


def test_symmetrize(images):
    ht = ht2_center(images)
    s = symmetrize_ht(ht)
    assert s.shape == (4, 17, 17)
    assert torch.equal(s[:, -1, :-1], ht[:, 0, :])
    assert torch.equal(s[:, :-1, -1], ht[:, :, 0])
    assert torch.equal(s[:, -1, -1], ht[:, 0, 0])
    assert torch.equal(unsymmetrize_ht(s), ht)
    v = torch.randn(6, 6, 6)
    s3 = symmetrize_ht3(v)
    assert s3.shape == (7, 7, 7)
    assert torch.equal(s3[-1, -1, -1], v[0, 0, 0])
    assert torch.equal(unsymmetrize_ht3(s3), v)


def test_symmetrize_rejects_odd():
    with pytest.raises(ValueError, match="even"):
        symmetrize_ht(torch.zeros(2, 15, 15))
    with pytest.raises(ValueError, match="odd"):
        unsymmetrize_ht(torch.zeros(2, 16, 16))
    with pytest.raises(ValueError):
        ht2_center(torch.zeros(5))


def test_even_inverse_is_forward_over_n():
    """cryoDRGN's definition: iht = ht / n_pixels for even sizes."""
    h = torch.randn(2, 16, 16, dtype=torch.float64)
    assert torch.allclose(iht2_center(h), ht2_center(h) / 256)
    v = torch.randn(8, 8, 8, dtype=torch.float64)
    assert torch.allclose(iht3_center(v), ht3_center(v) / 512)


def test_fourier_crop_keeps_band_limited_signal():
    """A signal band-limited below the new Nyquist survives cropping exactly (up to scale)."""
    n, m = 32, 16
    g = torch.Generator().manual_seed(3)
    spec = torch.zeros(2, n, n, dtype=torch.complex128)
    c = n // 2
    spec[:, c - 4 : c + 5, c - 4 : c + 5] = torch.randn(
        2, 9, 9, dtype=torch.complex128, generator=g
    )
    x = ifft2_center(spec).real  # real part keeps the band limit
    small = fourier_crop(x, m)
    # evaluating the same trigonometric polynomial on the coarse grid = every other pixel
    assert torch.allclose(small * (m / n) ** 2, x[..., ::2, ::2], atol=1e-12)
    assert torch.allclose(fourier_crop(x, m, rescale=True), x[..., ::2, ::2], atol=1e-12)
    assert torch.allclose(fourier_crop(x, n), x)
    with pytest.raises(ValueError, match="new_box"):
        fourier_crop(x, 15)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
@pytest.mark.parametrize("scale", [1.0, -0.37])
def test_symmetrized_ht_from_one_real_fft(n, scale):
    x = torch.randn(2, 3, n, n, dtype=torch.float64)
    got = ht2_center_symmetrized(x, scale)
    assert got.shape == (2, 3, n + 1, n + 1) and got.dtype == torch.float64
    assert torch.allclose(got, scale * symmetrize_ht(ht2_center(x)), atol=1e-12)


def test_symmetrized_ht_float32_and_half():
    x = torch.randn(5, 32, 32)
    ref = symmetrize_ht(ht2_center(x))
    assert torch.allclose(ht2_center_symmetrized(x), ref, atol=1e-4)
    assert ht2_center_symmetrized(x.half()).dtype == torch.float32


@pytest.mark.parametrize("n", [4, 16])
def test_symmetrized_ht_with_window_equals_windowed_input(n):
    x = torch.randn(3, n, n, dtype=torch.float64)
    window = torch.rand(n, n, dtype=torch.float64)
    got = ht2_center_symmetrized(x, -0.5, window)
    assert torch.allclose(got, -0.5 * symmetrize_ht(ht2_center(x * window)), atol=1e-12)
    half = ht2_center_symmetrized(x.half(), 2.0, window.float())
    ref = 2.0 * symmetrize_ht(ht2_center(x.half().double() * window.float().double()))
    assert half.dtype == torch.float32 and torch.allclose(half.double(), ref, atol=1e-4)
    with pytest.raises(ValueError, match="window"):
        ht2_center_symmetrized(x, 1.0, window[:-1])


@pytest.mark.parametrize("shape", [(4, 5, 5), (4, 8, 6)])
def test_symmetrized_ht_needs_even_square(shape):
    with pytest.raises(ValueError, match="n even"):
        ht2_center_symmetrized(torch.zeros(shape))
