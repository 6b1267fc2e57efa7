"""Positional encodings, encoders and decoders of ``cryonoo.models``."""

from __future__ import annotations

import math

import pytest
import torch

from cryonoo.models import DECODERS, ENCODERS, POSITIONAL, ResidLinear, ResidLinearMLP
from cryonoo.models.decoders import FourierDecoder
from cryonoo.physics.lattice import circular_mask, lattice_coords
from cryonoo.physics.rotations import random_rotations


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- positional
@pytest.mark.parametrize("name", POSITIONAL.names())
def test_positional_entries_build_and_describe(name: str) -> None:
    pe = POSITIONAL.build(name, D=17, enc_dim=4, feat_sigma=0.5, seed=1)
    coords = torch.rand(2, 5, 3, generator=_gen()) - 0.5
    out = pe(coords)
    assert out.shape == (2, 5, pe.out_dim)
    assert torch.isfinite(out).all()
    assert POSITIONAL.describe(name)


def test_geometric_layout_and_frequencies() -> None:
    pe = POSITIONAL.build("geom_lowf", D=17, enc_dim=5)
    f = pe.freqs
    assert f[0].item() == pytest.approx(8.0) and f[-1].item() == pytest.approx(1.0)
    x = 0.3
    out = pe(torch.tensor([[x, 0.0, 0.0]]))[0]
    n = 5
    torch.testing.assert_close(out[:n], torch.sin(x * f))
    torch.testing.assert_close(out[n : 2 * n], torch.cos(x * f))
    torch.testing.assert_close(out[2 * n : 3 * n], torch.zeros(n))  # sin(y f), y = 0
    torch.testing.assert_close(out[3 * n : 4 * n], torch.ones(n))  # cos(y f)
    full = POSITIONAL.build("geom_full", D=17, enc_dim=5).freqs
    assert full[0].item() == pytest.approx(16 * math.pi) and full[-1].item() == pytest.approx(1.0)
    nohigh = POSITIONAL.build("geom_nohighf", D=17, enc_dim=5).freqs
    assert nohigh[-1].item() == pytest.approx(2 * math.pi)
    lin = POSITIONAL.build("linear_lowf", D=17, enc_dim=3)
    assert lin.out_dim == 6 * 8 and lin.freqs.tolist() == list(range(1, 9))


def test_gaussian_features_seed_and_buffer() -> None:
    pe = POSITIONAL.build("gaussian", D=17, enc_dim=4, feat_sigma=0.5, seed=3)
    again = POSITIONAL.build("gaussian", D=17, enc_dim=4, feat_sigma=0.5, seed=3)
    other = POSITIONAL.build("gaussian", D=17, enc_dim=4, feat_sigma=0.5, seed=4)
    assert "rand_freqs" in pe.state_dict() and pe.rand_freqs.shape == (12, 3)
    torch.testing.assert_close(pe.rand_freqs, again.rand_freqs)
    assert not torch.equal(pe.rand_freqs, other.rand_freqs)
    k = torch.tensor([[0.1, -0.2, 0.3]])
    t = 8 * (k @ pe.rand_freqs.T)
    torch.testing.assert_close(pe(k), torch.cat([torch.sin(t), torch.cos(t)], -1))
    assert pe.out_dim == 24


# ----------------------------------------------------------------------------- encoders
def test_resid_mlp_structure() -> None:
    mlp = ResidLinearMLP(8, 2, 8, 8)
    kinds = [type(m).__name__ for m in mlp.main]
    assert kinds == ["ResidLinear", "ReLU"] * 3 + ["ResidLinear"]
    mlp = ResidLinearMLP(10, 1, 8, 4, "leaky_relu")
    kinds = [type(m).__name__ for m in mlp.main]
    assert kinds == ["Linear", "LeakyReLU", "ResidLinear", "LeakyReLU", "Linear"]
    x = torch.randn(3, 8)
    layer = ResidLinear(8, 8)
    torch.testing.assert_close(layer(x), layer.linear(x) + x)


