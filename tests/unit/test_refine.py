"""Semi-amortized inference: test-time fitting of latents shared by every LatticeModel."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.refine import REFINE_LR, REFINE_STEPS, fit_latents, latent_loss
from cryonoo.models.vae import HetVAE
from cryonoo.physics.rotations import random_rotations
from cryonoo.train.inference import METHODS, check_method
from cryonoo.types import Batch

D = 17
ZDIM = 3
CTF = [4.0, 15000.0, 14500.0, 20.0, 300.0, 2.7, 0.1, 0.0]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to contention
    yield
    torch.set_num_threads(threads)


def _vae(**kw: object) -> HetVAE:
    torch.manual_seed(0)  # the networks' initialization
    args: dict[str, object] = {"zdim": ZDIM, "enc_layers": 1, "enc_dim": 16, "dec_layers": 2}
    return HetVAE(D, **{**args, "dec_dim": 32, "seed": 0, **kw}).eval()


def _poses(n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` random rotations, CTF rows and shifts (px)."""
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(n, generator=g)
    ctf = torch.tensor([CTF]).repeat(n, 1)
    return rot, ctf, torch.rand(n, 2, generator=g) * 2 - 1


def _images(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, D, D, generator=torch.Generator().manual_seed(seed + 100))


def test_the_point_objective_is_the_training_loss_per_image():
    model = _vae()
    rot, ctf, trans = _poses(6)
    images = _images(6)
    with torch.no_grad():
        mu = model.encode(images, ctf, trans)
        recon = model.training_step(Batch(images, rot, trans, ctf)).terms["recon"]
    loss = latent_loss(model, images, rot, ctf, trans, z=mu)
    prior = model.beta * 0.5 * mu.pow(2).sum(1) / model.n_pix  # Gaussian −log density
    torch.testing.assert_close(model.latent_prior(mu), prior)
    assert loss.shape == (6,) and loss.dtype == torch.float32
    torch.testing.assert_close((loss - prior).mean(), recon)  # eval mode: z = mu
    # without shifts, by hand from the rendered images at the loss-mask points
    idx = model._loss_idx
    pred = model.render(mu, rot, ctf).reshape(6, -1)[:, idx]
    manual = (pred - images.reshape(6, -1)[:, idx]).pow(2).mean(1) + prior
    torch.testing.assert_close(latent_loss(model, images, rot, ctf, z=mu), manual)
    ad = AutoDecoder(D, n_images=4, zdim=ZDIM, dec_layers=1, dec_dim=8, latent_l2=0.3)
    torch.testing.assert_close(ad.latent_prior(mu), 0.3 * mu.pow(2).sum(1))


def test_refining_from_a_perturbed_start_recovers_the_true_latents():
    model = _vae(beta=1e-6)  # a negligible prior: z* is the objective's minimum
    n = 24
    rot, ctf, _ = _poses(n, seed=1)
    g = torch.Generator().manual_seed(2)
    z_true = torch.randn(n, ZDIM, generator=g)
    with torch.no_grad():
        images = model.render(z_true, rot, ctf)  # noise-free, zero outside the loss mask
        z0 = z_true + 0.3 * torch.randn(n, ZDIM, generator=g)
    seen: list[Tensor] = []
    z = model.refine_latents(
        images, rot, ctf, z0=z0, steps=40, lr=REFINE_LR, on_step=lambda k, zk: seen.append(zk)
    )
    losses = torch.stack([latent_loss(model, images, rot, ctf, z=zk) for zk in [z0, *seen]])
    assert len(seen) == 40 and torch.equal(seen[-1], z)
    assert bool((losses[-1] < losses[0]).all()), (losses[0], losses[-1])  # every image
    assert float(losses[-1].mean()) < 0.1 * float(losses[0].mean())
    total = losses.sum(1)
    assert float((total[1:] < total[:-1]).float().mean()) >= 0.9  # monotone, nearly
    d0, d = (z0 - z_true).norm(dim=1), (z - z_true).norm(dim=1)
    assert float(d.mean()) < 0.5 * float(d0.mean()), (d0.mean(), d.mean())


def test_zero_steps_return_the_encoder_latent_and_refining_moves_it():
    model = _vae()
    rot, ctf, trans = _poses(5)
    images = _images(5)
    with torch.no_grad():
        mu = model.encode(images, ctf, trans)
        assert torch.equal(model.refine(images, rot, ctf, trans, steps=0), mu)
        z = model.refine(images, rot, ctf, trans)  # the defaults, under no_grad
    assert REFINE_STEPS == 20 and not torch.equal(z, mu)
    assert bool((latent_loss(model, images, rot, ctf, trans, z=z) <
                 latent_loss(model, images, rot, ctf, trans, z=mu)).all())  # fmt: skip


def test_refining_leaves_the_model_untouched():
    model = _vae().train()
    rot, ctf, trans = _poses(4)
    images = _images(4)
    model.training_step(Batch(images, rot, trans, ctf)).loss.backward()  # leaves .grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    next(model.encoder.parameters()).requires_grad_(False)  # a mixed pattern, restored as is
    flags = [p.requires_grad for p in model.parameters()]
    model.refine(images, rot, ctf, trans, steps=5)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())


