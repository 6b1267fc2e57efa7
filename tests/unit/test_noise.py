import math

import numpy as np
import pytest
import torch

from cryonoo.physics.noise import (
    NoiseEstimate,
    add_gaussian_noise,
    estimate_noise_sigma,
    sigma_for_snr,
)


def _reference_sigma(images: np.ndarray, k_thresh: int) -> np.ndarray:
    """Literal float64 numpy version of the estimator, looping over images and radial bins."""
    D = images.shape[-1]
    k = np.fft.fftshift(np.fft.fftfreq(D)) * D
    r = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    bins = np.rint(r).astype(int)
    out = []
    for img in images:
        p = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
        profile = [p[bins == b].mean() for b in range(k_thresh + 1, D // 2 + 1)]
        out.append(np.sqrt(np.mean(profile) / D**2))
    return np.array(out)


def _structured_images(n: int, D: int, seed: int) -> np.ndarray:
    """Smooth random blobs inside a disc, filtered by an oscillating CTF-like sin(π·λ·df·s²)."""
    rng = np.random.default_rng(seed)
    n_blobs = 20
    rad = D / 4 * np.sqrt(rng.uniform(size=(n, n_blobs)))
    ang = rng.uniform(0, 2 * np.pi, size=(n, n_blobs))
    cy, cx = rad * np.sin(ang), rad * np.cos(ang)
    width = rng.uniform(1.0, 2.5, size=(n, n_blobs))
    amp = rng.uniform(0.5, 1.5, size=(n, n_blobs))
    g = np.arange(D) - D // 2
    dy = g[None, None, :, None] - cy[..., None, None]
    dx = g[None, None, None, :] - cx[..., None, None]
    blobs = amp[..., None, None] * np.exp(-(dx**2 + dy**2) / (2 * width[..., None, None] ** 2))
    img = blobs.sum(axis=1)
    apix, lam = 2.0, 0.0197  # Å/px, Å (300 kV)
    s = np.fft.fftfreq(D) / apix
    s2 = s[:, None] ** 2 + s[None, :] ** 2
    df = rng.uniform(10000, 25000, size=(n, 1, 1))
    ctf = np.sin(np.pi * lam * df * s2[None])
    return np.fft.ifft2(np.fft.fft2(img) * ctf).real


def test_matches_literal_reference_even_and_odd():
    rng = np.random.default_rng(0)
    for D in (32, 33):
        x = rng.standard_normal((6, D, D)) * 0.3 + 1.0
        kt = math.floor(0.8 * D / 2)
        est = estimate_noise_sigma(torch.tensor(x))
        assert est.k_thresh == kt
        np.testing.assert_allclose(est.per_image.numpy(), _reference_sigma(x, kt), rtol=1e-12)
        assert est.sigma == pytest.approx(_reference_sigma(x, kt).mean(), rel=1e-12)
        est5 = estimate_noise_sigma(x, k_thresh=5)
        np.testing.assert_allclose(est5.per_image.numpy(), _reference_sigma(x, 5), rtol=1e-12)


def test_pure_noise_recovered(device):
    g = torch.Generator().manual_seed(1)
    x = 0.7 * torch.randn(200, 64, 64, generator=g, dtype=torch.float64)
    est = estimate_noise_sigma(x.to(device))
    assert isinstance(est, NoiseEstimate) and est.per_image.shape == (200,)
    assert est.sigma == pytest.approx(0.7, rel=0.05)
    assert est.sigma == pytest.approx(0.7, rel=0.01)  # metrics.md §6.15
    # scale equivariance
    assert estimate_noise_sigma(3.0 * x).sigma == pytest.approx(3.0 * est.sigma, rel=1e-12)


@pytest.mark.parametrize("snr", [0.1, 0.01])
def test_signal_plus_noise_recovered(snr):
    clean = torch.tensor(_structured_images(200, 64, seed=2))
    noisy, sigma = add_gaussian_noise(clean, snr=snr, generator=torch.Generator().manual_seed(3))
    est = estimate_noise_sigma(noisy)
    assert est.sigma == pytest.approx(sigma, rel=0.05)
    # the signal really carries power: without the high-pass the estimate is biased upward
    assert estimate_noise_sigma(noisy, k_thresh=0).sigma > (1 + 1.5 * snr) * sigma


def test_snr_definition_and_measured_snr():
    clean = torch.tensor(_structured_images(100, 64, seed=4))
    for snr in (0.1, 1.0):
        noisy, sigma = add_gaussian_noise(
            clean, snr=snr, generator=torch.Generator().manual_seed(5)
        )
        # σ is the pooled population std over all pixels divided by sqrt(snr)
        assert sigma == pytest.approx(float(np.std(clean.numpy())) / math.sqrt(snr), rel=1e-12)
        assert sigma == sigma_for_snr(clean, snr)
        measured = clean.var(correction=0) / (noisy - clean).var(correction=0)
        assert float(measured) == pytest.approx(snr, rel=0.05)
    noisy, sigma = add_gaussian_noise(clean, sigma=0.25, generator=torch.Generator().manual_seed(6))
    assert sigma == 0.25
    assert float((noisy - clean).std()) == pytest.approx(0.25, rel=0.01)
    same, _ = add_gaussian_noise(clean, sigma=0.0)
    assert torch.equal(same, clean)


def test_seeding(device):
    x = torch.zeros(4, 16, 16, device=device)
    a, _ = add_gaussian_noise(x, sigma=1.0, generator=torch.Generator().manual_seed(7))
    b, _ = add_gaussian_noise(x, sigma=1.0, generator=torch.Generator().manual_seed(7))
    c, _ = add_gaussian_noise(x, sigma=1.0, generator=torch.Generator().manual_seed(8))
    assert a.device.type == device.type and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the CPU generator gives the same noise on every device
    ref, _ = add_gaussian_noise(x.cpu(), sigma=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.cpu(), ref)


def test_streaming_matches_whole_stack(tmp_path):
    rng = np.random.default_rng(9)
    x = (0.5 * rng.standard_normal((101, 32, 32))).astype(np.float32)
    path = tmp_path / "stack.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    whole = estimate_noise_sigma(torch.from_numpy(x))
    streamed = estimate_noise_sigma(mm, batch_size=17)
    assert streamed.per_image.shape == (101,)
    np.testing.assert_allclose(streamed.per_image.numpy(), whole.per_image.numpy(), rtol=1e-12)
    assert streamed.sigma == pytest.approx(whole.sigma, rel=1e-12)
    chunked_tensor = estimate_noise_sigma(torch.from_numpy(x), batch_size=50)
    assert chunked_tensor.sigma == pytest.approx(whole.sigma, rel=1e-12)


def test_bad_inputs():
    x = torch.randn(3, 16, 16)
    nan = x.clone()
    nan[0, 0, 0] = float("nan")
    inf = x.clone()
    inf[1, 2, 3] = float("inf")
    for bad in (nan, inf):
        with pytest.raises(ValueError, match="images"):
            add_gaussian_noise(bad, sigma=1.0)
        with pytest.raises(ValueError, match="images"):
            estimate_noise_sigma(bad)
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(x, sigma=-1.0)
    with pytest.raises(ValueError, match="snr"):
        add_gaussian_noise(x, snr=0.0)
    with pytest.raises(ValueError, match="snr"):
        sigma_for_snr(x, -0.1)
    with pytest.raises(ValueError, match="exactly one"):
        add_gaussian_noise(x, sigma=1.0, snr=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        add_gaussian_noise(x)
    with pytest.raises(ValueError, match="zero variance"):
        add_gaussian_noise(torch.ones(2, 8, 8), snr=0.1)
    with pytest.raises(ValueError, match="square"):
        estimate_noise_sigma(torch.randn(2, 16, 12))
    with pytest.raises(ValueError, match="8"):
        estimate_noise_sigma(torch.randn(2, 6, 6))
    with pytest.raises(ValueError, match="k_thresh"):
        estimate_noise_sigma(x, k_thresh=8)
    with pytest.raises(ValueError, match="k_thresh"):
        estimate_noise_sigma(x, k_thresh=-1)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_noise_sigma(x, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        estimate_noise_sigma(np.zeros((0, 16, 16)), batch_size=4)
