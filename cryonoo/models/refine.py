"""Test-time optimization of latents against a frozen decoder, shared by every LatticeModel.

Given images with known poses, Adam minimizes each image's *point objective* over its latent
``z_i`` (the model's training objective with ``z`` a point estimate)::

    loss_i = mean_{k ∈ loss mask} (CTF_ik · Ĥ(z_i)_k − Y_ik)²  +  model.latent_prior(z)_i

over the ``Npix`` loss-mask points (the models' masked MSE, per image instead of per batch; the
observed image is translated by ``+trans`` pixels first). The prior is the model's
:meth:`~cryonoo.models.base.LatticeModel.latent_prior` hook, in units of the per-pixel MSE:

* :class:`~cryonoo.models.vae.HetVAE`: ``beta · ½|z_i|² / Npix``, the Gaussian prior's negative
  log density (up to a constant) with the weight the KL term has in training; the KL of a point
  mass to ``N(0, I)`` is not defined, so it cannot be used as is.
* :class:`~cryonoo.models.autodecoder.AutoDecoder`: ``latent_l2 · |z_i|²``, its training prior.

The batch's loss is ``Σ_i loss_i``: every image's gradient reaches only its own latent and Adam's
steps are per element, so each image is fitted independently of the rest of its batch, yet all
of them in one vectorized pass. The model is frozen meanwhile (eval mode, ``requires_grad``
off; both restored afterwards, parameters and their ``.grad`` untouched).

:meth:`HetVAE.refine <cryonoo.models.vae.HetVAE.refine>` starts from the encoder's posterior
mean (*semi-amortized* inference); :meth:`AutoDecoder.fit_latents
<cryonoo.models.autodecoder.AutoDecoder.fit_latents>` from zeros, random or mean latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cryonoo.models.encoders import check_int

if TYPE_CHECKING:
    from cryonoo.models.base import LatticeModel

__all__ = ["REFINE_LR", "REFINE_STEPS", "fit_latents", "frozen", "latent_loss"]

#: default Adam steps of a refinement that starts from the encoder's latent
REFINE_STEPS = 20
#: default Adam learning rate of that refinement, in latent units per step. Measured on the
#: demo's data (hinge, box 32, SNR 0.1; plain VAE, 800 unseen images, K = 20): unseen kNN R²
#: 0.416 at 1e-2, 0.580 at 2e-2, 0.820 at 5e-2 (benchmarks/refine.py; docs/generalization.md).
REFINE_LR = 5e-2

#: ``on_step(k, z)``: called after Adam step ``k`` (1-based) with a copy of the latents
OnStep = Callable[[int, Tensor], None]


def check_lr(lr: object) -> float:
    """``lr`` as a positive ``float``; anything else raises ``ValueError``."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    return float(lr)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter inside; both restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _objective(
    model: LatticeModel, z: Tensor, coords: Tensor, y: Tensor, c: Tensor | None
) -> Tensor:
    """``(B,)`` point objective of ``z`` ``(B, zdim)`` at sliced ``coords`` ``(B, Npix, 3)``
    against targets ``y`` and CTF ``c`` ``(B, Npix)`` (module docstring)."""
    pred = model.decoder(coords, z, validate=False).float()
    pred = pred if c is None else pred * c
    return (pred - y).pow(2).mean(dim=1) + model.latent_prior(z)


def _setup(
    model: LatticeModel,
    images: Tensor,
    rot: Tensor,
    ctf: Tensor | None,
    trans: Tensor | None,
    z: Tensor,
    band: float | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check shapes; → sliced coordinates ``(B, N, 3)``, targets and CTF ``(B, N)`` at the
    ``N = Npix`` loss-mask points, or at those with ``|k| ≤ band`` cycles/pixel."""
    b = model._check_images(images)
    model._check(rot, "rot", (b, 3, 3), "one rotation matrix per image")
    model._check(z, "z", (b, model.zdim), "one latent per image")
    with torch.no_grad():
        y, c = model._loss_targets(images, ctf, trans)
        if band is None:
            return model._slice_coords(rot), y, c
        pos = model._band_positions(band)
        c = None if c is None else c.index_select(1, pos)
        return model._slice_coords(rot, model._coords2[pos]), y.index_select(1, pos), c


def latent_loss(
    model: LatticeModel,
    images: Tensor,
    rot: Tensor,
    ctf: Tensor | None = None,
    trans: Tensor | None = None,
    *,
    z: Tensor,
    band: float | None = None,
) -> Tensor:
    """``(B,)`` float32 point objective (module docstring) of latents ``z`` ``(B, zdim)`` for
    ``(B, D, D)`` images at poses ``rot`` ``(B, 3, 3)``, CTF ``(B, 8)``, shifts ``(B, 2)`` px;
    with ``band`` its mean runs over the loss-mask points with ``|k| ≤ band`` only."""
    coords, y, c = _setup(model, images, rot, ctf, trans, z, band)
    with frozen(model), torch.no_grad():
        return _objective(model, z.float(), coords, y, c)


def fit_latents(
    model: LatticeModel,
    images: Tensor,
    rot: Tensor,
    ctf: Tensor | None = None,
    trans: Tensor | None = None,
    *,
    z0: Tensor,
    steps: int,
    lr: float,
    band: float | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """``(B, zdim)`` float32 latents after ``steps`` Adam steps (``lr``) from ``z0``.

    ``images`` are ``(B, D, D)`` Hartley images, ``rot`` ``(B, 3, 3)``, ``ctf`` ``(B, 8)``,
    ``trans`` ``(B, 2)`` pixels, ``z0`` ``(B, zdim)``; all on the model's device. Minimizes the
    sum over images of the point objective with the model frozen (module docstring);
    ``steps=0`` returns a float32 copy of ``z0``. ``on_step(k, z)`` gets a copy of the latents
    after step ``k`` (1-based). Works under ``torch.no_grad()`` (gradients are enabled inside).

    ``band`` (cycles/pixel, in ``(0, 0.5]``; ``None``: the whole loss disk) fits only the
    frequencies ``|k| ≤ band``: a low-pass objective for about ``(2·band)²`` of the decoder's
    work per step (the conformation lives mostly at low resolution; the prior keeps its units).
    """
    steps = check_int(steps, "steps", 0)
    lr = check_lr(lr)
    coords, y, c = _setup(model, images, rot, ctf, trans, z0, band)
    z = z0.detach().to(device=coords.device, dtype=torch.float32).clone()
    z.requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    with frozen(model), torch.enable_grad():
        for k in range(1, steps + 1):
            loss = _objective(model, z, coords, y, c).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(k, z.detach().clone())
    if steps and model.check_finite and not bool(torch.isfinite(z).all()):
        raise RuntimeError(
            f"latent fitting diverged (non-finite latents after {steps} steps at lr={lr}); "
            "lower the learning rate or check the data normalization"
        )
    return z.detach()
