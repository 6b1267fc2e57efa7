"""The sleep phase: dream views with their own targets, latent regression, wake-sleep training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.models.vae import HetVAE
from cryonoo.physics.rotations import random_rotations
from cryonoo.ssl import SSL, SelfDistillation
from cryonoo.ssl.augment import Dream, noisy_views
from cryonoo.train.recipes import RECIPES, TrainConfig
from cryonoo.types import Batch, Views

D, ZDIM = 17, 3


def _vae() -> HetVAE:
    torch.manual_seed(0)
    return HetVAE(D, zdim=ZDIM, enc_layers=1, enc_dim=16, dec_layers=1, dec_dim=16)


def _batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(3)
    ctf = torch.tensor([4.0, 15000, 14500, 20.0, 300, 2.7, 0.1, 0.0]).repeat(n, 1)
    return Batch(images=torch.randn(n, D, D, generator=g), rot=random_rotations(n, g), ctf=ctf)


def test_dream_views_are_noisy_renderings_of_their_targets():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    dream = Dream(sigma=0.3, noise_factors=(0.5, 1.0))
    views, ctf, targets = dream(batch, model, step, torch.Generator().manual_seed(5))
    assert views.shape == (2, 8, D, D) and targets.shape == (8, ZDIM)
    assert torch.equal(ctf, batch.ctf)
    # the same draws by hand: latents, then poses, then the noise of every view
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, ZDIM, generator=g)
    rot = random_rotations(8, g, dtype=batch.rot.dtype)
    with torch.no_grad():
        expected = noisy_views(model.render(z, rot, batch.ctf), 0.3, (0.5, 1.0), g)
    assert torch.equal(targets, z)
    torch.testing.assert_close(views, expected)


def test_dream_per_view_poses_render_each_view_at_its_own_pose():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    dream = Dream(sigma=0.3, noise_factors=(0.5, 1.0), poses="per-view")
    out = dream.make_views(batch, model, step, torch.Generator().manual_seed(5))
    assert out.views.shape == (2, 8, D, D) and out.rot.shape == (2, 8, 3, 3)
    assert not torch.allclose(out.rot[0], out.rot[1])
    # the same draws by hand: latents, then the J·B poses, then each view's noise
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, ZDIM, generator=g)
    rot = random_rotations(16, g, dtype=batch.rot.dtype).reshape(2, 8, 3, 3)
    with torch.no_grad():
        expected = [
            noisy_views(model.render(z, rot[j], batch.ctf), 0.3, (f,), g)[0]
            for j, f in enumerate((0.5, 1.0))
        ]
    assert torch.equal(out.targets, z) and torch.equal(out.rot, rot)
    torch.testing.assert_close(out.views, torch.stack(expected))
    with pytest.raises(ValueError, match="poses"):
        Dream(sigma=0.1, poses="fixed")


def test_dream_fraction_renders_the_first_images_share_only():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    full = Dream(sigma=0.3, noise_factors=(0.5, 1.0), poses="per-view")
    part = Dream(sigma=0.3, noise_factors=(0.5, 1.0), poses="per-view", fraction=0.25)
    out = part.make_views(batch, model, step, torch.Generator().manual_seed(5))
    assert out.views.shape == (2, 2, D, D) and out.rot.shape == (2, 2, 3, 3)
    assert out.targets.shape == (2, ZDIM) and torch.equal(out.ctf, batch.ctf[:2])
    # the same draws as the full batch's first two dreams: B latents are drawn, then J·M poses
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, ZDIM, generator=g)[:2]
    rot = random_rotations(4, g, dtype=batch.rot.dtype).reshape(2, 2, 3, 3)
    with torch.no_grad():
        expected = [
            noisy_views(model.render(z, rot[j], batch.ctf[:2]), 0.3, (f,), g)[0]
            for j, f in enumerate((0.5, 1.0))
        ]
    assert torch.equal(out.targets, z) and torch.equal(out.rot, rot)
    torch.testing.assert_close(out.views, torch.stack(expected))
    # never fewer than two dreams, never more than the batch
    tiny = Dream(sigma=0.3, fraction=0.01).make_views(batch, model, step)
    assert tiny.views.shape == (1, 2, D, D)
    assert full.make_views(batch, model, step).views.shape == (2, 8, D, D)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            Dream(sigma=0.3, fraction=bad)


def test_dream_draws_share_each_rendering_between_noise_draws():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    dream = Dream(sigma=0.3, noise_factors=(1.0,) * 4, poses="per-view", draws=2)
    out = dream.make_views(batch, model, step, torch.Generator().manual_seed(5))
    assert out.views.shape == (4, 8, D, D) and out.rot.shape == (4, 8, 3, 3)
    assert torch.equal(out.rot[0], out.rot[1]) and torch.equal(out.rot[2], out.rot[3])
    assert not torch.allclose(out.rot[0], out.rot[2])
    # the same draws by hand: latents, then 2·B poses (two renderings), then four noise draws
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, ZDIM, generator=g)
    rot = random_rotations(16, g, dtype=batch.rot.dtype).reshape(2, 8, 3, 3)
    with torch.no_grad():
        renders = [model.render(z, rot[r], batch.ctf) for r in range(2)]
    expected = [noisy_views(renders[j // 2], 0.3, (1.0,), g)[0] for j in range(4)]
    torch.testing.assert_close(out.views, torch.stack(expected))
    assert not torch.allclose(out.views[0], out.views[1])  # same rendering, new noise
    for bad in ({"draws": 0}, {"draws": 3}, {"draws": 2, "poses": "shared"}):
        with pytest.raises(ValueError, match="draws"):
            Dream(sigma=0.3, noise_factors=(1.0,) * 4, **{"poses": "per-view", **bad})


def test_band_limited_render_is_the_full_render_inside_the_band_and_zero_outside():
    model, batch = _vae(), _batch()
    z = torch.randn(8, ZDIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.render(z, batch.rot, batch.ctf)
        assert torch.equal(model.render(z, batch.rot, batch.ctf, band=0.5), full)
        low = model.render(z, batch.rot, batch.ctf, band=0.25)
    axis = (torch.arange(D) - D // 2) / (D - 1)
    ky, kx = torch.meshgrid(axis, axis, indexing="ij")
    inside = kx**2 + ky**2 <= 0.25**2
    torch.testing.assert_close(low[:, inside], full[:, inside], rtol=1e-5, atol=1e-6)
    assert low[:, ~inside].abs().max() == 0 and full[:, ~inside].abs().max() > 0
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match="band"):
            model.render(z, batch.rot, batch.ctf, band=bad)


def test_dream_band_low_passes_every_rendering():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    dream = Dream(sigma=0.3, noise_factors=(1.0,) * 4, poses="per-view", draws=2, band=0.25)
    out = dream.make_views(batch, model, step, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws by hand, rendered with the band
    z = torch.randn(8, ZDIM, generator=g)
    rot = random_rotations(16, g, dtype=batch.rot.dtype).reshape(2, 8, 3, 3)
    with torch.no_grad():
        renders = [model.render(z, rot[r], batch.ctf, band=0.25) for r in range(2)]
    expected = [noisy_views(renders[j // 2], 0.3, (1.0,), g)[0] for j in range(4)]
    torch.testing.assert_close(out.views, torch.stack(expected))
    wrapped = SelfDistillation(model, "regress", dream, warmup_epochs=0)
    with torch.no_grad():
        torch.testing.assert_close(
            wrapped.render(z, rot[0], batch.ctf, band=0.25), renders[0], rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="band"):
        Dream(sigma=0.3, band=0.7)


def test_wrapper_scores_a_partial_dream_against_its_own_targets():
    model = _vae()
    wrapped = SelfDistillation(
        model, objective="regress", augmenter="dream", weight=0.5, warmup_epochs=0,
        objective_kwargs={"head": "none"},
        augmenter_kwargs={"sigma": 0.2, "fraction": 0.5},
    )  # fmt: skip
    model.eval()  # posterior means: the step is deterministic
    batch = _batch()
    out = wrapped.training_step(batch, torch.Generator().manual_seed(9))
    step = model.training_step(batch)
    views, ctf, targets = wrapped.augmenter(batch, model, step, torch.Generator().manual_seed(9))
    assert views.shape == (1, 4, D, D) and ctf.shape == (4, 8)
    mse = ((model.encode(views[0], ctf) - targets) ** 2).mean()
    torch.testing.assert_close(out.loss, step.loss + 0.5 * mse)


def test_wrapper_refuses_views_that_do_not_fit_the_batch():
    class Bad:
        def __init__(self, views, ctf=None, targets=None):
            self.out = Views(views, ctf, targets=targets)

        def make_views(self, batch, model, step, generator=None):
            return self.out

        __call__ = make_views

    batch = _batch()
    cases = [
        (Views(torch.zeros(1, 4, D, D), batch.ctf[:4]), "one view per image"),
        (Views(torch.zeros(1, 8, D - 1, D - 1), batch.ctf), "expected"),
        (Views(torch.zeros(1, 4, D, D), batch.ctf[:4], targets=torch.zeros(3, ZDIM)), "targets"),
        (Views(torch.zeros(1, 4, D, D), batch.ctf, targets=torch.zeros(4, ZDIM)), "CTF"),
    ]
    for views, match in cases:
        wrapped = SelfDistillation(
            _vae(), objective="regress", augmenter=Bad(views.views, views.ctf, views.targets),
            warmup_epochs=0, objective_kwargs={"head": "none"},
        )  # fmt: skip
        with pytest.raises(ValueError, match=match):
            wrapped.training_step(batch)


def test_dream_batch_latents_follow_the_batch_moments():
    z = torch.randn(20_000, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    drawn = Dream(sigma=0.1, latents="batch").draw(z, torch.Generator().manual_seed(0))
    torch.testing.assert_close(drawn.mean(0), z.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(drawn.std(0), z.std(0), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="latents"):
        Dream(sigma=0.1, latents="aggregate")


def test_dream_posterior_latents_are_the_batch_means_detached():
    z = torch.randn(5, ZDIM, requires_grad=True)
    drawn = Dream(sigma=0.1, latents="posterior").draw(z, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, z.detach()) and not drawn.requires_grad


def test_regression_is_the_mse():
    objective = SSL.build("regress", in_dim=ZDIM)
    target = torch.randn(6, ZDIM)
    view = torch.randn(6, ZDIM, requires_grad=True)
    out = objective(target, view)
    torch.testing.assert_close(out["loss"], ((target - view) ** 2).mean())
    out["loss"].backward()
    torch.testing.assert_close(view.grad, 2 * (view - target).detach() / view.numel())
    assert float(objective(view, view)["loss"].detach()) == 0.0


def test_wrapper_scores_views_against_the_augmenters_targets():
    model = _vae()
    wrapped = SelfDistillation(
        model, objective="regress", augmenter="dream", weight=0.5, warmup_epochs=0,
        objective_kwargs={"head": "none"}, augmenter_kwargs={"sigma": 0.2},
    )  # fmt: skip
    model.eval()  # posterior means: the step is deterministic
    batch = _batch()
    out = wrapped.training_step(batch, torch.Generator().manual_seed(9))
    step = model.training_step(batch)
    views, ctf, targets = wrapped.augmenter(batch, model, step, torch.Generator().manual_seed(9))
    z_views = model.encode(views[0], ctf)
    mse = ((z_views - targets) ** 2).mean()
    torch.testing.assert_close(out.terms["ssl/mse"], mse)
    torch.testing.assert_close(out.loss, step.loss + 0.5 * mse)


def test_wake_sleep_trains_the_encoder_by_the_ssl_term_alone():
    model = _vae()
    wrapped = SelfDistillation(
        model, objective="regress", augmenter="dream", warmup_epochs=1,
        encoder_from_ssl_only=True, objective_kwargs={"head": "none"},
        augmenter_kwargs={"sigma": 0.2},
    )  # fmt: skip
    batch = _batch()
    wrapped.set_epoch(0)  # warm-up: the plain VAE, the encoder learns from its loss
    assert model.latent_grad
    model.training_step(batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)
    wrapped.set_epoch(1)  # after: the VAE's loss stops at the latents
    assert not model.latent_grad
    model.training_step(batch).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    wrapped.training_step(batch, torch.Generator().manual_seed(1)).loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    wrapped.set_epoch(0)
    assert model.latent_grad


def test_wake_sleep_needs_a_latent_switch():
    class NoSwitch(HetVAE):
        def __getattribute__(self, name):
            if name == "latent_grad":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(ValueError, match="latent_grad"):
        SelfDistillation(
            NoSwitch(D, zdim=ZDIM, enc_layers=1, enc_dim=8, dec_layers=1, dec_dim=8),
            augmenter="dream", encoder_from_ssl_only=True, augmenter_kwargs={"sigma": 0.1},
        )  # fmt: skip


def test_plateau_watch_setting():
    assert RECIPES["cryonoo"].optim.plateau_on == "total"  # the paper's scheduler
    watched = {RECIPES[r].optim.plateau_on for r in ("sleep", "wake-sleep", "cryodrgn")}
    assert watched == {"model"}
    with pytest.raises(ValueError, match="plateau_on"):
        TrainConfig().replace({"optim.plateau_on": "ssl"})
    old = TrainConfig().to_dict()
    del old["plateau_on"]  # a config.json written before the setting existed
    assert TrainConfig.from_dict(old).optim.plateau_on == "total"


def test_hinge_moves_one_lobe_rigidly_by_its_angle():
    phantom = PHANTOMS.build("hinge", n_conformations=5, max_angle_deg=60.0)
    first, last = phantom.conformations[0], phantom.conformations[-1]
    assert first.shape == last.shape
    moved = np.linalg.norm(first - last, axis=1) > 1e-6
    assert 0.35 < moved.mean() < 0.65  # about half the mass turns
    pivot = np.array([0.0, -18.0, 0.0])
    a, b = first[moved] - pivot, last[moved] - pivot
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))  # rigid
    np.testing.assert_allclose(a[:, 2], b[:, 2])  # about the z axis
    turn = np.degrees(np.arctan2(b[:, 1], b[:, 0]) - np.arctan2(a[:, 1], a[:, 0])) % 360
    np.testing.assert_allclose(turn, 60.0, atol=1e-6)


def test_ema_teacher_starts_as_the_model_and_then_lags():
    model = _vae()
    wrapped = SelfDistillation(
        model, warmup_epochs=0, teacher_momentum=0.5, objective_kwargs={"head": "8-8"},
        augmenter_kwargs={"sigma": 0.2},
    )  # fmt: skip
    assert not any(p.requires_grad for p in wrapped.teacher.parameters())
    batch = _batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = wrapped.training_step(batch, torch.Generator().manual_seed(0))
    student = [p.detach().clone() for p in model.parameters()]
    for t, s in zip(wrapped.teacher.parameters(), student, strict=True):
        assert torch.equal(t, s)  # a copy of the model at the first SSL step
    out.loss.backward()
    optimizer.step()
    wrapped.training_step(batch, torch.Generator().manual_seed(0))
    for t, old, new in zip(wrapped.teacher.parameters(), student, model.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * old + 0.5 * new.detach())
    assert "teacher_started" in wrapped.state_dict()
    with pytest.raises(ValueError, match="teacher_momentum"):
        SelfDistillation(_vae(), teacher_momentum=1.0, augmenter_kwargs={"sigma": 0.2})


def test_vicreg_rank_scaling_lifts_the_covariance_floor():
    h = torch.randn(16, 4)
    fixed = SSL.build("vicreg", in_dim=4, head="none")
    ranked = SSL.build("vicreg", in_dim=4, head="none", cov_scale="rank")
    a, b = fixed(h, h + 0.1), ranked(h, h + 0.1)
    torch.testing.assert_close(a["loss"], b["loss"])  # n − 1 ≥ d: nothing to scale
    wide = SSL.build("vicreg", in_dim=4, head="64-64", cov_scale="rank")
    torch.manual_seed(0)
    fixed_wide = SSL.build("vicreg", in_dim=4, head="64-64")
    fixed_wide.load_state_dict(wide.state_dict())
    ra, fa = wide(h, h + 0.1), fixed_wide(h, h + 0.1)
    expected = ra["inv"] + ra["var"] + (15 / 64) * ra["cov"]
    torch.testing.assert_close(ra["loss"], expected)
    torch.testing.assert_close(fa["loss"], fa["inv"] + fa["var"] + fa["cov"])
    with pytest.raises(ValueError, match="cov_scale"):
        SSL.build("vicreg", in_dim=4, cov_scale="auto")


def _encoder_grads(model: HetVAE, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of the model's own loss on the encoder and the decoder (posterior means)."""
    model.zero_grad()
    model.training_step(batch).loss.backward()
    enc = [p.grad.clone() for p in model.encoder.parameters()]
    dec = [p.grad.clone() for p in model.decoder.parameters()]
    return enc, dec


