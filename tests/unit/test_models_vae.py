"""The heterogeneous VAE: parity with cryoDRGN's HetOnlyVAE, losses, protocol, conventions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from cryonoo.models import ENCODERS, HetVAE, kl_divergence
from cryonoo.models.decoders import FourierDecoder
from cryonoo.physics.fft import ht2_center, iht2_center, symmetrize_ht
from cryonoo.physics.lattice import circular_mask
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.shifts import shift_images
from cryonoo.types import Batch, ReconstructionModel

CTF_ROW = [1.5, 12000.0, 11000.0, 30.0, 300.0, 2.7, 0.1, 0.0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _n_trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _small(D: int = 17, **kw: object) -> HetVAE:
    torch.manual_seed(0)
    args: dict[str, object] = {"zdim": 2, "enc_layers": 1, "enc_dim": 32, "dec_layers": 1}
    args.update({"dec_dim": 32, "pe_dim": 4, **kw})
    return HetVAE(D, **args)


def _batch(D: int = 17, B: int = 3, ctf: bool = True, seed: int = 0) -> Batch:
    g = _gen(seed)
    return Batch(
        images=torch.randn(B, D, D, generator=g),
        rot=random_rotations(B, generator=g),
        trans=torch.randn(B, 2, generator=g),
        ctf=torch.tensor([CTF_ROW] * B) if ctf else None,
    )


# ----------------------------------------------------------------------------- parity
def test_parameter_count_toy() -> None:
    m = HetVAE(31, zdim=2, enc_dim=64, dec_dim=64, enc_layers=3, dec_layers=3)
    assert _n_trainable(m) == 76_678
    assert m.n_pix == m.n_enc == 708


def test_parameter_count_default_dims() -> None:
    m = HetVAE(31, zdim=8)
    assert _n_trainable(m) == 7_143_442
    assert _n_trainable(m.encoder) == 3_891_216
    assert _n_trainable(m.decoder) == 3_252_226
    keys = m.state_dict().keys()
    assert "encoder.main.0.weight" in keys and "decoder.pe.rand_freqs" in keys
    assert not any(k.startswith("_") for k in keys)  # lattice caches are not saved


# ----------------------------------------------------------------------------- losses
def test_kl_divergence() -> None:
    g = _gen()
    for _ in range(5):
        mu, logvar = torch.randn(8, 3, generator=g), 2 * torch.randn(8, 3, generator=g)
        assert kl_divergence(mu, logvar) >= 0
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3)) == 0


@pytest.mark.parametrize("ctf", [True, False])
def test_loss_terms(ctf: bool) -> None:
    m = _small(beta=0.7)
    out = m.training_step(_batch(ctf=ctf))
    t = out.terms
    assert set(t) == {"recon", "kld", "loss"}
    assert out.loss.item() == t["loss"].item()
    assert t["loss"].item() == (t["recon"] + 0.7 * t["kld"] / m.n_pix).item()
    assert out.render.shape == (3, 17, 17) and out.z.shape == (3, 2)
    outside = ~circular_mask(17).reshape(17, 17)
    assert (out.render[:, outside] == 0).all()
    out.loss.backward()
    assert _small().beta == 0.5  # 1 / zdim


def test_recon_matches_manual_computation() -> None:
    m = _small().eval()
    b = _batch()
    out = m.training_step(b)
    mask = circular_mask(17)
    ref = m.render(out.z, b.rot, b.ctf).reshape(3, -1)[:, mask]
    from cryonoo.physics.shifts import shift_ht

    y = shift_ht(b.images, b.trans).reshape(3, -1)[:, mask]
    torch.testing.assert_close(out.terms["recon"], ((ref - y) ** 2).mean())


def test_non_finite_loss_is_named() -> None:
    m = _small()
    with torch.no_grad():
        m.encoder.main[-1].bias.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="kld"):
        m.training_step(_batch())


# ----------------------------------------------------------------------------- protocol
def test_protocol_encode_render_consistency() -> None:
    m = _small().eval()
    assert isinstance(m, ReconstructionModel)
    b = _batch()
    out = m.training_step(b)
    z1 = m.encode(b.images, b.ctf, b.trans)
    torch.testing.assert_close(z1, m.encode(b.images, b.ctf, b.trans), rtol=0, atol=0)
    torch.testing.assert_close(z1, out.z)
    mu, logvar = m.encode_distribution(b.images, b.ctf, b.trans)
    torch.testing.assert_close(mu, out.z)
    assert logvar.shape == mu.shape
    torch.testing.assert_close(m.render(out.z, b.rot, b.ctf), out.render)


def test_training_mode_samples_z() -> None:
    m = _small()
    b = _batch()
    torch.manual_seed(1)
    a = m.training_step(b).terms["recon"]
    torch.manual_seed(2)
    c = m.training_step(b).terms["recon"]
    assert a != c  # reparameterized sample differs; z returned is still the mean
    torch.testing.assert_close(m.training_step(b).z, m.encode(b.images, b.ctf, b.trans))


def test_translation_convention() -> None:
    """An image shifted by −t, given trans = +t, is treated like the unshifted image."""
    D, box = 33, 32
    g = _gen(5)
    spec = torch.randn(3, box, box, generator=g)
    k = torch.fft.fftshift(torch.fft.fftfreq(box))
    spec = spec * ((k[:, None] ** 2 + k[None] ** 2).sqrt() < 0.35)  # band-limited
    real = iht2_center(spec)
    t = torch.tensor([[2.3, -1.7], [-0.6, 3.1], [1.0, 0.4]])
    to_ht = lambda x: symmetrize_ht(ht2_center(x))  # noqa: E731
    rot = random_rotations(3, generator=g)
    ctf = torch.tensor([CTF_ROW] * 3)
    m = _small(D).eval()
    ref = m.training_step(Batch(to_ht(real), rot, torch.zeros(3, 2), ctf))
    moved = m.training_step(Batch(to_ht(shift_images(real, -t)), rot, t, ctf))
    torch.testing.assert_close(moved.z, ref.z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.terms["recon"], ref.terms["recon"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS.names())
def test_every_encoder_in_vae(encoder: str) -> None:
    m = _small(encoder=encoder, enc_mask_radius=5)
    out = m.training_step(_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    b = _batch()  # the poses are used by a pose-conditioned encoder only
    assert m.encode(b.images, rot=b.rot).shape == (3, 2)


def test_whole_lattice_encoder_mask() -> None:
    m = _small(enc_mask_radius=-1)
    assert m.n_enc == 17 * 17
    assert torch.isfinite(m.training_step(_batch()).loss)


def test_autocast_cpu() -> None:
    m = _small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


def test_config_round_trip() -> None:
    m = _small(pe_type="geom_lowf", beta=0.1)
    cfg = json.loads(json.dumps(m.config()))
    again = HetVAE(**cfg)
    again.load_state_dict(m.state_dict())
    b = _batch()
    torch.testing.assert_close(again.eval().encode(b.images), m.eval().encode(b.images))
    with pytest.raises(TypeError, match="object"):
        HetVAE(17, zdim=2, decoder=m.decoder).config()


def test_bad_input_names_argument() -> None:
    m = _small()
    with pytest.raises(ValueError, match=r"images.*D=17 \(16-px images\)"):
        m.encode(torch.zeros(2, 33, 33))
    with pytest.raises(ValueError, match="images"):
        m.encode(torch.zeros(17, 17))
    with pytest.raises(ValueError, match="ctf"):
        m.encode(torch.zeros(2, 17, 17), ctf=torch.zeros(2, 9))
    with pytest.raises(ValueError, match="trans"):
        m.encode(torch.zeros(2, 17, 17), trans=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z must"):
        m.render(torch.zeros(2, 5), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="rot"):
        m.render(torch.zeros(2, 2), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="z must"):
        m.volume(torch.zeros(4))
    with pytest.raises(ValueError, match="D must be"):
        HetVAE(16)
    with pytest.raises(ValueError, match="enc_mask_radius"):
        HetVAE(17, enc_mask_radius=-3)
    with pytest.raises(ValueError, match="zdim"):
        HetVAE(17, zdim=2, encoder=ENCODERS.build("mlp", in_dim=4, zdim=3))


# ------------------------------------------------------------------- handedness / volume
_CENTERS = torch.tensor([[3.0, -2.0, 1.0], [-4.0, 1.0, -2.0], [0.0, 3.0, 3.0]])  # (x, y, z) px
_SIGMA = 1.5


class _GaussianMixtureDecoder(FourierDecoder):
    """The exact spectrum of a sum of Gaussian blobs (centres in pixels from the box centre)."""

    def _net(self, coords: Tensor, z: Tensor | None) -> Tensor:
        k = coords.double()
        amp = (2 * math.pi * _SIGMA**2) ** 1.5 * torch.exp(
            -2 * math.pi**2 * _SIGMA**2 * k.pow(2).sum(-1)
        )
        phase = -2 * math.pi * (k @ _CENTERS.double().T)  # (…, N, A)
        re = (amp[..., None] * torch.cos(phase)).sum(-1)
        im = (amp[..., None] * torch.sin(phase)).sum(-1)
        return torch.stack([re, im], dim=-1).float()


def _blobs(box: int) -> Tensor:
    """The same volume in real space, ``[z, y, x]``."""
    ax = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for cx, cy, cz in _CENTERS.double():
        vol += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * _SIGMA**2))
    return vol.float()


def test_volume_reproduces_known_spectrum() -> None:
    D = 25
    dec = _GaussianMixtureDecoder(D, zdim=1, layers=0, dim=4)
    m = HetVAE(D, zdim=1, decoder=dec, enc_layers=0, enc_dim=4)
    truth = _blobs(D - 1)
    vol = m.volume(torch.zeros(1), norm_std=2.0)
    assert vol.shape == (24, 24, 24)
    torch.testing.assert_close(vol, 2 * truth, atol=2e-4, rtol=0)
    mirrored = truth.flip(0)
    assert (vol - 2 * mirrored).abs().max() > 0.5


def test_render_matches_projection_convention() -> None:
    """render = Hartley of img[y, x] = Σ_z V[Rᵀ (x, y, z)] (cryoDRGN's projection convention)."""
    D, box = 25, 24
    dec = _GaussianMixtureDecoder(D, zdim=1, layers=0, dim=4)
    m = HetVAE(D, zdim=1, decoder=dec, enc_layers=0, enc_dim=4)
    rot = random_rotations(2, generator=_gen(7))
    ax = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    centers = _CENTERS.double() @ rot.double().transpose(1, 2)  # R c for each blob, (2, A, 3)
    img = torch.zeros(2, box, box, dtype=torch.float64)
    for a in range(_CENTERS.shape[0]):
        cx, cy = centers[:, a, 0, None, None], centers[:, a, 1, None, None]
        img += (
            math.sqrt(2 * math.pi)
            * _SIGMA
            * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * _SIGMA**2))
        )
    expected = symmetrize_ht(ht2_center(img)).float()
    mask = circular_mask(D).reshape(D, D)
    got = m.render(torch.zeros(2, 1), rot)
    scale = expected.abs().max()
    torch.testing.assert_close(got[:, mask] / scale, expected[:, mask] / scale, atol=1e-4, rtol=0)


