import math
import pickle

import numpy as np
import pytest
import torch

from cryonoo.physics.ctf import (
    compute_ctf,
    ctf_from_params,
    ctf_params_for_box,
    electron_wavelength,
)
from cryonoo.physics.lattice import Lattice

F64 = torch.float64


def lam_ref(kv):
    """cryoDRGN's relativistic wavelength in Å, written out by hand."""
    v = kv * 1e3
    return 12.2639 / np.sqrt(v + 0.97845e-6 * v * v)


def ctf_ref(x, y, dfu, dfv, dfang, kv, cs, w, phase=0.0, bfactor=None):
    """Independent float64 numpy implementation of cryoDRGN's CTF (atan2 form)."""
    lam = lam_ref(kv)
    s2 = x**2 + y**2
    alpha = np.arctan2(y, x)
    df = 0.5 * (dfu + dfv + (dfu - dfv) * np.cos(2 * (alpha - np.deg2rad(dfang))))
    gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam**3 * s2**2)
    gamma = gamma - np.deg2rad(phase)
    out = np.sqrt(1 - w**2) * np.sin(gamma) - w * np.cos(gamma)
    if bfactor is not None:
        out = out * np.exp(-bfactor * s2 / 4)
    return out


def radial(s: np.ndarray, angle_deg: float) -> torch.Tensor:
    """(N, 2) points at radii ``s`` along a direction ``angle_deg`` from +x toward +y."""
    a = np.deg2rad(angle_deg)
    return torch.tensor(np.stack([s * np.cos(a), s * np.sin(a)], -1), dtype=F64)


def test_wavelength_matches_relativistic_physics():
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    for kv in (100.0, 200.0, 300.0):
        v = kv * 1e3
        lam_si = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c)))
        got = float(electron_wavelength(torch.tensor(kv, dtype=F64)))
        assert got == pytest.approx(lam_si * 1e10, rel=1e-4)
        assert got == pytest.approx(lam_ref(kv), rel=1e-12)
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=1e-6)


@pytest.mark.parametrize("w", [0.0, 0.07, 0.1, 1.0])
def test_dc_is_minus_w(w):
    freqs = torch.zeros(1, 2, dtype=F64)
    out = compute_ctf(freqs, 15000.0, 12000.0, 33.0, 300.0, 2.7, w)
    assert out.item() == pytest.approx(-w, abs=1e-12)


