"""One contract test per registered component: it builds, runs forward (and backward where it
has parameters or inputs that need gradients) on tiny shapes, and gives finite values.

A registry without an exerciser below fails ``test_every_registry_is_covered``, so a new
registry cannot slip in untested.
"""

from __future__ import annotations

import pytest
import torch

from cryonoo.physics.rotations import random_rotations
from cryonoo.registries import all_registries
from cryonoo.types import Batch

D = 9  # 8-px images
GEN = torch.Generator().manual_seed(0)


def _batch(b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(1)
    ctf = torch.tensor([[4.0, 15000, 14500, 20.0, 300, 2.7, 0.1, 0.0]]).repeat(b, 1)
    return Batch(
        images=torch.randn(b, D, D, generator=g),
        rot=random_rotations(b, g),
        trans=torch.randn(b, 2, generator=g),
        ctf=ctf,
        index=torch.arange(b),
    )


def _vae(**kw):
    from cryonoo.models.vae import HetVAE

    base = {"zdim": 2, "enc_layers": 1, "enc_dim": 8, "dec_layers": 1, "dec_dim": 8}
    return HetVAE(D, **{**base, **kw})


def _check_step(model) -> None:
    out = model.training_step(_batch())
    assert torch.isfinite(out.loss) and out.z.shape == (6, 2)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def exercise_encoder(name: str) -> None:
    from cryonoo.types import Encoder

    model = _vae(encoder=name)
    assert isinstance(model.encoder, Encoder) and model.encoder.zdim == 2
    assert model.encoder.input_kind in ("points", "image")
    _check_step(model)
    b = _batch()  # encode with the poses: a pose-conditioned encoder (needs_pose) needs them
    z = model.encode(b.images, b.ctf, b.trans, rot=b.rot)
    assert z.shape == (6, 2) and torch.isfinite(z).all()


def exercise_decoder(name: str) -> None:
    from cryonoo.types import Decoder

    model = _vae(decoder=name)
    assert isinstance(model.decoder, Decoder) and model.decoder.zdim == 2
    coords = torch.rand(6, 5, 3, generator=GEN) - 0.5
    assert model.decoder(coords, torch.randn(6, 2, generator=GEN)).shape == (6, 5)
    assert model.decoder.volume(torch.zeros(2)).shape == (D - 1,) * 3
    _check_step(model)


def exercise_positional(name: str) -> None:
    _check_step(_vae(pe_type=name))


def exercise_model(name: str) -> None:
    from cryonoo.models.zoo import MODELS
    from cryonoo.types import ReconstructionModel

    kw = {"zdim": 2, "enc_layers": 1, "enc_dim": 8, "dec_layers": 1, "dec_dim": 8}
    model = MODELS.build_accepted(name, D=D, n_images=6, **kw)
    assert isinstance(model, ReconstructionModel)
    _check_step(model)
    batch = _batch()
    z = torch.randn(6, 2, generator=GEN)
    assert model.render(z, batch.rot, batch.ctf).shape == (6, D, D)
    assert model.volume(z[0]).shape == (D - 1,) * 3


def exercise_head(name: str) -> None:
    from cryonoo.ssl.heads import HEADS

    head = HEADS.build(name, in_dim=4, spec="8-8")
    x = torch.randn(8, 4, generator=GEN, requires_grad=True)
    y = head(x)
    assert y.ndim == 2 and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


def exercise_ssl(name: str) -> None:
    from cryonoo.ssl.objectives import SSL

    objective = SSL.build(name, in_dim=4, head="8-8")
    a = torch.randn(8, 4, generator=GEN, requires_grad=True)
    b = torch.randn(8, 4, generator=GEN, requires_grad=True)
    out = objective(a, b)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(a.grad).all()


def exercise_augmenter(name: str) -> None:
    from cryonoo.ssl.augment import AUGMENTERS, run_context_of
    from cryonoo.ssl.distill import SelfDistillation

    context = {"sigma": 0.5, "noise_factors": (1.0, 2.0), "num_views": 2, "detach_render": True}
    kwargs = {key: context[key] for key in run_context_of(AUGMENTERS.get(name))}
    # a pose-conditioned encoder too: every augmenter must state its views' poses
    for encoder in ("resid-mlp", "pose-mlp"):
        model = SelfDistillation(
            _vae(encoder=encoder),
            augmenter=name,
            warmup_epochs=0,
            augmenter_kwargs=kwargs,
            objective_kwargs={"head": "8-8"},
        )
        out = model.training_step(_batch(), torch.Generator().manual_seed(2))
        assert "ssl/loss" in out.terms and torch.isfinite(out.loss)
        out.loss.backward()


def exercise_projector(name: str) -> None:
    from cryonoo.physics.slice import PROJECTORS

    volume = torch.randn(8, 8, 8, generator=GEN, requires_grad=True)
    images = PROJECTORS.get(name)(volume, random_rotations(3, GEN))
    assert images.shape == (3, 8, 8) and torch.isfinite(images).all()
    images.square().sum().backward()
    assert torch.isfinite(volume.grad).all()


def exercise_phantom(name: str) -> None:
    from cryonoo.data.phantoms import PHANTOMS

    phantom = PHANTOMS.build(name)
    vol = phantom.volume(0, 8)
    assert vol.shape == (8, 8, 8) and torch.isfinite(vol).all()


EXERCISERS = {
    "ENCODERS": exercise_encoder,
    "DECODERS": exercise_decoder,
    "POSITIONAL": exercise_positional,
    "MODELS": exercise_model,
    "HEADS": exercise_head,
    "SSL": exercise_ssl,
    "AUGMENTERS": exercise_augmenter,
    "PROJECTORS": exercise_projector,
    "PHANTOMS": exercise_phantom,
}
CASES = [(reg, name) for reg, registry in all_registries().items() for name in registry.names()]


def test_every_registry_is_covered():
    assert set(all_registries()) <= set(EXERCISERS)


@pytest.mark.parametrize(("registry", "name"), CASES, ids=[f"{r}:{n}" for r, n in CASES])
def test_component_contract(registry, name):
    EXERCISERS[registry](name)