def test_each_image_is_refined_independently_of_its_batch():
    model = _vae()
    rot, ctf, trans = _poses(8)
    images = _images(8)
    full = model.refine(images, rot, ctf, trans, steps=15, lr=0.05)
    halves = [model.refine(images[s], rot[s], ctf[s], trans[s], steps=15, lr=0.05)
              for s in (slice(0, 4), slice(4, 8))]  # fmt: skip
    torch.testing.assert_close(torch.cat(halves), full, rtol=1e-4, atol=1e-5)


def test_the_autodecoder_fits_through_the_shared_implementation():
    torch.manual_seed(0)
    model = AutoDecoder(D, n_images=4, zdim=ZDIM, dec_layers=1, dec_dim=16, latent_l2=1e-2)
    rot, ctf, trans = _poses(3)
    images = _images(3)
    z = model.fit_latents(images, rot, ctf, trans, steps=7, lr=0.05)
    zeros = torch.zeros(3, ZDIM)
    shared = fit_latents(model, images, rot, ctf, trans, z0=zeros, steps=7, lr=0.05)
    assert torch.equal(z, shared)


def _band_mask(model: HetVAE, band: float) -> Tensor:
    """``(Npix,)`` bool: loss-mask points with ``|k| ≤ band`` cycles/pixel, from the lattice."""
    freqs = torch.linspace(-0.5, 0.5, D)  # x = column (fast axis), y = row
    ky, kx = torch.meshgrid(freqs, freqs, indexing="ij")
    radius2 = (kx.square() + ky.square()).reshape(-1)[model._loss_idx]
    return radius2 <= band**2


def test_a_band_limited_objective_is_the_mean_over_its_disk():
    model = _vae()
    rot, ctf, _ = _poses(5)
    images = _images(5)
    with torch.no_grad():
        mu = model.encode(images, ctf)
    idx, keep = model._loss_idx, _band_mask(model, 0.25)
    assert 0 < int(keep.sum()) < 0.4 * keep.numel()  # ≈ (2·0.25)² of the disk's points
    pred = model.render(mu, rot, ctf).reshape(5, -1)[:, idx][:, keep]
    target = images.reshape(5, -1)[:, idx][:, keep]
    manual = (pred - target).pow(2).mean(1) + model.latent_prior(mu)
    torch.testing.assert_close(latent_loss(model, images, rot, ctf, z=mu, band=0.25), manual)
    # the whole loss disk is |k| ≤ 0.5: the same objective and the same refinement
    torch.testing.assert_close(
        latent_loss(model, images, rot, ctf, z=mu, band=0.5),
        latent_loss(model, images, rot, ctf, z=mu),
    )
    assert torch.equal(
        model.refine(images, rot, ctf, steps=4, band=0.5), model.refine(images, rot, ctf, steps=4)
    )


def test_band_limited_refinement_ignores_the_frequencies_beyond_its_band():
    model = _vae()
    rot, ctf, trans = _poses(6)
    images = _images(6)
    outside = torch.zeros(D * D, dtype=torch.bool)
    outside[model._loss_idx[~_band_mask(model, 0.2)]] = True
    changed = images.reshape(6, -1).clone()
    changed[:, outside] += 5 * torch.randn(6, int(outside.sum()))
    changed = changed.reshape(6, D, D)
    z0 = torch.zeros(6, ZDIM)  # the same start (the encoder sees every frequency)

    def fit(imgs: Tensor, band: float | None) -> Tensor:
        return model.refine_latents(imgs, rot, ctf, z0=z0, steps=6, lr=0.05, band=band)

    assert torch.equal(fit(changed, 0.2), fit(images, 0.2))
    assert not torch.equal(fit(changed, None), fit(images, None))
    # and it lowers the band's own objective for every image (shifts applied as usual)
    z_t = model.refine(images, rot, ctf, trans, steps=10, band=0.2)
    with torch.no_grad():
        mu = model.encode(images, ctf, trans)
    before = latent_loss(model, images, rot, ctf, trans, z=mu, band=0.2)
    assert bool((latent_loss(model, images, rot, ctf, trans, z=z_t, band=0.2) < before).all())


def test_clear_errors():
    model = _vae()
    rot = _poses(3)[0]
    images = _images(3)
    z0 = torch.zeros(3, ZDIM)
    with pytest.raises(ValueError, match="steps must be an integer ≥ 0"):
        model.refine(images, rot, steps=-1)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        model.refine_latents(images, rot, z0=z0, steps=2, lr=0.0)
    with pytest.raises(ValueError, match=r"z must have shape \(3, 3\)"):
        model.refine_latents(images, rot, z0=z0[:2], steps=2, lr=0.1)
    with pytest.raises(ValueError, match=r"rot must have shape \(3, 3, 3\)"):
        model.refine(images, rot[:2])
    for band in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match=r"band must be in \(0, 0.5\] cycles/pixel"):
            model.refine(images, rot, steps=2, band=band)
    assert "refine" in METHODS
    check_method(model, "refine")
    ad = AutoDecoder(D, n_images=4, zdim=ZDIM, dec_layers=1, dec_dim=8)
    with pytest.raises(ValueError, match="no encoder: refining its latents is --method autodec"):
        check_method(ad, "refine")
    with pytest.raises(ValueError, match="--refine K"):
        check_method(model, "autodecode")