def test_encoder_model_grad_scales_only_the_encoders_gradient_after_warmup():
    model, batch = _vae().eval(), _batch()  # eval: posterior means, the step is deterministic
    full_enc, full_dec = _encoder_grads(model, batch)
    wrapped = SelfDistillation(
        model, objective="regress", augmenter="dream", warmup_epochs=1,
        encoder_model_grad=0.3, objective_kwargs={"head": "none"},
        augmenter_kwargs={"sigma": 0.2},
    )  # fmt: skip
    wrapped.set_epoch(0)  # warm-up: untouched
    for a, b in zip(_encoder_grads(model, batch)[0], full_enc, strict=True):
        torch.testing.assert_close(a, b)
    wrapped.set_epoch(1)
    loss_before = float(model.training_step(batch).loss.detach())
    enc, dec = _encoder_grads(model, batch)
    assert float(model.training_step(batch).loss.detach()) == loss_before  # forward unchanged
    for a, b in zip(enc, full_enc, strict=True):
        torch.testing.assert_close(a, 0.3 * b)
    for a, b in zip(dec, full_dec, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="encoder_model_grad"):
        SelfDistillation(
            _vae(),
            objective="regress",
            augmenter="dream",
            encoder_model_grad=1.5,
            objective_kwargs={"head": "none"},
            augmenter_kwargs={"sigma": 0.2},
        )


