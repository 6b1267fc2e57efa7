"""SSL losses against hand-computed values, plus dtype, symmetry and guard behaviour."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cryonoo.ssl import SSL
from cryonoo.ssl.losses import (
    VICREG_CONVENTION,
    barlow_twins_loss,
    collapse_std,
    combine_vicreg_terms,
    invariance_loss,
    simsiam_loss,
    vicreg_branch_terms,
    vicreg_loss,
    vicreg_terms,
)

A = np.array([[0.3, -1.2, 2.0], [1.5, 0.4, -0.7], [-0.8, 0.9, 0.1], [0.2, -0.3, 1.1]])
B = np.array([[0.1, -1.0, 1.7], [1.9, 0.2, -0.4], [-1.1, 1.3, 0.6], [0.5, -0.6, 0.9]])


def t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- VICReg
def numpy_vicreg(a: np.ndarray, b: np.ndarray, gamma=1.0, eps=1e-4) -> dict[str, float]:
    """The 'official' convention written out with numpy."""
    n, d = a.shape
    inv = ((a - b) ** 2).sum() / (n * d)

    def v(x):
        std = np.sqrt(x.var(axis=0, ddof=1) + eps)
        return np.maximum(0.0, gamma - std).sum() / d

    def c(x):
        xc = x - x.mean(axis=0)
        cov = xc.T @ xc / (n - 1)
        return ((cov**2).sum() - (np.diag(cov) ** 2).sum()) / d

    return {"inv": inv, "var": 0.5 * (v(a) + v(b)), "cov": c(a) + c(b)}


def test_vicreg_convention_name():
    assert VICREG_CONVENTION == "official"


def test_vicreg_matches_numpy_on_4x3():
    got = vicreg_terms(t(A), t(B))
    want = numpy_vicreg(A, B)
    for key in ("inv", "var", "cov"):
        assert got[key].item() == pytest.approx(want[key], rel=1e-12, abs=1e-12)
    total = vicreg_loss(t(A), t(B), inv=2.0, var=3.0, cov=0.5)
    assert total.item() == pytest.approx(2 * want["inv"] + 3 * want["var"] + 0.5 * want["cov"])


@pytest.mark.parametrize(("n", "d"), [(5, 40), (40, 5), (7, 7)])
def test_vicreg_matches_numpy_for_narrow_and_wide_batches(n, d):
    """The covariance penalty through the (n, n) Gram matrix (n < d) or the (d, d) covariance
    equals the numpy definition, and branch statistics combine to the pair terms."""
    rng = np.random.default_rng(n * 100 + d)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 0.5 + 0.2
    got, want = vicreg_terms(t(a), t(b)), numpy_vicreg(a, b)
    for key in ("inv", "var", "cov"):
        assert got[key].item() == pytest.approx(want[key], rel=1e-10)
    combined = combine_vicreg_terms(
        invariance_loss(t(a), t(b)), vicreg_branch_terms(t(a)), vicreg_branch_terms(t(b))
    )
    for key in ("inv", "var", "cov"):
        assert combined[key].item() == pytest.approx(want[key], rel=1e-10)
    with pytest.raises(ValueError, match="B ≥ 2"):
        vicreg_branch_terms(t(a[:1]))


def test_vicreg_hand_computed_2x2():
    # a centred is [[-1,-1],[1,1]]: unbiased var 2 per dim (std > 1 → hinge 0), C = [[2,2],[2,2]],
    # off-diagonal Σ C² / d = 8 / 2 = 4. b is constant: std = sqrt(1e-4) = 0.01 → hinge 0.99.
    a = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    b = torch.zeros(2, 2)
    got = vicreg_terms(a, b)
    assert got["inv"].item() == pytest.approx(8.0 / 4)  # (0+0+4+4) / (n·d)
    assert got["var"].item() == pytest.approx(0.5 * (0.0 + 0.99))  # halved: mean of branches
    assert got["cov"].item() == pytest.approx(4.0 + 0.0)
    assert vicreg_loss(a, b).item() == pytest.approx(2.0 + 0.495 + 4.0)


def test_vicreg_variance_zero_when_spread_and_exact_when_collapsed():
    g = torch.Generator().manual_seed(0)
    spread = 3.0 * torch.randn(64, 5, generator=g)
    assert (spread.std(dim=0) > 1).all()
    assert vicreg_terms(spread, spread.flip(0))["var"].item() == 0.0
    collapsed = torch.ones(8, 5) * torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
    terms = vicreg_terms(collapsed, collapsed.clone())
    # per dim: γ − sqrt(0 + ε) = 1 − 0.01; averaged over d and over the two branches
    assert terms["var"].item() == pytest.approx(1.0 - 1e-4**0.5, rel=1e-6)
    assert terms["inv"].item() == 0.0 and terms["cov"].item() == 0.0
    assert vicreg_terms(collapsed, collapsed, gamma=2.0)["var"].item() == pytest.approx(1.99)


def test_vicreg_symmetric_and_covariance_zero_for_decorrelated():
    assert vicreg_loss(t(A), t(B)).item() == pytest.approx(vicreg_loss(t(B), t(A)).item())
    # ±1 Hadamard-like columns: centred, unit variance (n−1 normalization) and uncorrelated
    h = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    h = h * (3 / 4) ** 0.5
    assert vicreg_terms(h, h)["cov"].item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- SimSiam / Barlow / MSE
def test_simsiam_hand_computed_and_minimum():
    p_a, z_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # cos 0
    p_b, z_a = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])  # cos 1
    assert simsiam_loss(p_a, p_b, z_a, z_b).item() == pytest.approx(0.5 * 0 + 0.5 * -1)
    x = torch.randn(5, 4)
    assert simsiam_loss(x, 2 * x, 3 * x, x).item() == pytest.approx(-1.0)


def test_simsiam_matches_numpy():
    def d(p, z):
        pn = p / np.linalg.norm(p, axis=1, keepdims=True)
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        return -(pn * zn).sum(1).mean()

    want = 0.5 * d(A, B[::-1]) + 0.5 * d(B, A[::-1])
    got = simsiam_loss(t(A), t(B), t(A[::-1].copy()), t(B[::-1].copy()))
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_simsiam_stop_gradient():
    p_a, p_b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    z_a, z_b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    simsiam_loss(p_a, p_b, z_a, z_b).backward()
    assert z_a.grad is None and z_b.grad is None
    assert p_a.grad is not None and p_a.grad.abs().sum() > 0
    assert p_b.grad is not None and p_b.grad.abs().sum() > 0


def test_invariance_is_elementwise_mse():
    assert invariance_loss(t(A), t(B)).item() == pytest.approx(((A - B) ** 2).mean(), rel=1e-12)


def test_barlow_hand_computed_and_numpy():
    a = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    # standardized (biased var 1, eps 0): C = [[1, -1], [1, -1]] → (1−1)² + (1+1)² + λ(1 + 1)
    assert barlow_twins_loss(a, b, lambd=0.5, eps=0.0).item() == pytest.approx(4.0 + 0.5 * 2)

    def ref(x, y, lambd, eps):
        xs = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
        ys = (y - y.mean(0)) / np.sqrt(y.var(0) + eps)
        c = xs.T @ ys / x.shape[0]
        off = (c**2).sum() - (np.diag(c) ** 2).sum()
        return ((1 - np.diag(c)) ** 2).sum() + lambd * off

    got = barlow_twins_loss(t(A), t(B), lambd=0.0051)
    assert got.item() == pytest.approx(ref(A, B, 0.0051, 1e-5), rel=1e-10)
    sym = barlow_twins_loss(t(B), t(A), lambd=0.0051)
    assert got.item() == pytest.approx(sym.item(), rel=1e-10)


# ------------------------------------------------------------------------- precision and guards
def test_half_inputs_computed_in_float32():
    a, b = torch.tensor(A, dtype=torch.float32), torch.tensor(B, dtype=torch.float32)
    for fn in (vicreg_loss, invariance_loss, barlow_twins_loss):
        ref = fn(a, b)
        low = fn(a.to(torch.bfloat16), b.to(torch.bfloat16))
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(ref.item(), rel=3e-2, abs=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vicreg_loss(a, b).dtype == torch.float32


@pytest.mark.parametrize("name", ["vicreg", "simsiam", "invariance", "barlow"])
def test_objective_float32_under_autocast(name):
    torch.manual_seed(0)
    obj = SSL.build(name, in_dim=4, head="16-16")
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(z_a.to(torch.bfloat16), z_b)
    assert out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("name", ["vicreg", "simsiam", "invariance", "barlow"])
def test_objective_batch_of_one_is_skipped(name, caplog):
    obj = SSL.build(name, in_dim=4, head="8-8")
    with caplog.at_level(logging.WARNING):
        out = obj(torch.randn(1, 4), torch.randn(1, 4))
    assert out["loss"].item() == 0.0 and out["skipped"].item() == 1.0
    normal = obj(torch.randn(3, 4), torch.randn(3, 4))
    assert normal["skipped"].item() == 0.0


def test_guards():
    with pytest.raises(ValueError):
        vicreg_terms(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_terms(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))
    assert collapse_std(torch.randn(1, 3)).item() == 0.0
    healthy = collapse_std(torch.randn(4096, 16, generator=torch.Generator().manual_seed(1)))
    assert healthy.item() == pytest.approx(16**-0.5, rel=0.05)
    assert collapse_std(torch.ones(8, 16)).item() == pytest.approx(0.0, abs=1e-6)


def test_vicreg_loss_decreases_with_training():
    torch.manual_seed(0)
    obj = SSL.build("vicreg", in_dim=4, head="32-32")
    enc = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam([*obj.parameters(), *enc.parameters()], lr=1e-2)
    x = torch.randn(32, 8)
    losses = []
    for _ in range(30):
        noisy = x + 0.3 * torch.randn_like(x)
        loss = obj(enc(x), enc(noisy))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