def test_reference_values_1p5um_300kv():
    s = np.array([0.0, 0.005, 0.01, 0.02])
    ref = ctf_ref(s, 0 * s, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    assert np.allclose(ref, [-0.100, -0.123, -0.192, -0.454], atol=1e-3)  # the reference table
    for angle in (0.0, 90.0, 217.0):
        got = compute_ctf(radial(s, angle), 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
        assert np.allclose(got.numpy(), ref, atol=1e-10)
    got32 = compute_ctf(radial(s, 0.0).float(), 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    assert got32.dtype == torch.float32
    assert np.allclose(got32.numpy(), ref, atol=1e-5)


def test_zeros_at_analytic_positions():
    df, kv = 20000.0, 300.0
    lam = lam_ref(kv)
    n = np.arange(1, 8)
    s_zero = np.sqrt(n / (df * lam))  # γ = −π·df·λ·s² = −nπ
    got = compute_ctf(radial(s_zero, 40.0), df, df, 0.0, kv, 0.0, 0.0).numpy()
    assert np.abs(got).max() < 1e-9
    # between consecutive zeros the sign alternates, starting negative (sin(−γ) < 0 near 0)
    s_mid = np.sqrt((n - 0.5) / (df * lam))
    mid = compute_ctf(radial(s_mid, 40.0), df, df, 0.0, kv, 0.0, 0.0).numpy()
    assert np.allclose(mid, -((-1.0) ** (n - 1)), atol=1e-9)


def test_astigmatism_direction():
    dfu, dfv, kv = 18000.0, 11000.0, 300.0
    lam = lam_ref(kv)
    s = np.linspace(0.0, 0.08, 40)

    def iso(df):
        return np.sin(-np.pi * df * lam * s**2)  # Cs = 0, w = 0

    along_u = compute_ctf(radial(s, 30.0), dfu, dfv, 30.0, kv, 0.0, 0.0).numpy()
    along_v = compute_ctf(radial(s, 120.0), dfu, dfv, 30.0, kv, 0.0, 0.0).numpy()
    assert np.allclose(along_u, iso(dfu), atol=1e-9)
    assert np.allclose(along_v, iso(dfv), atol=1e-9)
    # the opposite direction gives the same value; the mirrored direction (x ↔ y) does not
    assert np.allclose(compute_ctf(radial(s, 210.0), dfu, dfv, 30.0, kv, 0.0, 0.0), iso(dfu))
    mirrored = compute_ctf(radial(s, 60.0), dfu, dfv, 30.0, kv, 0.0, 0.0).numpy()
    assert not np.allclose(mirrored, iso(dfu), atol=1e-3)


def test_random_parameters_against_numpy():
    rng = np.random.default_rng(0)
    b, n = 6, 200
    freqs = rng.uniform(-0.3, 0.3, size=(n, 2))
    freqs[0] = 0.0
    p = {
        "dfu": rng.uniform(5000, 30000, b),
        "dfv": rng.uniform(5000, 30000, b),
        "dfang": rng.uniform(-180, 180, b),
        "kv": rng.choice([200.0, 300.0], b),
        "cs": rng.uniform(0, 3, b),
        "w": rng.uniform(0, 0.2, b),
        "phase": rng.uniform(0, 120, b),
    }
    ref = ctf_ref(freqs[None, :, 0], freqs[None, :, 1], *(v[:, None] for v in p.values()))
    args = [torch.tensor(v) for v in p.values()]
    got = compute_ctf(torch.tensor(freqs), *args)
    assert got.shape == (b, n) and got.dtype == F64
    assert np.allclose(got.numpy(), ref, atol=1e-9)
    # float32 inputs → float32 output, accurate to float32 precision
    got32 = compute_ctf(torch.tensor(freqs).float(), *(a.float() for a in args))
    assert got32.dtype == torch.float32
    assert np.abs(got32.numpy() - ref).max() < 2e-3
    # (B, 1) parameters and per-particle (B, N, 2) frequencies broadcast the same way
    got_b1 = compute_ctf(torch.tensor(freqs).expand(b, n, 2), *(a[:, None] for a in args))
    assert np.allclose(got_b1.numpy(), ref, atol=1e-9)


def test_bfactor_envelope_and_scalefactor():
    s = np.array([0.0, 0.05, 0.1, 0.2])
    freqs = radial(s, 10.0)
    plain = compute_ctf(freqs, 15000.0, 14000.0, 20.0, 300.0, 2.7, 0.1)
    damped = compute_ctf(freqs, 15000.0, 14000.0, 20.0, 300.0, 2.7, 0.1, bfactor=100.0)
    ref = ctf_ref(s * np.cos(np.deg2rad(10)), s * np.sin(np.deg2rad(10)),
                  15000.0, 14000.0, 20.0, 300.0, 2.7, 0.1, bfactor=100.0)  # fmt: skip
    assert np.allclose(damped.numpy(), ref, atol=1e-12)
    assert np.allclose((damped / plain).numpy(), np.exp(-100.0 * s**2 / 4))
    assert damped[-1] / plain[-1] == pytest.approx(math.exp(-1.0))  # B s²/4 = 100·0.04/4
    scaled = compute_ctf(freqs, 15000.0, 14000.0, 20.0, 300.0, 2.7, 0.1, scalefactor=0.5)
    assert torch.allclose(scaled, 0.5 * plain)


def test_sample_ctf_pkl_is_minus_one_on_31_lattice(samples):
    with open(samples / "test_ctf.pkl", "rb") as fh:
        raw = pickle.load(fh)
    params = ctf_params_for_box(raw, 30)
    lat = Lattice(31)
    ctf = ctf_from_params(lat.freqs2d, params[:16])
    assert ctf.shape == (16, 31 * 31)
    assert float(ctf.max()) == pytest.approx(-0.99499, abs=1e-4)  # DC: −sqrt(1 − w²)
    assert float(ctf.min()) == pytest.approx(-0.99754, abs=1e-4)  # corners, Cs term
    assert float(ctf.min()) > -0.9976 and float(ctf.max()) < -0.9949


def test_ctf_params_for_box_rescales_and_drops_d(samples):
    with open(samples / "test_ctf.pkl", "rb") as fh:
        raw = pickle.load(fh)
    assert raw.dtype == np.float32 and raw.shape == (1000, 9)
    before = raw.copy()
    for box, apix in ((30, 1.0), (60, 0.5), (20, 1.5)):
        out = ctf_params_for_box(raw, box)
        assert out.dtype == torch.float32 and out.shape == (1000, 8)
        assert torch.all(out[:, 0] == torch.tensor(apix, dtype=torch.float32))
        assert np.array_equal(out[:, 1:].numpy(), raw[:, 2:])
    assert np.array_equal(raw, before)  # input untouched
    np.testing.assert_allclose(out[0].numpy(), [1.5, 0, 0, 0, 300, 0.001, 0.1, 90], rtol=1e-6)


def test_ctf_params_for_box_uses_row_zero_only():
    arr = np.array(
        [[64, 2.0, 1e4, 9e3, 10, 300, 2.7, 0.1, 0], [128, 1.0, 2e4, 1.8e4, 20, 200, 2.0, 0.07, 45]],
        dtype=np.float32,
    )
    out = ctf_params_for_box(arr, 32)
    assert torch.all(out[:, 0] == 4.0)  # 64 · 2 / 32 for both rows
    assert np.array_equal(out[:, 1:].numpy(), arr[:, 2:])
    with pytest.raises(ValueError, match="ctf_pkl_array"):
        ctf_params_for_box(arr[:, :8], 32)
    with pytest.raises(ValueError, match="box"):
        ctf_params_for_box(arr, 31)


def test_ctf_from_params_divides_by_apix_per_particle():
    rng = np.random.default_rng(3)
    freqs_cpx = torch.tensor(rng.uniform(-0.5, 0.5, (50, 2)))
    params = torch.tensor(
        [[1.2, 15000, 13000, 25, 300, 2.7, 0.1, 0], [3.0, 22000, 21000, -70, 200, 2.0, 0.07, 30]],
        dtype=F64,
    )
    got = ctf_from_params(freqs_cpx, params)
    assert got.shape == (2, 50)
    for i in range(2):
        f = freqs_cpx.numpy() / params[i, 0].item()
        ref = ctf_ref(f[:, 0], f[:, 1], *params[i, 1:].tolist())
        assert np.allclose(got[i].numpy(), ref, atol=1e-10)


def test_gradients_flow():
    freqs = torch.tensor(np.random.default_rng(1).uniform(-0.05, 0.05, (20, 2)))
    freqs[0] = 0.0
    dfu = torch.tensor([15000.0, 9000.0], dtype=F64, requires_grad=True)
    ang = torch.tensor([10.0, 80.0], dtype=F64, requires_grad=True)

    def f(dfu, ang):
        return compute_ctf(freqs, dfu, dfu * 0.9, ang, 300.0, 2.7, 0.1)

    assert torch.autograd.gradcheck(f, (dfu, ang))
    fr = freqs.clone().requires_grad_(True)
    compute_ctf(fr, 15000.0, 12000.0, 30.0, 300.0, 2.7, 0.1).sum().backward()
    assert torch.isfinite(fr.grad).all()  # smooth at s = 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volt": 0.0}, "volt"),
        ({"volt": -300.0}, "volt"),
        ({"w": 1.5}, "w"),
        ({"w": -0.1}, "w"),
        ({"cs": -1.0}, "cs"),
        ({"dfu": float("nan")}, "dfu"),
        ({"bfactor": float("inf")}, "bfactor"),
        ({"dfu": torch.ones(3), "dfv": torch.ones(4)}, "broadcast"),
    ],
)
def test_validation(kwargs, match):
    args = {"dfu": 1e4, "dfv": 1e4, "dfang": 0.0, "volt": 300.0, "cs": 2.7, "w": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compute_ctf(torch.zeros(5, 2), **args)


def test_shape_validation():
    with pytest.raises(ValueError, match="freqs"):
        compute_ctf(torch.zeros(5, 3), 1e4, 1e4, 0.0, 300.0, 2.7, 0.1)
    with pytest.raises(ValueError, match="freqs"):
        compute_ctf(torch.zeros(5), 1e4, 1e4, 0.0, 300.0, 2.7, 0.1)
    with pytest.raises(ValueError, match="freqs"):
        compute_ctf(torch.tensor([[0.0, float("nan")]]), 1e4, 1e4, 0.0, 300.0, 2.7, 0.1)
    with pytest.raises(ValueError, match=r"params.*\(B, 8\)"):
        ctf_from_params(torch.zeros(5, 2), torch.ones(3, 9))
    with pytest.raises(ValueError, match="freqs_cpx"):
        ctf_from_params(torch.zeros(5, 3), torch.ones(3, 8))
    with pytest.raises(ValueError, match="Apix"):
        ctf_from_params(torch.zeros(5, 2), torch.zeros(3, 8))


def test_shared_frequency_fast_path_equals_general_formula():
    """ctf_from_params on (N, 2) frequencies (one matmul) equals compute_ctf on (B, N, 2)."""
    from cryonoo.physics.ctf import compute_ctf, ctf_from_params
    from cryonoo.physics.lattice import lattice_freqs

    g = torch.Generator().manual_seed(5)
    b = 16
    params = torch.stack(
        [
            1 + 3 * torch.rand(b, generator=g, dtype=torch.float64),
            5000 + 20000 * torch.rand(b, generator=g, dtype=torch.float64),
            5000 + 20000 * torch.rand(b, generator=g, dtype=torch.float64),
            -90 + 180 * torch.rand(b, generator=g, dtype=torch.float64),
            torch.full((b,), 300.0, dtype=torch.float64),
            4 * torch.rand(b, generator=g, dtype=torch.float64),
            0.3 * torch.rand(b, generator=g, dtype=torch.float64),
            30 * torch.rand(b, generator=g, dtype=torch.float64),
        ],
        dim=-1,
    )
    freqs = lattice_freqs(33, dtype=torch.float64)
    fast = ctf_from_params(freqs, params)
    general = compute_ctf(freqs / params[:, None, :1], *params[:, 1:].unbind(-1))
    assert fast.shape == (b, 33 * 33)
    torch.testing.assert_close(fast, general, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="volt"):
        bad = params.clone()
        bad[0, 4] = -1
        ctf_from_params(freqs, bad)
