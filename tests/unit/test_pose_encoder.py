"""The pose-conditioned encoder (``pose-mlp``) and the plumbing of the poses to it.

The encoder sees the image and its pose; every path that encodes (the training step, ``encode``,
the self-distillation views, ``encode_dataset``, the per-image FSC, the label ceiling) must give
it the pose the image (or view) is at, and models with a pose-free encoder must not change.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cryonoo.models.encoders import ENCODERS, POSE_DIM, PoseMLPEncoder, pose_code
from cryonoo.models.vae import HetVAE
from cryonoo.physics.rotations import random_rotations
from cryonoo.ssl.augment import CropFlipRotate, inplane_pose, to_real_space
from cryonoo.ssl.distill import SelfDistillation
from cryonoo.types import Batch, StepOutput, Views

D = 17  # 16-px images
B = 6
CTF = torch.tensor([[2.0, 15000, 14500, 20.0, 300, 2.7, 0.1, 0.0]])


def _batch(seed: int = 1, b: int = B) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        images=torch.randn(b, D, D, generator=g),
        rot=random_rotations(b, g),
        trans=torch.randn(b, 2, generator=g),
        ctf=CTF.repeat(b, 1),
        index=torch.arange(b),
    )


def _vae(encoder: str | nn.Module = "pose-mlp", seed: int = 0, **kw) -> HetVAE:
    torch.manual_seed(seed)
    base = {"zdim": 3, "enc_layers": 1, "enc_dim": 16, "dec_layers": 1, "dec_dim": 16}
    return HetVAE(D, encoder=encoder, **{**base, **kw})


class Spy(nn.Module):
    """A pose-conditioned encoder that records the poses it is called with."""

    needs_pose = True
    input_kind = "points"

    def __init__(self, inner: PoseMLPEncoder) -> None:
        super().__init__()
        self.inner, self.zdim = inner, inner.zdim
        self.calls: list[Tensor] = []

    def forward(self, x: Tensor, rot: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append(rot.detach().clone())
        return self.inner(x, rot)


def _spied(**kw) -> tuple[HetVAE, Spy]:
    model = _vae("pose-mlp", **kw)
    spy = Spy(model.encoder)
    model.encoder = spy
    return model, spy


def _wrap(model: HetVAE, augmenter, **kw) -> SelfDistillation:
    return SelfDistillation(
        model, augmenter=augmenter, warmup_epochs=0, objective_kwargs={"head": "8-8"}, **kw
    )


# ----------------------------------------------------------------------------- the encoder
def test_registry_entry_is_resid_mlp_with_six_pose_inputs():
    enc = ENCODERS.build("pose-mlp", in_dim=40, zdim=3, layers=2, dim=16, D=D)
    ref = ENCODERS.build("resid-mlp", in_dim=40, zdim=3, layers=2, dim=16, D=D)
    assert isinstance(enc, PoseMLPEncoder) and enc.needs_pose and enc.input_kind == "points"
    assert not getattr(ref, "needs_pose", False)
    shapes = {k: v.shape for k, v in enc.state_dict().items()}
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert shapes.keys() == ref_shapes.keys()  # the same layout …
    assert shapes.pop("main.0.weight") == (16, 40 + POSE_DIM)  # … but the pose inputs
    ref_shapes.pop("main.0.weight")
    assert shapes == ref_shapes
    with pytest.raises(ValueError, match="rot must have shape"):
        enc(torch.randn(4, 40), torch.randn(3, 3, 3))


def test_pose_code_is_the_first_two_rows():
    rot = random_rotations(5, torch.Generator().manual_seed(0))
    code = pose_code(rot)
    assert code.shape == (5, 6)
    torch.testing.assert_close(code[:, :3], rot[:, 0])
    torch.testing.assert_close(code[:, 3:], rot[:, 1])
    # it determines the rotation: the third row is the cross product of the first two
    torch.testing.assert_close(torch.linalg.cross(code[:, :3], code[:, 3:]), rot[:, 2])


# ----------------------------------------------------------------------------- the model
def test_pose_conditioned_vae_trains_a_step():
    model = _vae()
    assert model.needs_pose
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch()
    out = model.training_step(batch)
    assert torch.isfinite(out.loss) and out.z.shape == (B, 3)
    out.loss.backward()
    grad = model.encoder.main[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[:, -POSE_DIM:].abs().sum() > 0  # the loss reaches the pose inputs' weights
    optimizer.step()
    assert float(model.training_step(batch).loss.detach()) != float(out.loss.detach())


def test_the_latent_depends_on_the_pose_only_for_pose_mlp():
    batch, other = _batch(), random_rotations(B, torch.Generator().manual_seed(9))
    pose_model, plain = _vae("pose-mlp").eval(), _vae("resid-mlp").eval()
    with torch.no_grad():
        z1 = pose_model.encode(batch.images, batch.ctf, batch.trans, batch.rot)
        z2 = pose_model.encode(batch.images, batch.ctf, batch.trans, other)
        assert (z1 - z2).abs().max() > 1e-4
        p1 = plain.encode(batch.images, batch.ctf, batch.trans, batch.rot)
        p2 = plain.encode(batch.images, batch.ctf, batch.trans, other)
    assert torch.equal(p1, p2)


def test_encode_without_rot_raises():
    model, batch = _vae(), _batch()
    with pytest.raises(ValueError, match="conditioned on the pose"):
        model.encode(batch.images, batch.ctf, batch.trans)
    with pytest.raises(ValueError, match="conditioned on the pose"):
        model.encode_distribution(batch.images, batch.ctf, batch.trans)
    with pytest.raises(ValueError, match="rot must have shape"):
        model.encode(batch.images, batch.ctf, batch.trans, batch.rot[:3])


def test_resid_mlp_is_bit_identical_with_and_without_rot():
    batch = _batch()
    model = _vae("resid-mlp").eval()
    assert not model.needs_pose
    with torch.no_grad():
        without = model.encode_distribution(batch.images, batch.ctf, batch.trans)
        given = model.encode_distribution(batch.images, batch.ctf, batch.trans, batch.rot)
    assert all(torch.equal(a, b) for a, b in zip(without, given, strict=True))
    # same parameters (and names) as a model built before pose conditioning existed
    fresh = HetVAE(**model.config())
    fresh.load_state_dict(model.state_dict(), strict=True)
    # and self-distillation never hands it a pose
    seen: list[dict] = []
    encode = model.encode

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return encode(*args, **kwargs)

    model.encode = recording
    wrapped = _wrap(model, "reproject-noise", sigma=0.1)
    wrapped.training_step(batch, torch.Generator().manual_seed(0))
    assert seen and all("rot" not in kw for kw in seen)


def test_config_roundtrip_of_a_pose_model():
    model = _vae()
    copy = HetVAE(**model.config())
    copy.load_state_dict(model.state_dict(), strict=True)
    assert copy.needs_pose


# ----------------------------------------------------------------------------- the wrapper
def _record_renders(model: HetVAE) -> list[Tensor]:
    calls: list[Tensor] = []
    render = model.render

    def recording(z, rot, ctf=None):
        calls.append(rot.detach().clone())
        return render(z, rot, ctf)

    model.render = recording
    return calls


@pytest.mark.parametrize("name", ["reproject-noise", "noise"])
def test_views_at_the_images_own_pose_get_batch_rot(name):
    model, spy = _spied()
    batch = _batch()
    wrapped = _wrap(model, name, sigma=0.1, noise_factors=(0.5, 1.0))
    out = wrapped.training_step(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    anchor, views = spy.calls
    torch.testing.assert_close(anchor, batch.rot, rtol=0, atol=0)
    torch.testing.assert_close(views, batch.rot.repeat(2, 1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["reproject-random", "dream"])
def test_views_at_random_poses_get_the_rendering_poses(name):
    model, spy = _spied()
    renders = _record_renders(model)
    batch = _batch()
    if name == "dream":
        wrapped = _wrap(model, "dream", sigma=0.1, noise_factors=(0.5, 1.0))
    else:
        wrapped = _wrap(
            model, "reproject-noise", sigma=0.1, noise_factors=(0.5, 1.0), pose="random"
        )
    wrapped.training_step(batch, torch.Generator().manual_seed(0))
    (rendered,) = renders
    anchor, views = spy.calls
    torch.testing.assert_close(anchor, batch.rot, rtol=0, atol=0)
    assert (rendered - batch.rot).abs().max() > 1e-3  # really new poses …
    torch.testing.assert_close(views, rendered.repeat(2, 1, 1), rtol=0, atol=0)  # … passed on


def test_crop_flip_rotate_views_get_their_composed_poses():
    model, spy = _spied()
    batch = _batch()
    aug = CropFlipRotate(num_views=3)
    wrapped = _wrap(model, aug)
    wrapped.training_step(batch, torch.Generator().manual_seed(4))
    step = StepOutput(torch.zeros(()), torch.zeros(B, 3))  # unused by crop-flip-rotate
    expected = aug.make_views(batch, model, step, torch.Generator().manual_seed(4)).rot
    assert expected is not None and expected.shape == (3, B, 3, 3)
    torch.testing.assert_close(spy.calls[1], expected.reshape(3 * B, 3, 3), rtol=0, atol=0)


def test_teacher_encodes_the_anchor_with_batch_rot():
    model, _ = _spied()
    wrapped = _wrap(model, "noise", sigma=0.1, teacher_momentum=0.9)
    out = wrapped.training_step(_batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert wrapped.teacher.encoder.calls[-1].shape == (B, 3, 3)


class LegacyNoise:
    """A custom augmenter of the old kind: ``(views, ctf)`` and no poses."""

    views_from_input = True

    def __call__(self, batch, model, step, generator=None):
        return batch.images.detach().unsqueeze(0).repeat(2, 1, 1, 1), batch.ctf


def test_legacy_augmenter_without_poses():
    batch = _batch(b=4)
    batch = Batch(images=batch.images, rot=batch.rot, ctf=batch.ctf)  # centred (no trans)
    with pytest.raises(ValueError, match="does not say at which poses"):
        _wrap(_spied()[0], LegacyNoise()).training_step(batch)
    keep = LegacyNoise()
    keep.views_keep_pose = True
    model, spy = _spied()
    _wrap(model, keep).training_step(batch)
    torch.testing.assert_close(spy.calls[1], batch.rot.repeat(2, 1, 1), rtol=0, atol=0)
    # a pose-free model does not care
    assert torch.isfinite(_wrap(_vae("resid-mlp"), LegacyNoise()).training_step(batch).loss)


def test_make_views_and_call_agree():
    model, batch = _vae(), _batch()
    step = model.training_step(batch)
    aug = CropFlipRotate(num_views=2)
    out = aug.make_views(batch, model, step, torch.Generator().manual_seed(3))
    views, ctf = aug(batch, model, step, torch.Generator().manual_seed(3))
    assert isinstance(out, Views) and torch.equal(out.views, views) and ctf is out.ctf


# ----------------------------------------------------------------------------- crop-flip-rotate
def _flip_z(rot: Tensor, axis: int) -> Tensor:
    """A wrong candidate: the mirror of image axis ``axis`` (0: x, 1: y) as a proper rotation."""
    d = torch.ones(3)
    d[axis], d[2] = -1.0, -1.0
    return torch.diag(d) @ rot


@pytest.mark.parametrize(
    ("flip_p", "rot90"), [(0.0, True), (1.0, False), (0.5, True)], ids=["rot90", "flip", "both"]
)
def test_crop_flip_rotate_pose_renders_the_view(flip_p, rot90):
    """A view of a rendering at pose R is (up to the pixels the rotation moves off the grid)
    the rendering at the view's pose — exact quarter turns and flips, no crop."""
    torch.manual_seed(0)
    model = HetVAE(33, zdim=2, enc_layers=1, enc_dim=8, dec_layers=2, dec_dim=32, feat_sigma=0.1)
    model.eval()
    n, j = 4, 4
    rot = random_rotations(n, torch.Generator().manual_seed(3))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch = Batch(images=model.render(z, rot), rot=rot)
    aug = CropFlipRotate(
        num_views=j, flip_p=flip_p, rot90=rot90, max_angle_deg=0.0, crop_scale=(1.0, 1.0)
    )
    out = aug.make_views(
        batch, model, StepOutput(torch.zeros(()), z), torch.Generator().manual_seed(1)
    )
    assert out.rot is not None and out.rot.shape == (j, n, 3, 3)
    poses = out.rot.reshape(j * n, 3, 3)
    torch.testing.assert_close(
        poses @ poses.transpose(1, 2), torch.eye(3).expand(j * n, 3, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(poses), torch.ones(j * n), atol=1e-5, rtol=0)
    rot_j = rot.repeat(j, 1, 1)
    q_t = poses @ rot_j.transpose(1, 2)  # the in-plane part Qᵀ
    candidates = {
        "derived": poses,
        "transposed": q_t.transpose(1, 2) @ rot_j,  # Q @ rot: the rotation the other way
        "input": rot_j,
    }
    if flip_p == 1.0:
        candidates["other axis"] = _flip_z(rot_j, 1)
        torch.testing.assert_close(poses, _flip_z(rot_j, 0), atol=1e-6, rtol=0)

    def error(pose: Tensor) -> float:
        with torch.no_grad():
            ref = model.render(z.repeat(j, 1), pose).view(j, n, 33, 33)
        a, b = to_real_space(out.views)[..., 1:, 1:], to_real_space(ref)[..., 1:, 1:]
        return float((a - b).norm() / b.norm())

    errors = {name: error(p) for name, p in candidates.items()}
    assert errors["derived"] < 0.06, errors
    for name, value in errors.items():
        if name != "derived" and not torch.allclose(candidates[name], poses, atol=1e-6):
            assert value > 3 * errors["derived"], errors


def test_inplane_pose_of_the_identity_transform_is_the_pose():
    rot = random_rotations(3, torch.Generator().manual_seed(0))
    same = inplane_pose(rot, torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(same, rot)
    # a full turn too; a half turn twice is the identity
    torch.testing.assert_close(inplane_pose(rot, torch.full((3,), 2 * math.pi), torch.ones(3)), rot)
    half = torch.full((3,), math.pi)
    twice = inplane_pose(inplane_pose(rot, half, torch.ones(3)), half, torch.ones(3))
    torch.testing.assert_close(twice, rot, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- datasets
def test_encode_dataset_passes_the_datasets_poses(tmp_path):
    from cryonoo.io.dataset import ParticleDataset
    from cryonoo.io.mrc import write_mrc
    from cryonoo.io.stack import open_images
    from cryonoo.train.encode import encode_dataset

    n = 10
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "p.mrcs", rng.normal(size=(n, D - 1, D - 1)).astype(np.float32), 2.0)
    rots = random_rotations(n, torch.Generator().manual_seed(1))
    source = open_images(tmp_path / "p.mrcs")
    subset = [1, 3, 4, 8, 9]
    ds = ParticleDataset(
        source, rots, ctf=CTF.repeat(n, 1), indices=subset, norm_std=1.0, lazy=False
    )
    model, spy = _spied()
    mu, logvar = encode_dataset(model, ds, torch.device("cpu"), batch_size=2)
    torch.testing.assert_close(torch.cat(spy.calls), rots[subset], rtol=0, atol=0)
    batch = ds[np.arange(len(ds))]
    with torch.no_grad():
        ref = model.eval().encode(batch.images, batch.ctf, batch.trans, batch.rot)
    np.testing.assert_allclose(mu, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert logvar.shape == mu.shape == (5, 3)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from cryonoo.data.phantoms import PHANTOMS
    from cryonoo.data.simulate import SimulationConfig, simulate_phantom

    cfg = SimulationConfig(box=16, n_images=60, snr=1.0, seed=0, oversample=1)
    phantom = PHANTOMS.build("igg-1d", n_conformations=4)
    return simulate_phantom(tmp_path_factory.mktemp("ref"), phantom, cfg)


def test_per_image_fsc_gives_a_pose_model_the_poses(simulated):
    from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc
    from cryonoo.io.dataset import open_dataset

    dataset = open_dataset(simulated.root, ind="test", lazy=False)
    labels = simulated.labels
    gt = load_gt_volumes(simulated.gt_volumes)
    seen: list[Tensor] = []

    class PoseLookup:
        needs_pose = True

        def eval(self):
            return self

        def encode(self, images, ctf=None, trans=None, rot=None):
            assert rot is not None
            seen.append(rot)
            d = torch.cdist(images.flatten(1), dataset.images(np.arange(len(dataset))).flatten(1))
            return torch.as_tensor(labels[dataset.indices][d.argmin(1).numpy()])[:, None].float()

        def volume(self, z, norm_std=1.0):
            return gt[int(z.item())]

    result = per_image_fsc(PoseLookup(), dataset, labels, gt, norm_std=1.0, seed=0)
    (rot,) = seen
    torch.testing.assert_close(rot, dataset.rots[dataset.indices[result.positions]].float())


def test_label_ceiling_with_the_pose(simulated, tmp_path, monkeypatch):
    import cryonoo.experiments.ceiling as ceiling

    built: list[HetVAE] = []

    class Recording(HetVAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(ceiling, "HetVAE", Recording)
    bench = SimpleNamespace(
        phantom="igg-1d", n_conformations=4, box=16, snr=1.0, enc_layers=1, enc_dim=16
    )
    cfg = ceiling.CeilingConfig(fresh_factor=1, max_epochs=1, patience=1, batch_size=8)
    out = ceiling.label_ceiling(tmp_path / "fresh", simulated.root, bench, 0, config=cfg, pose=True)
    assert out["pose"] is True and math.isfinite(out["label_r2"])
    assert built[-1].needs_pose and built[-1].config()["encoder"] == "pose-mlp"
    plain = ceiling.label_ceiling(tmp_path / "fresh", simulated.root, bench, 0, config=cfg)
    assert "pose" not in plain and not built[-1].needs_pose
    assert built[-1].config()["encoder"] == "resid-mlp"
