"""Self-distillation on shifted data: views are encoded in the same (centred) frame as z0.

The anchor ``z0`` comes from ``HetVAE.training_step``, which translates every image by its
``batch.trans`` (pixels) before encoding. Views built from the input images must be re-centred
the same way; renderings are centred already and must not depend on ``batch.trans``.

Data: random real-space images (the centred particles) and the same images rolled by a known
3-px integer shift per image (the observed, off-centre particles), whose ``trans`` centres
them again exactly (an integer phase shift on the periodic grid is a roll).
"""

from __future__ import annotations

import pytest
import torch

from cryonoo.models.vae import HetVAE
from cryonoo.physics.rotations import random_rotations
from cryonoo.ssl import AUGMENTERS, SelfDistillation, from_real_space
from cryonoo.ssl.augment import CropFlipRotate, recenter
from cryonoo.types import Batch

BOX = 16
D = BOX + 1
N = 6
#: (tx, ty) pixels per image: the observed content is the centred content moved by −trans
TRANS = torch.tensor(
    [[3.0, 0.0], [0.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, 0.0], [3.0, 3.0]], dtype=torch.float32
)
CTF = torch.tensor([[1.0, 15000, 14500, 20.0, 300, 2.7, 0.1, 0.0]]).repeat(N, 1)

#: σ = 0 (or identity) settings where the augmenter allows; rendering-based ones also get a
#: noisy view, which must be unaffected by the shift as well (same generator, same noise)
SETTINGS = {
    "reproject-noise": {"sigma": 0.3, "noise_factors": (0.0, 1.0)},
    "noise": {"sigma": 0.3, "noise_factors": (0.0, 0.0)},
    "crop-flip-rotate": {
        "num_views": 2,
        "flip_p": 0.0,
        "rot90": False,
        "max_angle_deg": 0.0,
        "crop_scale": (1.0, 1.0),
    },
    "dream": {"sigma": 0.3, "noise_factors": (0.0, 1.0)},
}


def _real_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, box, box)`` centred and observed (rolled by −trans) real-space images."""
    g = torch.Generator().manual_seed(0)
    centred = torch.randn(N, BOX, BOX, generator=g)
    observed = torch.stack(
        [
            torch.roll(img, (-int(ty), -int(tx)), dims=(-2, -1))
            for img, (tx, ty) in zip(centred, TRANS.tolist(), strict=True)
        ]
    )
    return centred, observed


def _batches() -> tuple[Batch, Batch]:
    """(observed images with ``trans``, the same particles centred with ``trans=None``)."""
    centred, observed = _real_images()
    rot = random_rotations(N, torch.Generator().manual_seed(1))
    shifted = Batch(images=from_real_space(observed) / BOX, rot=rot, trans=TRANS, ctf=CTF)
    plain = Batch(images=from_real_space(centred) / BOX, rot=rot, ctf=CTF)
    return shifted, plain


def _vae() -> HetVAE:
    torch.manual_seed(0)
    model = HetVAE(D, zdim=4, enc_layers=2, enc_dim=16, dec_layers=2, dec_dim=16)
    return model.eval()  # z = mu: the rendering (reproject-noise) is deterministic


class Capture:
    """An SSL objective that records ``(anchor, view latent)`` per view."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append((z_a.detach().clone(), z_b.detach().clone()))
        return {"loss": (z_a - z_b).square().mean()}


def _run(augmenter, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchor (B, zdim), view latents (J, B, zdim))`` of one wrapped training step."""
    capture = Capture()
    wrapped = SelfDistillation(_vae(), capture, augmenter, warmup_epochs=0)
    wrapped.training_step(batch, torch.Generator().manual_seed(5))
    anchors = torch.stack([a for a, _ in capture.calls])
    for a in anchors[1:]:
        torch.testing.assert_close(a, anchors[0])
    return anchors[0], torch.stack([b for _, b in capture.calls])


def test_the_shift_matters_and_hetvae_encode_centres_it():
    shifted, plain = _batches()
    model = _vae()
    with torch.no_grad():
        z_plain = model.encode(plain.images, CTF)
        z_with = model.encode(shifted.images, CTF, TRANS)
        z_without = model.encode(shifted.images, CTF)
    torch.testing.assert_close(z_with, z_plain, atol=1e-5, rtol=1e-4)
    assert (z_without - z_plain).abs().max() > 1e-2  # the bug: un-centred views


def test_every_augmenter_has_settings_and_declares_its_views():
    assert set(AUGMENTERS.names()) == set(SETTINGS), "add σ = 0 settings for new augmenters"
    for name in AUGMENTERS.names():
        cls = AUGMENTERS.get(name)
        assert isinstance(getattr(cls, "views_from_input", None), bool), name
        assert not getattr(cls, "views_need_trans", False), name  # all return centred views


@pytest.mark.parametrize("name", AUGMENTERS.names())
def test_views_on_shifted_data_match_the_centred_data(name):
    shifted, plain = _batches()
    augmenter = AUGMENTERS.build(name, **SETTINGS[name])
    anchor_s, z_s = _run(augmenter, shifted)
    anchor_p, z_p = _run(augmenter, plain)
    # the anchor is encoded with the shift, i.e. of the centred particle
    torch.testing.assert_close(anchor_s, anchor_p, atol=1e-5, rtol=1e-4)
    # every augmenter's views are the same on shifted data with trans as on centred data
    # (rendering-based ones are unaffected by the shift; input-based ones are re-centred)
    torch.testing.assert_close(z_s, z_p, atol=1e-5, rtol=1e-4)
    if augmenter.views_from_input:
        # σ = 0 / identity transform: each view's latent is the anchor, shifted or not
        for z_view in z_s:
            torch.testing.assert_close(z_view, anchor_s, atol=1e-5, rtol=1e-4)
        for z_view in z_p:  # trans None: the old behaviour
            torch.testing.assert_close(z_view, anchor_p, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [
        {"flip_p": 1.0, "rot90": True, "max_angle_deg": 0.0, "crop_scale": (1.0, 1.0)},
        {},  # the defaults: flips, rotations and crops
    ],
)
def test_crop_flip_rotate_recentres_before_transforming(settings):
    shifted, plain = _batches()
    augmenter = CropFlipRotate(num_views=3, **settings)
    model = _vae()
    step = model.training_step(shifted)
    views_s, _ = augmenter(shifted, model, step, torch.Generator().manual_seed(3))
    views_p, _ = augmenter(plain, model, step, torch.Generator().manual_seed(3))
    torch.testing.assert_close(views_s, views_p, atol=1e-5, rtol=1e-4)


def test_recenter_broadcasts_over_views_and_is_identity_without_trans():
    shifted, plain = _batches()
    views = shifted.images.expand(2, -1, -1, -1)
    torch.testing.assert_close(
        recenter(views, TRANS), plain.images.expand(2, -1, -1, -1), atol=1e-5, rtol=1e-4
    )
    assert recenter(shifted.images, None) is shifted.images


class InputFrame:
    """A custom augmenter whose views keep the input frame: it asks for ``batch.trans``."""

    views_from_input = True
    views_need_trans = True

    def __call__(self, batch, model, step, generator=None):
        return batch.images.detach().expand(2, -1, -1, -1), batch.ctf


def test_views_needing_trans_are_encoded_with_batch_trans_repeated_per_view():
    shifted, _ = _batches()
    anchor, z_views = _run(InputFrame(), shifted)
    for z_view in z_views:  # different shifts per image: the repeat order matters
        torch.testing.assert_close(z_view, anchor, atol=1e-5, rtol=1e-4)
