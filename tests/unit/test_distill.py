"""SelfDistillation wraps any ReconstructionModel: warm-up, exact loss, one encoder call, freeze."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.ssl import SSL, ReprojectNoise, SelfDistillation, from_real_space
from cryonoo.types import Batch, ReconstructionModel, StepOutput

BOX, ZDIM = 8, 3
D = BOX + 1


class ToyAE(nn.Module):
    """Linear autoencoder on the data-domain lattice; counts calls to ``encode``."""

    def __init__(self) -> None:
        super().__init__()
        self.zdim = ZDIM
        self.encoder = nn.Sequential(nn.Linear(D * D, 16), nn.ReLU(), nn.Linear(16, ZDIM))
        self.decoder = nn.Linear(ZDIM + 9, BOX * BOX)
        self.encode_calls: list[int] = []
        self.last_step: StepOutput | None = None

    def _z(self, images: Tensor) -> Tensor:
        return self.encoder(images.flatten(1))

    def encode(self, images: Tensor, ctf: Tensor | None = None) -> Tensor:
        self.encode_calls.append(images.shape[0])
        if ctf is not None:
            assert ctf.shape == (images.shape[0], 8)
        return self._z(images)

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None) -> Tensor:
        real = self.decoder(torch.cat([z, rot.flatten(1)], dim=-1)).view(-1, BOX, BOX)
        return from_real_space(real) / BOX

    def training_step(self, batch: Batch) -> StepOutput:
        z = self._z(batch.images)
        render = self.render(z, batch.rot, batch.ctf)
        loss = F.mse_loss(render, batch.images)
        self.last_step = StepOutput(loss, z, {"recon": loss.detach()}, render)
        return self.last_step


def make_batch(n: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = from_real_space(torch.randn(n, BOX, BOX, generator=g)) / BOX
    ctf = torch.tensor([1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1, 0.0]).repeat(n, 1)
    return Batch(images=images, rot=torch.eye(3).repeat(n, 1, 1), ctf=ctf)


def wrap(model: ToyAE, **kwargs) -> SelfDistillation:
    defaults = {"sigma": 0.2, "head": "16-16", "warmup_epochs": 2}
    return SelfDistillation(model, **{**defaults, **kwargs})


def test_toy_model_satisfies_protocol():
    assert isinstance(ToyAE(), ReconstructionModel)


def test_before_warmup_returns_exactly_the_model_step():
    torch.manual_seed(0)
    model = ToyAE()
    wrapped = wrap(model)
    for epoch in (0, 1):
        wrapped.set_epoch(epoch)
        out = wrapped.training_step(make_batch(), torch.Generator().manual_seed(0))
        assert out is model.last_step
        assert not any(k.startswith("ssl/") for k in out.terms)
    assert model.encode_calls == []


def test_after_warmup_adds_exactly_weight_times_sum_over_views():
    torch.manual_seed(0)
    model = ToyAE()
    wrapped = wrap(model, weight=0.3, noise_factors=(1.0, 2.0, 3.0))
    wrapped.set_epoch(2)
    batch = make_batch()
    out = wrapped.training_step(batch, torch.Generator().manual_seed(7))

    # manual: same generator state → same noise; objective in train mode → same BN statistics
    step = model.training_step(batch)
    views, _ = wrapped.augmenter(batch, model, step, torch.Generator().manual_seed(7))
    z_views = model._z(views.reshape(-1, D, D)).view(3, len(batch), ZDIM)
    ssl = sum(wrapped.objective(step.z, z_views[j])["loss"] for j in range(3))
    assert out.loss.item() == pytest.approx((step.loss + 0.3 * ssl).item(), rel=1e-6)
    assert out.terms["ssl/loss"].item() == pytest.approx(ssl.item(), rel=1e-6)
    assert out.terms["recon"] == step.terms["recon"]
    for key in ("ssl/inv", "ssl/var", "ssl/cov", "ssl/std", "ssl/skipped"):
        assert key in out.terms and not out.terms[key].requires_grad
    assert out.terms["ssl/skipped"].item() == 0.0
    # a different generator gives different views, hence a different loss
    other = wrapped.training_step(batch, torch.Generator().manual_seed(8))
    assert other.loss.item() != pytest.approx(out.loss.item(), rel=1e-9)


@pytest.mark.parametrize("factors", [(1.0,), (1.0, 2.0, 3.0, 4.0)])
def test_one_encoder_call_for_all_views(factors):
    model = ToyAE()
    wrapped = wrap(model, noise_factors=factors, warmup_epochs=0)
    batch = make_batch(n=5)
    wrapped.training_step(batch)
    assert model.encode_calls == [len(factors) * 5]  # J = len(noise factors), one batched call


def test_trains_with_toy_model_and_gradients_reach_heads_and_encoder():
    torch.manual_seed(0)
    model = ToyAE()
    wrapped = wrap(model, warmup_epochs=1)
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        wrapped.set_epoch(epoch)
        for seed in range(3):
            out = wrapped.training_step(make_batch(seed=seed), g)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            assert torch.isfinite(out.loss)
    head_grad = next(wrapped.objective.parameters()).grad
    assert head_grad is not None and torch.isfinite(head_grad).all()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    # the wrapper is itself a ReconstructionModel
    assert isinstance(wrapped, ReconstructionModel)
    assert wrapped(make_batch(), g).loss.ndim == 0


def test_decoder_freeze_only_prefixed_parameters():
    model = ToyAE()
    wrapped = wrap(model, decoder_freeze=True, warmup_epochs=1)
    assert all(p.requires_grad for p in model.parameters())
    wrapped.set_epoch(1)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith("decoder")), name
    assert all(p.requires_grad for p in wrapped.objective.parameters())
    wrapped.set_epoch(0)  # back before warm-up (e.g. a restart): unfrozen
    assert all(p.requires_grad for p in model.parameters())

    custom = wrap(ToyAE(), decoder_freeze=True, decoder_prefix="encoder.2", warmup_epochs=0)
    custom.set_epoch(0)
    frozen = {n for n, p in custom.model.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.2.weight", "encoder.2.bias"}
    with pytest.raises(ValueError, match="decoder_prefix"):
        wrap(ToyAE(), decoder_freeze=True, decoder_prefix="nothing")


def test_batch_of_one_skips_ssl_with_reason(caplog):
    model = ToyAE()
    wrapped = wrap(model, warmup_epochs=0)
    with caplog.at_level(logging.WARNING):
        out = wrapped.training_step(make_batch(n=1))
    assert out.terms["ssl/skipped"].item() == 1.0 and out.terms["ssl/loss"].item() == 0.0
    assert out.loss is model.last_step.loss
    assert "at least 2" in caplog.text


def test_accepts_built_components_and_routes_kwargs():
    model = ToyAE()
    obj = SSL.build("simsiam", in_dim=ZDIM, head="8-8")
    wrapped = SelfDistillation(model, obj, ReprojectNoise(0.1, (2.0,)), warmup_epochs=0)
    assert wrapped.objective is obj
    assert torch.isfinite(wrapped.training_step(make_batch()).loss)
    for name in ("invariance", "barlow"):
        w = SelfDistillation(ToyAE(), name, "noise", sigma=0.1, head="none", warmup_epochs=0)
        assert torch.isfinite(w.training_step(make_batch()).loss)
    w = SelfDistillation(ToyAE(), "vicreg", "crop-flip-rotate", head="8", num_views=2,
                         warmup_epochs=0)  # fmt: skip
    assert torch.isfinite(w.training_step(make_batch()).loss)
    with pytest.raises(TypeError, match="neither"):
        wrap(ToyAE(), bogus=1)
    with pytest.raises(TypeError):
        SelfDistillation(ToyAE(), obj, "noise", head="8", sigma=0.1)


def test_rejects_non_models():
    class NotAModule:
        def training_step(self, batch): ...
        def encode(self, images, ctf=None): ...
        def render(self, z, rot, ctf=None): ...

    with pytest.raises(TypeError, match=r"nn\.Module"):
        SelfDistillation(NotAModule(), sigma=0.1, zdim=3)
    with pytest.raises(TypeError, match="ReconstructionModel"):
        SelfDistillation(nn.Linear(3, 3), sigma=0.1, zdim=3)
    with pytest.raises(ValueError, match="zdim"):
        bare = ToyAE()
        del bare.zdim
        SelfDistillation(bare, sigma=0.1)


class _InputFrameViews:
    """A custom augmenter whose views keep the input frame (they need ``batch.trans``)."""

    views_need_trans = True

    def __call__(self, batch, model, step, generator=None):
        return batch.images.detach().expand(2, -1, -1, -1), batch.ctf


def _with_trans(batch: Batch) -> Batch:
    trans = torch.tensor([[3.0, -1.5]]).repeat(len(batch), 1)
    return Batch(images=batch.images, rot=batch.rot, trans=trans, ctf=batch.ctf)


@pytest.mark.parametrize("name", ["reproject-noise", "noise", "crop-flip-rotate", "dream"])
def test_model_without_trans_works_with_registered_augmenters_on_shifted_data(name):
    # registered augmenters hand over centred views: no trans reaches ToyAE.encode
    kwargs = {} if name == "crop-flip-rotate" else {"sigma": 0.1}
    wrapped = SelfDistillation(ToyAE(), "vicreg", name, head="8", warmup_epochs=0, **kwargs)
    out = wrapped.training_step(_with_trans(make_batch()), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)


def test_needed_trans_is_never_dropped_silently():
    wrapped = SelfDistillation(ToyAE(), "vicreg", _InputFrameViews(), head="8", warmup_epochs=0)
    assert torch.isfinite(wrapped.training_step(make_batch()).loss)  # trans None: fine
    with pytest.raises(TypeError, match="takes no `trans`"):
        wrapped.training_step(_with_trans(make_batch()))
    images = make_batch().images
    with pytest.raises(TypeError, match="takes no `trans`"):
        wrapped.encode(images, None, torch.zeros(len(images), 2))
    torch.testing.assert_close(wrapped.encode(images), ToyAE.encode(wrapped.model, images))


def test_needed_trans_is_repeated_per_view():
    seen: list[Tensor] = []

    class ShiftAwareAE(ToyAE):
        def encode(self, images, ctf=None, trans=None):
            seen.append(trans)
            return super().encode(images, ctf)

    wrapped = SelfDistillation(
        ShiftAwareAE(), "vicreg", _InputFrameViews(), head="8", warmup_epochs=0
    )
    batch = _with_trans(make_batch(n=4))
    batch = Batch(batch.images, batch.rot, batch.trans * torch.arange(4.0)[:, None], batch.ctf)
    wrapped.training_step(batch)
    torch.testing.assert_close(seen[-1], batch.trans.repeat(2, 1))
