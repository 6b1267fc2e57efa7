"""Every SSL head, objective and augmenter builds and runs; the augmenters' noise is pinned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cryonoo.ssl import (
    AUGMENTERS,
    HEADS,
    SSL,
    CropFlipRotate,
    MLPHead,
    ReprojectNoise,
    build_head,
    from_real_space,
    parse_spec,
    to_real_space,
)
from cryonoo.ssl.augment import run_context_of
from cryonoo.types import Batch, StepOutput

BOX = 16
D = BOX + 1


def make_batch(n: int = 4, seed: int = 0, ctf: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = from_real_space(torch.randn(n, BOX, BOX, generator=g)) / BOX  # O(1) values
    ctf_params = torch.tensor([1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1, 0.0]).repeat(n, 1)
    return Batch(images=images, rot=torch.eye(3).repeat(n, 1, 1), ctf=ctf_params if ctf else None)


class RenderOnly(nn.Module):
    """A model stand-in whose rendering is a fixed real-space pattern (counts render calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.calls = 0

    def render(self, z, rot, ctf=None):
        self.calls += 1
        # divided by BOX so the Hartley values are O(1), like normalized data
        real = torch.linspace(-1, 1, BOX * BOX).view(BOX, BOX) * self.scale / BOX
        return from_real_space(real.expand(z.shape[0], BOX, BOX) * (1 + z[:, :1, None]))

    def encode(self, images, ctf=None):
        return images.flatten(1)[:, :3]

    def training_step(self, batch):
        raise NotImplementedError


# ------------------------------------------------------------------------------------ heads
def test_parse_spec():
    assert parse_spec("1024-512-8") == [1024, 512, 8]
    assert parse_spec(7) == [7] and parse_spec([3, 4]) == [3, 4]
    for bad in ("", "a-b", "0-3", []):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_mlp_head_structure():
    head = HEADS.build("mlp", in_dim=8, spec="32-32-16")
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]  # nothing after the last
    assert head.out_dim == 16 and head.net[-1].in_features == 32
    assert isinstance(build_head("none", 8), nn.Identity)
    assert isinstance(build_head("64-64", 8), MLPHead)
    custom = nn.Linear(8, 5)
    assert build_head(custom, 8) is custom


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_forward_backward(name):
    head = (
        HEADS.build(name, in_dim=6, spec="12-10") if name != "none" else HEADS.build(name, in_dim=6)
    )
    x = torch.randn(5, 6, requires_grad=True)
    y = head(x)
    assert y.shape == (5, head.out_dim) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert HEADS.describe(name)


def test_simsiam_predictor_is_bottleneck():
    pred = HEADS.build("simsiam-predictor", in_dim=64)
    assert pred.net[0].out_features == 16 and pred.out_dim == 64


# ------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("name", SSL.names())
@pytest.mark.parametrize("head", ["16-16", "none"])
def test_every_objective_forward_backward(name, head):
    obj = SSL.build(name, in_dim=4, head=head)
    z_a = torch.randn(6, 4, requires_grad=True)
    z_b = torch.randn(6, 4, requires_grad=True)
    out = obj(z_a, z_b)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert z_b.grad is not None and torch.isfinite(z_b.grad).all()
    assert SSL.describe(name)


@pytest.mark.parametrize("last_norm", [False, True])
@pytest.mark.parametrize(
    ("momentum", "track"), [(0.1, True), (0.0, True), (None, True), (0.1, False)]
)
def test_head_on_groups_equals_one_call_per_group(last_norm, momentum, track):
    """One pass over G groups (one matrix product per layer, BatchNorm per group) gives, in
    float64, the outputs, gradients and running statistics of G calls in turn; eval mode too."""
    torch.manual_seed(0)
    one, grouped = (MLPHead(4, [16, 16, 8], last_norm=last_norm).double() for _ in range(2))
    for module in (*one.modules(), *grouped.modules()):
        if isinstance(module, nn.BatchNorm1d):
            module.momentum = momentum
            if not track:  # as BatchNorm1d(track_running_stats=False) builds it
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    for module in one.modules():
        if isinstance(module, nn.BatchNorm1d) and module.affine:
            nn.init.normal_(module.weight)  # not the defaults, so that the test sees them
            nn.init.normal_(module.bias)
    grouped.load_state_dict(one.state_dict())
    z = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the second step starts from updated running statistics
        ref = torch.stack([one(z_g) for z_g in z])
        out = grouped.forward_groups(z)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        weights = torch.randn_like(ref)
        g_ref = torch.autograd.grad((ref * weights).sum(), (z, *one.parameters()))
        g_out = torch.autograd.grad((out * weights).sum(), (z, *grouped.parameters()))
        for a, b in zip(g_out, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for a, b in zip(grouped.buffers(), one.buffers(), strict=True):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-12, atol=1e-12)
    one.eval(), grouped.eval()
    ref = torch.stack([one(z_g) for z_g in z])
    torch.testing.assert_close(grouped.forward_groups(z), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SSL.names())