def test_resid_linear_folded_skip_equals_the_sum_forward_and_backward() -> None:
    """``(W + I) x + b`` is ``W x + b + x``: same output and same gradients for x, W and b
    (float64, so the only difference is rounding)."""
    layer = ResidLinear(16, 16).double()
    x = torch.randn(5, 7, 16, dtype=torch.float64, generator=_gen(), requires_grad=True)
    upstream = torch.randn(5, 7, 16, dtype=torch.float64, generator=_gen(1))

    def grads(out: torch.Tensor) -> list[torch.Tensor]:
        params = [x, layer.linear.weight, layer.linear.bias]
        return list(torch.autograd.grad(out, params, upstream))

    folded = layer(x)
    summed = layer.linear(x) + x
    torch.testing.assert_close(folded, summed, rtol=1e-13, atol=1e-13)
    for a, b in zip(grads(folded), grads(summed), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_in_place_activations_give_the_out_of_place_gradients(activation: str) -> None:
    """The stack's ReLUs act in place; output and every gradient equal those of the same
    stack with out-of-place activations (float64), through the split first layer too."""
    import copy

    mlp = ResidLinearMLP(11, 2, 16, 3, activation).double()
    reference = copy.deepcopy(mlp)
    acts = [m for m in mlp.modules() if isinstance(m, torch.nn.ReLU | torch.nn.LeakyReLU)]
    assert len(acts) == 3 and all(m.inplace for m in acts)
    for m in reference.modules():
        if isinstance(m, torch.nn.ReLU | torch.nn.LeakyReLU):
            m.inplace = False
    x = torch.randn(4, 6, 8, dtype=torch.float64, generator=_gen())
    z = torch.randn(4, 3, dtype=torch.float64, generator=_gen(1))
    for net in (mlp, reference):
        (
            net(torch.cat([x, z[:, None].expand(4, 6, 3)], -1)).sum()
            + net.forward_concat(x, z).sum()
        ).backward()
    torch.testing.assert_close(mlp.forward_concat(x, z), reference.forward_concat(x, z))
    for p, q in zip(mlp.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_resid_linear_keeps_the_sum_under_bf16_autocast() -> None:
    """Under autocast the weight is not folded (``1 + W_ii`` in bfloat16 loses ``W_ii``):
    the output is exactly autocast's ``linear(x) + x``."""
    layer = ResidLinear(16, 16)
    x = torch.randn(6, 16, generator=_gen())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, reference = layer(x), layer.linear(x) + x
    assert torch.equal(out, reference)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_entries_forward_backward(name: str) -> None:
    D, zdim, in_dim = 17, 3, 40
    enc = ENCODERS.build(name, in_dim=in_dim, zdim=zdim, layers=1, dim=16, D=D)
    x = torch.randn(4, D, D) if enc.input_kind == "image" else torch.randn(4, in_dim)
    pose = (
        (random_rotations(4, torch.Generator().manual_seed(0)),)
        if getattr(enc, "needs_pose", False)
        else ()
    )
    mu, logvar = enc(x, *pose)  # a pose-conditioned encoder is called with the poses
    assert mu.shape == logvar.shape == (4, zdim)
    (mu.sum() + logvar.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())
    assert ENCODERS.describe(name)


@pytest.mark.parametrize("D", [17, 31, 65, 129])
def test_cnn_shapes_follow_D(D: int) -> None:
    enc = ENCODERS.build("cnn", D=D, zdim=2, layers=2, dim=8)
    mu, _ = enc(torch.randn(2, D, D))
    assert mu.shape == (2, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        enc(torch.randn(2, D + 2, D + 2))


def test_encoder_bad_args() -> None:
    with pytest.raises(ValueError, match="activation"):
        ENCODERS.build("mlp", in_dim=4, zdim=2, activation="nope")
    with pytest.raises(ValueError, match="zdim"):
        ENCODERS.build("resid-mlp", in_dim=4, zdim=0)
    enc = ENCODERS.build("resid-mlp", in_dim=4, zdim=2, layers=0, dim=8)
    with pytest.raises(ValueError, match="encoder-mask points"):
        enc(torch.randn(2, 5))


# ----------------------------------------------------------------------------- decoders
def _small_decoder(
    pe_type: str = "gaussian", name: str = "fourier", zdim: int = 2
) -> FourierDecoder:
    torch.manual_seed(0)
    return DECODERS.build(name, D=17, zdim=zdim, layers=2, dim=32, pe_type=pe_type, pe_dim=4)


@pytest.mark.parametrize("name", DECODERS.names())
@pytest.mark.parametrize("pe_type", POSITIONAL.names())
def test_decoder_entries_forward_backward(name: str, pe_type: str) -> None:
    dec = _small_decoder(pe_type, name)
    coords = lattice_coords(17)[circular_mask(17)] @ random_rotations(3, generator=_gen())
    z = torch.randn(3, 2)
    out = dec(coords, z)
    assert out.shape == coords.shape[:2] and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters() if p.requires_grad)
    assert DECODERS.describe(name)


@pytest.mark.parametrize("in_dim", [10, 16])  # a plain first layer, a residual one (= hidden)
def test_forward_concat_equals_the_stack_on_the_concatenation(in_dim: int) -> None:
    """``forward_concat(x, z)`` is the stack on ``cat([x, z broadcast])``: values and gradients
    to float rounding, whether the first layer is plain or residual."""
    torch.manual_seed(1)
    mlp = ResidLinearMLP(in_dim, 2, 16, 3)
    assert isinstance(mlp.main[0], ResidLinear) == (in_dim == 16)
    x = torch.randn(4, 7, in_dim - 3, generator=_gen(6))
    z = torch.randn(4, 3, generator=_gen(7), requires_grad=True)
    ref = mlp(torch.cat([x, z[:, None].expand(4, 7, 3)], dim=-1))
    out = mlp.forward_concat(x, z)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    wrt = [z, *mlp.parameters()]
    grads = torch.autograd.grad(out.square().sum(), wrt)
    for g, g_ref in zip(grads, torch.autograd.grad(ref.square().sum(), wrt), strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODERS.names())
def test_split_first_layer_equals_the_concatenated_input(name: str) -> None:
    """The first layer applied as ``PE(k) W_peᵀ + (z W_zᵀ + b)`` gives the values and the
    gradients of the network on the concatenated ``[PE(k), z]`` (float rounding only)."""
    dec = _small_decoder(name=name)
    coords = lattice_coords(17)[circular_mask(17)] @ random_rotations(3, generator=_gen(4))
    z = torch.randn(3, 2, generator=_gen(5), requires_grad=True)
    feats = dec.pe(coords)
    cat = torch.cat([feats, z[:, None, :].expand(*coords.shape[:-1], 2)], dim=-1)
    ref = dec.mlp(cat)
    ref_grads = torch.autograd.grad(ref.square().sum(), [z, *dec.mlp.parameters()])
    out = dec._net(coords, z)
    grads = torch.autograd.grad(out.square().sum(), [z, *dec.mlp.parameters()])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_half_lattice_equals_full_evaluation() -> None:
    dec = _small_decoder()
    for with_dc in (False, True):
        coords = lattice_coords(17)[circular_mask(17, ignore_dc=not with_dc)]
        pts = coords @ random_rotations(4, generator=_gen(1))  # (4, N, 3), N odd with DC
        z = torch.randn(4, 2, generator=_gen(2))
        half = dec(pts, z)
        full = dec.hartley(pts, z)
        torch.testing.assert_close(half, full, atol=1e-5, rtol=1e-5)
        # Hermitian: the value at −k equals the mirrored entry (Re + Im of k)
        # (except at DC, its own mirror, where the network's Im need not vanish)
        out = dec.decode(pts, z)
        keep = (coords.abs().sum(-1) > 0).flip(0)
        mirrored = (out[..., 0] + out[..., 1])[:, keep]
        torch.testing.assert_close(full.flip(-1)[:, keep], mirrored, atol=1e-5, rtol=1e-5)


def test_decode_is_hermitian() -> None:
    dec = _small_decoder()
    k = torch.rand(2, 50, 3, generator=_gen(3)) - 0.5
    z = torch.randn(2, 2)
    a, b = dec.decode(k, z), dec.decode(-k, z)
    torch.testing.assert_close(a[..., 0], b[..., 0])
    torch.testing.assert_close(a[..., 1], -b[..., 1])


def test_decoder_rejects_bad_input() -> None:
    dec = _small_decoder()
    with pytest.raises(ValueError, match="coords"):
        dec(torch.full((1, 3, 3), 0.6), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="coords"):
        dec(torch.zeros(1, 3, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="z must"):
        dec(torch.zeros(1, 3, 3), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="z must"):
        dec(torch.zeros(2, 3, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="z must"):
        dec.volume(torch.zeros(2, 2))