def test_vae_encodes_encoder_images_and_reconstructs_images():
    model, batch = _vae(), _batch()
    model.eval()  # posterior means: no reparameterization noise
    other = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(9))
    mixed = model.training_step(replace(batch, encoder_images=other))
    plain = model.training_step(replace(batch, images=other))
    torch.testing.assert_close(mixed.z, plain.z)
    torch.testing.assert_close(mixed.render, plain.render)  # the same latents decoded
    assert not torch.allclose(mixed.terms["recon"], plain.terms["recon"])  # other targets


def test_anchor_noise_encodes_a_renoised_copy_after_warmup():
    model, batch = _vae(), _batch()
    model.eval()
    wrapped = SelfDistillation(
        model, "regress", "dream", warmup_epochs=1, head="none", sigma=0.3, anchor_noise=0.5
    )
    wrapped.set_epoch(0)  # warm-up: the model's own step, clean images
    torch.testing.assert_close(wrapped.training_step(batch).z, model.training_step(batch).z)
    wrapped.set_epoch(1)
    out = wrapped.training_step(batch, torch.Generator().manual_seed(4))
    noisy = noisy_views(batch.images, 0.3, (0.5,), torch.Generator().manual_seed(4))[0]
    expected = model.training_step(replace(batch, encoder_images=noisy))
    torch.testing.assert_close(out.z, expected.z)
    with pytest.raises(ValueError, match="anchor_noise"):
        SelfDistillation(model, augmenter="crop-flip-rotate", anchor_noise=0.5)