def test_forward_views_equals_one_call_per_view(name):
    """The shared-anchor path (anchor through the heads once) gives the per-view values and
    the same gradients as J separate calls."""
    torch.manual_seed(0)
    obj = SSL.build(name, in_dim=4, head="16-16")
    z_a = torch.randn(6, 4, requires_grad=True)
    z_views = torch.randn(3, 6, 4, requires_grad=True)
    many = obj.forward_views(z_a, z_views)
    grads_many = torch.autograd.grad(sum(o["loss"] for o in many), (z_a, z_views))
    one = [obj(z_a, z_views[j]) for j in range(3)]
    grads_one = torch.autograd.grad(sum(o["loss"] for o in one), (z_a, z_views))
    assert len(many) == 3
    for m, o in zip(many, one, strict=True):
        assert m.keys() == o.keys()
        for key in m:
            torch.testing.assert_close(m[key], o[key])
    for gm, go in zip(grads_many, grads_one, strict=True):
        torch.testing.assert_close(gm, go)
    with pytest.raises(ValueError, match="anchor"):
        obj.forward_views(z_a, z_views[0])
    skipped = obj.forward_views(z_a[:1], z_views[:, :1])
    assert [float(o["skipped"]) for o in skipped] == [1.0, 1.0, 1.0]


def test_vicreg_objective_defaults():
    obj = SSL.build("vicreg", in_dim=8)
    assert obj.head.out_dim == 1024 and len([m for m in obj.head.net if isinstance(m, nn.Linear)])
    assert obj.weights == {"inv": 1.0, "var": 1.0, "cov": 1.0}


# ------------------------------------------------------------------------------- augmenters
def test_real_space_round_trip_exact():
    batch = make_batch()
    assert torch.allclose(from_real_space(to_real_space(batch.images)), batch.images, atol=1e-5)


def test_reproject_noise_sigma_zero_equals_rendering():
    batch, model = make_batch(), RenderOnly()
    z = torch.randn(4, 3)
    render = model.render(z, batch.rot)
    aug = AUGMENTERS.build("reproject-noise", sigma=0.0)
    views, ctf = aug(batch, model, StepOutput(loss=torch.zeros(()), z=z, render=render))
    assert views.shape == (3, 4, D, D)
    assert torch.allclose(views, render.expand_as(views), atol=1e-5)
    assert ctf is batch.ctf


def test_reproject_noise_std_per_view():
    batch, model = make_batch(n=16), RenderOnly()
    z = torch.zeros(16, 3)
    step = StepOutput(loss=torch.zeros(()), z=z, render=model.render(z, batch.rot))
    sigma, factors = 0.7, (1.0, 2.0, 3.0, 0.5)
    aug = ReprojectNoise(sigma=sigma, noise_factors=factors)
    views, _ = aug(batch, model, step, torch.Generator().manual_seed(3))
    assert views.shape[0] == len(factors)
    noise = to_real_space(views) - to_real_space(step.render)  # (J, B, box, box)
    measured = noise.std(dim=(1, 2, 3))
    for j, f in enumerate(factors):
        assert measured[j].item() == pytest.approx(f * sigma, rel=0.04)
    assert noise.mean().abs() < 0.05


def test_reproject_noise_reproducible_and_generator_dependent():
    batch, model = make_batch(), RenderOnly()
    z = torch.randn(4, 3)
    step = StepOutput(loss=torch.zeros(()), z=z, render=model.render(z, batch.rot))
    aug = ReprojectNoise(sigma=1.0)
    v1, _ = aug(batch, model, step, torch.Generator().manual_seed(5))
    v2, _ = aug(batch, model, step, torch.Generator().manual_seed(5))
    v3, _ = aug(batch, model, step, torch.Generator().manual_seed(6))
    assert torch.equal(v1, v2) and not torch.allclose(v1, v3)


def test_reproject_noise_renders_when_step_has_no_rendering_and_detaches():
    batch, model = make_batch(), RenderOnly()
    z = torch.randn(4, 3)
    step = StepOutput(loss=torch.zeros(()), z=z)
    views, _ = ReprojectNoise(sigma=0.0)(batch, model, step)
    assert model.calls == 1 and not views.requires_grad
    assert torch.allclose(views[0], model.render(z, batch.rot), atol=1e-5)
    views, _ = ReprojectNoise(sigma=0.1, detach_render=False)(batch, model, step)
    views.sum().backward()
    assert model.scale.grad is not None


def test_noise_augmenter_uses_input_images():
    batch = make_batch(n=8)
    aug = AUGMENTERS.build("noise", sigma=0.5, noise_factors=(1.0, 2.0))
    views, ctf = aug(batch, RenderOnly(), StepOutput(torch.zeros(()), torch.zeros(8, 3)))
    noise = to_real_space(views) - to_real_space(batch.images)
    assert views.shape == (2, 8, D, D) and ctf is batch.ctf
    assert noise[1].std().item() == pytest.approx(1.0, rel=0.08)