def test_device_step_matches_cpu(device: torch.device) -> None:
    m = _small().eval()
    b = _batch()
    ref = m.training_step(b)
    m = m.to(device)
    out = m.training_step(b.to(device))
    assert out.render.device.type == device.type
    torch.testing.assert_close(out.terms["recon"].cpu(), ref.terms["recon"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.z.cpu(), ref.z, rtol=1e-4, atol=1e-5)
    vol = m.volume(torch.zeros(2, device=device))
    assert vol.device.type == device.type and vol.shape == (16, 16, 16)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        amp = m.train().training_step(b.to(device))
    assert amp.loss.dtype == torch.float32 and torch.isfinite(amp.loss)


def test_fourier_volume_pairs_points_and_matches_every_point_evaluation() -> None:
    """``volume`` of the Hermitian decoder evaluates the network once per ±k pair and gives the
    map of evaluating ``hartley`` at every point of the sphere (the base class's path)."""
    from cryonoo.models.decoders import _ImplicitDecoder

    torch.manual_seed(3)
    D = 17
    dec = FourierDecoder(D, zdim=2, layers=1, dim=16, pe_dim=4)
    z = torch.randn(2)
    rows = []
    hook = dec.mlp.main[-1].register_forward_hook(
        lambda _m, args, _o: rows.append(args[0].shape[-2])
    )
    paired = dec.volume(z)
    hook.remove()
    dec._fill_off_plane = _ImplicitDecoder._fill_off_plane.__get__(dec)  # every point evaluated
    every = dec.volume(z)
    torch.testing.assert_close(paired, every, rtol=0, atol=1e-6)
    axis = torch.arange(D) - D // 2
    kz, ky, kx = torch.meshgrid(axis, axis, axis, indexing="ij")
    in_sphere = int(((kx**2 + ky**2 + kz**2).float() / (D - 1) ** 2 <= 0.25).sum())
    in_plane = int(((kx**2 + ky**2).float() / (D - 1) ** 2 <= 0.25).sum())
    # the kz = 0 plane: half + DC through forward; off the plane: one evaluation per pair
    assert sum(rows) == (in_plane + 1) // 2 + (in_sphere - in_plane) // 2


# ----------------------------------------------------------------------------- memory
def test_cpu_blocks_same_loss_and_gradients_as_one_pass() -> None:
    """Decoding one or two images per cache block gives the loss, every gradient and the
    renderings of the batch decoded at once (7 images: groups of 1, and 2 + 2 + 2 + 1)."""
    m, b = _small(dec_dim=64, dec_layers=2), _batch(B=7)
    m.cpu_block_points = None
    loss_full, grads_full, _ = _step_and_saved_bytes(m, b)
    for block in (1, 2 * m.n_pix):  # one image per block; two
        m.cpu_block_points = block
        loss_block, grads_block, _ = _step_and_saved_bytes(m, b)
        torch.testing.assert_close(loss_block, loss_full)
        for g_block, g_full in zip(grads_block, grads_full, strict=True):
            torch.testing.assert_close(g_block, g_full, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        z = torch.randn(7, 2)
        blocked = m.render(z, b.rot, b.ctf)
        m.cpu_block_points = None
        torch.testing.assert_close(blocked, m.render(z, b.rot, b.ctf))


def _step_and_saved_bytes(m: HetVAE, b: Batch) -> tuple[Tensor, list[Tensor], int]:
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    m.zero_grad()
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m.training_step(b).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.parameters()], saved[0]


def test_decoder_chunk_recompute_same_loss_and_gradients_less_saved() -> None:
    m, b = _small(dec_dim=64, dec_layers=2), _batch(B=8)
    loss_full, grads_full, bytes_full = _step_and_saved_bytes(m, b)
    m.decoder_chunk = 3
    loss_chunk, grads_chunk, bytes_chunk = _step_and_saved_bytes(m, b)
    torch.testing.assert_close(loss_chunk, loss_full)
    for g_chunk, g_full in zip(grads_chunk, grads_full, strict=True):
        torch.testing.assert_close(g_chunk, g_full, rtol=1e-4, atol=1e-6)
    assert bytes_chunk < 0.7 * bytes_full
    with torch.no_grad():
        z = torch.randn(8, 2)
        chunked = m.render(z, b.rot, b.ctf)
        m.decoder_chunk = None
        torch.testing.assert_close(chunked, m.render(z, b.rot, b.ctf))
