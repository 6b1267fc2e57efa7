import numpy as np
import pytest
import torch

from cryonoo.eval.fsc import FSCCurve, fsc_auc, fsc_curve, fsc_resolution


def _radius(n: int) -> np.ndarray:
    """Integer-grid radius on the centered grid, [z, y, x] order."""
    x = np.arange(-n // 2, n // 2)
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    return np.sqrt(xx**2 + y**2 + z**2)


def _fft_c(v: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(np.fft.fftshift(v)))


def _reference_fsc(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain float64 numpy FSC with an explicit loop over shells: (curve, voxels per entry)."""
    n = v1.shape[0]
    r = _radius(n)
    f1, f2 = _fft_c(v1), _fft_c(v2)
    curve, counts = [1.0], [1]
    inner = np.zeros(r.shape, dtype=bool)
    for i in range(1, n // 2):
        inside = r < i
        shell = inside & ~inner
        a, b = f1[shell], f2[shell]
        num = np.sum(np.conj(a) * b).real
        den = np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2))
        curve.append(1.0 if den == 0 else num / den)
        counts.append(int(shell.sum()))
        inner = inside
    return np.array(curve), np.array(counts)


def _smooth_volume(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = _fft_c(rng.standard_normal((n, n, n)))
    f *= np.exp(-(_radius(n) ** 2) / (2 * (n / 6) ** 2))
    return np.fft.ifftshift(np.fft.ifftn(np.fft.ifftshift(f))).real


def test_self_fsc_is_one_and_auc_is_max(device):
    n = 64
    v = torch.as_tensor(_smooth_volume(n, 0), device=device)
    c = fsc_curve(v, v)
    assert c.fsc.shape == (n // 2,) and c.freq_px.shape == (n // 2,)
    assert c.fsc.device.type == device.type
    assert torch.allclose(c.fsc, torch.ones_like(c.fsc), rtol=0, atol=1e-12)
    assert c.freq_px[-1].item() == 0.5 - 1 / n
    assert fsc_auc(c, "abs").item() == pytest.approx(0.484375, abs=1e-12)
    assert fsc_auc(c, "clip").item() == pytest.approx(0.5 - 1 / n, abs=1e-12)
    # scale invariance
    c2 = fsc_curve(v, 3.7 * v)
    assert torch.allclose(c2.fsc, c.fsc, rtol=0, atol=1e-12)


def test_matches_independent_numpy_reference():
    n = 32
    rng = np.random.default_rng(1)
    a = _smooth_volume(n, 1)
    b = a + 0.05 * rng.standard_normal((n, n, n))
    mask = (_radius(n) < n / 2 - 2).astype(np.float64)
    for m in (None, mask):
        want, counts = _reference_fsc(a * (1 if m is None else m), b * (1 if m is None else m))
        got = fsc_curve(
            torch.tensor(a), torch.tensor(b), mask=None if m is None else torch.tensor(m)
        )
        np.testing.assert_allclose(got.fsc.numpy(), want, rtol=0, atol=1e-12)
    assert list(counts[:5]) == [1, 1, 26, 66, 158]
    # numpy input and float32 input are accepted (promoted to float64)
    got32 = fsc_curve(a.astype(np.float32), b.astype(np.float32))
    assert got32.fsc.dtype == torch.float64


def test_independent_noise_is_near_zero():
    n = 32
    g = torch.Generator().manual_seed(2)
    _, counts = _reference_fsc(np.zeros((n, n, n)), np.zeros((n, n, n)))
    z = []
    for _ in range(5):
        a = torch.randn(n, n, n, generator=g, dtype=torch.float64)
        b = torch.randn(n, n, n, generator=g, dtype=torch.float64)
        f = fsc_curve(a, b).fsc.numpy()
        assert np.all(np.abs(f[4:]) < 3 / np.sqrt(counts[4:]))
        z.append(f[2:] * np.sqrt(counts[2:]))
    z = np.concatenate(z)
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2


def test_known_lowpass_filter():
    n = 32
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, n, n))
    r = _radius(n)
    # real, positive, isotropic; oscillates within a shell so the FSC departs from 1
    h = 1.05 + np.cos(np.pi * r) * np.exp(-r / 8)
    fa = _fft_c(a)
    b = np.fft.ifftshift(np.fft.ifftn(np.fft.ifftshift(h * fa))).real
    p = np.abs(fa) ** 2
    want = [1.0]
    for i in range(1, n // 2):
        s = (r >= i - 1) & (r < i)
        want.append(np.sum(h[s] * p[s]) / np.sqrt(np.sum(p[s]) * np.sum(h[s] ** 2 * p[s])))
    got = fsc_curve(torch.tensor(a), torch.tensor(b)).fsc.numpy()
    np.testing.assert_allclose(got, np.array(want), rtol=0, atol=1e-10)
    assert got[2:].min() < 0.95  # not trivially all ones


def test_batched_equals_per_volume_and_broadcasts():
    n = 16
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, n, n, n, generator=g, dtype=torch.float64)
    b = a + torch.randn(2, 3, n, n, n, generator=g, dtype=torch.float64)
    c = fsc_curve(a, b)
    assert c.fsc.shape == (2, 3, n // 2)
    for i in range(2):
        for j in range(3):
            single = fsc_curve(a[i, j], b[i, j]).fsc
            assert torch.allclose(c.fsc[i, j], single, rtol=0, atol=1e-13)
    gt = b[0, 0]
    cb = fsc_curve(a, gt)
    assert cb.fsc.shape == (2, 3, n // 2)
    assert torch.allclose(cb.fsc[1, 2], fsc_curve(a[1, 2], gt).fsc, rtol=0, atol=1e-13)
    assert fsc_auc(c).shape == (2, 3)
    assert fsc_resolution(c, rule="first").shape == (2, 3)


def test_zero_power_guard():
    n = 16
    v = torch.as_tensor(_smooth_volume(n, 5))
    zero = torch.zeros(n, n, n, dtype=torch.float64)
    c = fsc_curve(zero, v)
    assert c.fsc[0] == 1.0 and torch.all(c.fsc[1:] == 0)
    assert fsc_auc(c).item() == pytest.approx(1 / (2 * n), abs=1e-15)
    # cryoDRGN parity: zero-power shells read 1.0 and the all-zero volume scores the maximum
    cd = fsc_curve(zero, v, zero_power="cryodrgn")
    assert torch.all(cd.fsc == 1.0)
    assert fsc_auc(cd).item() == pytest.approx(0.5 - 1 / n, abs=1e-15)
    with pytest.raises(ValueError, match="vol_a"):
        fsc_curve(zero, v, zero_power="raise")
    with pytest.raises(ValueError, match="vol_b"):
        fsc_curve(v, zero, zero_power="raise")
    assert torch.allclose(fsc_curve(v, v, zero_power="raise").fsc, torch.ones(n // 2).double())
    with pytest.raises(ValueError, match="zero_power"):
        fsc_curve(v, v, zero_power="nope")


def test_contrast_inversion_abs_vs_clip():
    n = 32
    v = torch.as_tensor(_smooth_volume(n, 6))
    c = fsc_curve(v, -v)
    expected = torch.full((n // 2,), -1.0, dtype=torch.float64)
    expected[0] = 1.0
    assert torch.allclose(c.fsc, expected, rtol=0, atol=1e-12)
    assert fsc_auc(c, "abs").item() == pytest.approx(0.5 - 1 / n, abs=1e-12)
    # clipped curve is [1, 0, 0, …]: one trapezoid of height ½ and width 1/n
    assert fsc_auc(c, "clip").item() == pytest.approx(1 / (2 * n), abs=1e-12)
    with pytest.raises(ValueError, match="sign_rule"):
        fsc_auc(c, "square")


def test_resolution_rules_on_constructed_curve():
    n = 16
    freq = torch.arange(n // 2, dtype=torch.float64) / n
    f = torch.tensor([1.0, 1.0, 0.9, 0.8, 0.6, 0.4, 0.55, 0.1], dtype=torch.float64)
    curve = FSCCurve(freq_px=freq, fsc=f)
    apix = 2.5
    # last entry ≥ 0.5 is entry 6 (the dip at entry 5 is ignored)
    assert fsc_resolution(curve, 0.5, apix).item() == pytest.approx(apix * n / 6)
    # first drop below 0.5 is between entries 4 (0.6) and 5 (0.4): midway → 4.5/n
    assert fsc_resolution(curve, 0.5, apix, rule="first").item() == pytest.approx(apix * n / 4.5)
    # 0.143: last ≥ is entry 6; first crossing between entries 6 (0.55) and 7 (0.1)
    assert fsc_resolution(curve, 0.143, apix).item() == pytest.approx(apix * n / 6)
    x = 6 + (0.55 - 0.143) / (0.55 - 0.1)
    assert fsc_resolution(curve, 0.143, apix, rule="first").item() == pytest.approx(apix * n / x)
    # never below → Nyquist; only entry 0 qualifies → inf
    flat = FSCCurve(freq_px=freq, fsc=torch.ones(n // 2, dtype=torch.float64))
    assert fsc_resolution(flat, 0.5, apix, rule="first").item() == pytest.approx(2 * apix)
    assert fsc_resolution(flat, 0.5, apix).item() == pytest.approx(apix * n / (n // 2 - 1))
    # an entry exactly at the threshold counts as meeting it (≥), and is not a drop below (<)
    tie = FSCCurve(freq_px=freq, fsc=torch.tensor([1.0, 1.0, 0.9, 0.5, 0.3, 0.2, 0.1, 0.0]))
    assert fsc_resolution(tie, 0.5, apix).item() == pytest.approx(apix * n / 3)
    x_tie = 3 + (0.5 - 0.5) / (0.5 - 0.3)
    assert fsc_resolution(tie, 0.5, apix, rule="first").item() == pytest.approx(apix * n / x_tie)
    dead = FSCCurve(freq_px=freq, fsc=torch.tensor([1.0] + [0.0] * 7, dtype=torch.float64))
    assert fsc_resolution(dead, 0.5, apix).item() == float("inf")
    batched = FSCCurve(freq_px=freq, fsc=torch.stack([f, flat.fsc]))
    assert torch.allclose(
        fsc_resolution(batched, 0.5, apix, rule="first"),
        torch.tensor([apix * n / 4.5, 2 * apix], dtype=torch.float64),
    )
    assert torch.allclose(curve.freq_angstrom(apix), freq / apix)
    with pytest.raises(ValueError, match="rule"):
        fsc_resolution(curve, 0.5, rule="middle")
    with pytest.raises(ValueError, match="threshold"):
        fsc_resolution(curve, 1.5)
    with pytest.raises(ValueError, match="apix"):
        fsc_resolution(curve, 0.5, apix=0.0)


def test_bad_inputs():
    v = torch.zeros(16, 16, 16)
    with pytest.raises(ValueError, match="vol_b"):
        fsc_curve(v, torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="vol_a"):
        fsc_curve(torch.zeros(16, 16, 8), v)
    with pytest.raises(ValueError, match="vol_a"):
        fsc_curve(torch.zeros(15, 15, 15), torch.zeros(15, 15, 15))
    with pytest.raises(ValueError, match="vol_a"):
        fsc_curve(torch.zeros(16, 16), v)
    with pytest.raises(ValueError, match="broadcast"):
        fsc_curve(torch.zeros(2, 16, 16, 16), torch.zeros(3, 16, 16, 16))
    with pytest.raises(ValueError, match="mask"):
        fsc_curve(v, v, mask=torch.ones(8, 8, 8))
    bad = v.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="vol_b"):
        fsc_curve(v, bad)


def test_matches_cryodrgn_when_installed():
    mod = pytest.importorskip("cryodrgn.commands_utils.fsc")
    n = 32
    a = _smooth_volume(n, 7)
    b = a + 0.1 * np.random.default_rng(7).standard_normal((n, n, n))
    ref = mod.get_fsc_curve(torch.tensor(a), torch.tensor(b))
    want = np.asarray(ref["fsc"] if hasattr(ref, "columns") else ref, dtype=np.float64).ravel()
    np.testing.assert_allclose(fsc_curve(a, b).fsc.numpy(), want[-(n // 2) :], atol=1e-10)