def test_crop_flip_rotate_identity_settings_and_randomness():
    batch = make_batch(n=5)
    step = StepOutput(torch.zeros(()), torch.zeros(5, 3))
    ident = CropFlipRotate(num_views=2, flip_p=0.0, rot90=False, max_angle_deg=0.0,
                           crop_scale=(1.0, 1.0))  # fmt: skip
    views, ctf = ident(batch, RenderOnly(), step, torch.Generator().manual_seed(0))
    assert views.shape == (2, 5, D, D) and ctf is batch.ctf
    assert torch.allclose(views, batch.images.expand_as(views), atol=1e-4)
    aug = CropFlipRotate(num_views=3)
    v1, _ = aug(batch, RenderOnly(), step, torch.Generator().manual_seed(1))
    v2, _ = aug(batch, RenderOnly(), step, torch.Generator().manual_seed(1))
    assert torch.equal(v1, v2) and torch.isfinite(v1).all()
    assert not torch.allclose(v1, batch.images.expand_as(v1), atol=1e-3)


def test_crop_flip_rotate_flip_and_pad():
    batch = make_batch(n=3)
    step = StepOutput(torch.zeros(()), torch.zeros(3, 3))
    flip = CropFlipRotate(num_views=1, flip_p=1.0, rot90=False, max_angle_deg=0.0,
                          crop_scale=(1.0, 1.0))  # fmt: skip
    real = to_real_space(batch.images)
    got = to_real_space(flip(batch, RenderOnly(), step)[0][0])
    # mirror about pixel BOX//2 (cryoDRGN's origin): column i ← column BOX − i; column 0 is lost
    assert torch.allclose(got[..., 1:], real[..., 1:].flip(-1), atol=1e-4)
    pad = CropFlipRotate(num_views=2, flip_p=0.0, rot90=False, max_angle_deg=0.0,
                         crop_scale=(0.5, 0.5), crop_mode="pad")  # fmt: skip
    out = to_real_space(pad(batch, RenderOnly(), step, torch.Generator().manual_seed(2))[0])
    kept = (out.abs() > 1e-6).float().mean(dim=(-2, -1))
    assert torch.allclose(kept, torch.full_like(kept, 0.25), atol=0.08)


@pytest.mark.parametrize("name", AUGMENTERS.names())
def test_every_augmenter_runs(name):
    kwargs = {"sigma": 0.3} if "sigma" in run_context_of(AUGMENTERS.get(name)) else {}
    aug = AUGMENTERS.build(name, **kwargs)
    batch = make_batch(n=3, ctf=False)
    model = RenderOnly()
    z = torch.randn(3, 3)
    views, ctf = aug(batch, model, StepOutput(torch.zeros(()), z), torch.Generator())[:2]
    assert views.ndim == 4 and views.shape[1:] == (3, D, D) and ctf is None
    assert torch.isfinite(views).all()
    assert AUGMENTERS.describe(name)


def test_reproject_noise_random_pose_renders_new_views():
    """pose='random' re-renders the latent at new poses (not the step's own rendering)."""
    from cryonoo.ssl.augment import ReprojectNoise
    from cryonoo.types import Batch, StepOutput

    calls = []

    class Model:
        def render(self, z, rot, ctf=None):
            calls.append(rot)
            return torch.zeros(z.shape[0], 9, 9)

    batch = Batch(images=torch.ones(4, 9, 9), rot=torch.eye(3).expand(4, 3, 3).clone())
    step = StepOutput(loss=torch.zeros(()), z=torch.zeros(4, 2), render=torch.ones(4, 9, 9))
    same = ReprojectNoise(sigma=0.0)(batch, Model(), step)[0]
    assert not calls and torch.allclose(same, torch.ones(3, 4, 9, 9), atol=1e-5)
    views, _ = ReprojectNoise(sigma=0.0, pose="random")(
        batch, Model(), step, torch.Generator().manual_seed(0)
    )
    assert len(calls) == 1 and not torch.allclose(calls[0], batch.rot)
    assert torch.allclose(
        calls[0] @ calls[0].transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5
    )
    assert views.shape == (3, 4, 9, 9) and torch.allclose(views, torch.zeros_like(views), atol=1e-5)
    with pytest.raises(ValueError, match="pose"):
        ReprojectNoise(sigma=0.1, pose="tilted")


def test_run_context_is_declared_or_derived():
    from cryonoo.ssl.augment import ReprojectNoise

    class Plain:
        pass

    class Sigma:
        uses_data_sigma = True

    class Bad:
        run_context = ("sigma", "temperature")

    assert run_context_of(ReprojectNoise) == ("sigma", "noise_factors", "detach_render")
    assert run_context_of(Plain) == ("num_views",)
    assert run_context_of(Sigma) == ("sigma", "noise_factors")
    with pytest.raises(ValueError, match=r"unknown run_context.*temperature"):
        run_context_of(Bad)
