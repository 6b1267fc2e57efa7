"""Augmenters: the views that self-distillation encodes.

An augmenter is called as ``augmenter(batch, model, step, generator)`` and returns
``(views, ctf)``: ``views`` is ``(J, B, D, D)`` in the model's data domain (the normalized,
symmetrized, centered Hartley transform on the odd lattice ``D = box + 1``) and ``ctf`` the
``(B, 8)`` CTF to encode every view with (or ``None``).

Noise and geometric transforms act in **real space**: an image is converted with
``iht2_center(unsymmetrize_ht(x))`` (``(…, D, D)`` → ``(…, box, box)``), modified, and converted
back with ``symmetrize_ht(ht2_center(x))``. With the data normalized by ``norm_std``, a real-space
noise std σ in these units is ``σ_raw / norm_std``. All randomness comes from the given
``torch.Generator`` (drawn on the generator's device, then moved), and everything is vectorized
over views and images.

* ``reproject-noise`` — CryoNOO ("Separating signal from noise: a self-distillation approach for
  amortized heterogeneous cryo-EM reconstruction", method section): the model's own
  CTF-modulated rendering of each image plus ``N(0, (f_j σ)²)`` real-space noise for each noise
  factor ``f_j``.
* ``noise`` — the "noise augmentation" baseline: the same noise added to the input images.
* ``crop-flip-rotate`` — conventional real-space augmentations of the input images.
* ``dream`` — the sleep phase of wake-sleep training: the decoder's rendering of latents drawn
  from a fixed distribution (not the batch's own), at uniformly random poses, plus noise. It
  returns a third element, the latents that rendered the views, which replace the anchor: the
  encoder learns to invert the generative model on images it has never seen, drawn afresh at
  every step.

Return value and poses
----------------------
Every registered augmenter has ``make_views(batch, model, step, generator) →``
:class:`~cryonoo.types.Views` (``views``, ``ctf``, ``rot``, ``targets``), which the
self-distillation wrapper calls; ``__call__`` is ``make_views(…).as_tuple()``, the legacy return
``(views, ctf)``, or ``(views, ctf, targets)`` with ``targets`` the ``(B, zdim)`` latents the
views must encode to (instead of the batch's own latents). A custom augmenter may still return
only the tuple from ``__call__``.

``Views.rot`` is the ``(J, B, 3, 3)`` pose of every view (cryoDRGN convention, lattice
``coords @ rot``), which a pose-conditioned encoder (``pose-mlp``) is given with the view:

* ``reproject-noise`` (``pose="same"``) and ``noise``: the image's own pose, ``batch.rot`` for
  every view;
* ``reproject-noise`` (``pose="random"``) and ``dream``: the random pose each image was
  rendered at (shared by its J views);
* ``crop-flip-rotate``: the image's pose composed with the view's in-plane transform. The view
  samples the input at ``M·x`` (``x = (col, row)`` about the centre), ``M = s·A(a)·F`` with
  ``A(a)`` the 2-D rotation by ``a``, ``F = diag(f, 1)`` the flip (``f = ±1``) and ``s`` the crop
  scale. Its spectrum at ``k = (kx, ky)`` (same axes, ``kx`` along columns as in
  :func:`~cryonoo.physics.lattice.lattice_coords`) is the input's at ``A(a)·F·k / s``, and the
  input's at ``q`` is the volume's at ``[q, 0] @ rot``, so the view is the slice at pose
  ``Qᵀ @ rot`` with ``Q = blockdiag(A(a)·F, f)`` (magnified by ``1/s``, which a pose cannot
  express). ``Q`` is a proper rotation also for a flip: on the slice plane (``kz = 0``) its
  ``(3, 3)`` entry ``f`` plays no part, and ``f = −1`` there turns the mirror into the 180°
  rotation about the image's ``y`` axis, which gives the same projection.

A legacy augmenter (tuple only) states no poses: the wrapper then uses ``batch.rot`` if the
augmenter sets ``views_keep_pose = True``, and refuses a pose-conditioned model otherwise.

Translations
------------
The anchor latent ``z0`` comes from ``model.training_step(batch)``, which encodes each image
after translating it by its in-plane shift ``batch.trans`` (``(B, 2)`` pixels, ``(tx, ty)``;
:class:`~cryonoo.models.vae.HetVAE` applies :func:`~cryonoo.physics.shifts.shift_ht`'s phase
shift, content moving by ``+trans``, which centres the particle). Every registered augmenter
therefore returns **centred** views, which the wrapper encodes with no translation:

* renderings (``reproject-noise``, ``dream``) are centred by construction (the decoder renders
  at the origin); ``batch.trans`` plays no part in them.
* views built from the input images (``noise``, ``crop-flip-rotate``) are re-centred here with
  :func:`recenter`, the same odd-lattice phase shift the encoder applies. For
  ``crop-flip-rotate`` the re-centring must come **first**: its flips, rotations and crops act
  about the image centre, so an off-centre particle would be rotated about the wrong point and
  no shift applied afterwards (by the encoder) could undo that. For ``noise`` it comes **after**
  the noise: the views are then exactly the encoder's own preprocessing of ``image + noise``
  (with σ = 0 the view's latent *is* ``z0``, for sub-pixel shifts too), and white noise is
  translation invariant, so the order does not change its distribution.

Each augmenter declares ``views_from_input`` (whether its views derive from ``batch.images``;
descriptive). An augmenter whose views stay in the input images' un-centred frame may instead
set ``views_need_trans = True``: the wrapper then encodes its views with ``batch.trans``
(repeated over the J views) and raises if the model's ``encode`` takes no ``trans``. No
registered augmenter needs that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cryonoo.physics.fft import ht2_center, iht2_center, symmetrize_ht, unsymmetrize_ht
from cryonoo.physics.lattice import check_band
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.shifts import shift_ht
from cryonoo.registry import Registry
from cryonoo.types import Batch, ReconstructionModel, StepOutput, Views

__all__ = [
    "AUGMENTERS",
    "RUN_CONTEXT",
    "CropFlipRotate",
    "Dream",
    "NoiseAugment",
    "ReprojectNoise",
    "Views",
    "from_real_space",
    "inplane_pose",
    "recenter",
    "run_context_of",
    "to_real_space",
]

AUGMENTERS: Registry = Registry("augmenter")

#: what a training run can pass an augmenter: the data's noise σ (data-domain units), the
#: recipe's noise factors (one view each), their number, and whether renderings are detached.
#: An augmenter names what it takes in its ``run_context`` attribute; without one it takes
#: ``("sigma", "noise_factors")`` when ``uses_data_sigma`` is set, else ``("num_views",)``.
RUN_CONTEXT = ("sigma", "noise_factors", "num_views", "detach_render")


def run_context_of(augmenter: Any) -> tuple[str, ...]:
    """The run-context keys an augmenter (class or instance) takes (see :data:`RUN_CONTEXT`)."""
    declared = getattr(augmenter, "run_context", None)
    if declared is None:
        uses_sigma = getattr(augmenter, "uses_data_sigma", False)
        declared = ("sigma", "noise_factors") if uses_sigma else ("num_views",)
    unknown = sorted(set(declared) - set(RUN_CONTEXT))
    if unknown:
        raise ValueError(f"{augmenter!r}: unknown run_context {unknown}; known: {RUN_CONTEXT}")
    return tuple(declared)


def to_real_space(x: Tensor) -> Tensor:
    """``(…, D, D)`` data-domain Hartley images → ``(…, D−1, D−1)`` real-space images."""
    return iht2_center(unsymmetrize_ht(x))


def from_real_space(x: Tensor) -> Tensor:
    """``(…, n, n)`` real-space images (n even) → ``(…, n+1, n+1)`` data-domain images."""
    return symmetrize_ht(ht2_center(x))


def recenter(images: Tensor, trans: Tensor | None) -> Tensor:
    """Centre data-domain images by their in-plane shifts, as the model's encoder would.

    Parameters
    ----------
    images:
        ``(…, B, D, D)`` data-domain Hartley images on the odd lattice (e.g. ``(J, B, D, D)``
        views).
    trans:
        ``(B, 2)`` shifts ``(tx, ty)`` in **pixels** (``batch.trans``), or ``None``. Detached:
        the views are fixed inputs, like the detached images they come from.

    Returns
    -------
    Tensor
        ``(…, B, D, D)``: :func:`~cryonoo.physics.shifts.shift_ht` of ``images`` by ``+trans``
        (content moves by ``+t``), the phase shift ``HetVAE`` applies in ``_prepare`` before
        encoding; ``images`` itself when ``trans`` is ``None``. For a sub-pixel shift the ±Nyquist
        copies of the result differ, as in the encoder (see :mod:`cryonoo.physics.shifts`).
    """
    if trans is None:
        return images
    return shift_ht(images, trans.detach())


def _per_view(rot: Tensor, num_views: int) -> Tensor:
    """``(B, 3, 3)`` poses → ``(J, B, 3, 3)`` (the same pose for the J views of an image)."""
    return rot.detach().unsqueeze(0).expand(num_views, -1, -1, -1)


def inplane_pose(rot: Tensor, angle: Tensor, flip: Tensor) -> Tensor:
    """The pose of an image after an in-plane rotation and flip (see the module docstring).

    Parameters
    ----------
    rot:
        ``(M, 3, 3)`` poses of the input images (cryoDRGN convention, ``coords @ rot``).
    angle:
        ``(M,)`` angles ``a`` in **radians** of ``crop-flip-rotate``'s sampling matrix
        ``A(a) = [[cos a, −sin a], [sin a, cos a]]`` on ``(col, row)`` coordinates (the view
        samples the input at ``A(a)·F·x``).
    flip:
        ``(M,)`` ``f = −1`` (the view samples the input at ``(−x, y)`` before the rotation) or
        ``+1``.

    Returns
    -------
    Tensor
        ``(M, 3, 3)`` ``Qᵀ @ rot`` with ``Q = blockdiag(A(a)·diag(f, 1), f)``, a proper
        rotation: the view's slice is the volume's spectrum at ``coords @ (Qᵀ @ rot)``.
    """
    angle = angle.to(rot.dtype)
    f = flip.to(rot.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # Qᵀ = blockdiag(diag(f, 1)·A(−a), f)
    q_t = torch.stack([f * cos, f * sin, zero, -sin, cos, zero, zero, zero, f], dim=-1).view(
        -1, 3, 3
    )
    return q_t @ rot.detach()


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    out = torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return out.to(like.device)


def _rand(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    out = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return out.to(like.device)


def _check_factors(noise_factors: Sequence[float]) -> tuple[float, ...]:
    factors = tuple(float(f) for f in noise_factors)
    if not factors or any(not math.isfinite(f) or f < 0 for f in factors):
        raise ValueError(f"noise_factors must be a non-empty list of numbers ≥ 0, got {factors}")
    return factors


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
    return float(sigma)


def noisy_views(
    images: Tensor,
    sigma: float,
    noise_factors: Sequence[float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(B, D, D)`` data-domain images → ``(J, B, D, D)`` views with real-space noise.

    View ``j`` is ``images`` plus i.i.d. ``N(0, (f_j σ)²)`` noise per real-space pixel.
    """
    real = to_real_space(images)  # (B, n, n), float32 or float64
    scale = torch.tensor(noise_factors, dtype=real.dtype, device=real.device) * sigma
    noise = _randn((len(noise_factors), *real.shape), generator, real).to(real.dtype)
    return from_real_space(real.unsqueeze(0) + scale.view(-1, 1, 1, 1) * noise)


class _ViewAugmenter:
    """What every registered augmenter shares: the legacy tuple call over :meth:`make_views`."""

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        raise NotImplementedError

    def __call__(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
        """``make_views(…).as_tuple()``: ``(views, ctf)``, or ``(views, ctf, targets)``."""
        return self.make_views(batch, model, step, generator).as_tuple()


class _NoiseFactorViews(_ViewAugmenter):
    """An augmenter with one view per noise factor ``f_j`` (``self.noise_factors``)."""

    noise_factors: tuple[float, ...]

    @property
    def num_views(self) -> int:
        return len(self.noise_factors)


@AUGMENTERS.register("reproject-noise")
class ReprojectNoise(_NoiseFactorViews):
    """CryoNOO views: the model's own rendering plus real-space noise of std f_j·σ per view.

    Parameters
    ----------
    sigma:
        Noise std in the real-space units of the data domain (``σ_raw / norm_std``).
    noise_factors:
        ``f_1 … f_J``; one view per factor. The default ``(0.5, 1, 1.5)`` × the data's own σ
        is the paper's setting (its factors 1, 2, 3 multiply the σ of images at twice the box;
        see :mod:`cryonoo.train.recipes`).
    detach_render:
        Treat the rendering as a fixed teacher image (default). With ``False`` the SSL loss can
        also push gradients into the decoder through the rendering.
    pose:
        ``"same"`` (the paper's): render at the image's own pose, reusing ``step.render`` when
        the model returned it. ``"random"``: render the image's latent at a new uniformly random
        pose (one per image, shared by its J views; costs one decoder pass), so the encoder also
        sees the conformation from views the training set does not contain.

    Otherwise ``model.render(step.z, rot, batch.ctf)`` is called (under ``no_grad`` when
    detached). Returns ``(views (J, B, D, D), batch.ctf)``: centred renderings, independent of
    ``batch.trans`` (only through ``step.z``, whose encoding already applied it);
    :meth:`make_views` adds their poses (``batch.rot``, or the random poses).
    """

    #: the noise std is the data's own σ: the trainer passes ``sigma`` (see recipes)
    uses_data_sigma = True
    #: what the trainer passes from the run (:data:`RUN_CONTEXT`)
    run_context = ("sigma", "noise_factors", "detach_render")
    #: views are centred renderings, encoded without a translation
    views_from_input = False

    def __init__(
        self,
        sigma: float,
        noise_factors: Sequence[float] = (0.5, 1.0, 1.5),
        detach_render: bool = True,
        pose: str = "same",
    ) -> None:
        if pose not in ("same", "random"):
            raise ValueError(f"pose must be 'same' or 'random', got {pose!r}")
        self.sigma = _check_sigma(sigma)
        self.noise_factors = _check_factors(noise_factors)
        self.detach_render = bool(detach_render)
        self.pose = pose

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        """``Views(views (J, B, D, D), batch.ctf, rot (J, B, 3, 3))``: ``rot`` is the pose each
        image was rendered at (``batch.rot``, or the random one), shared by its J views."""
        render = step.render if self.pose == "same" else None
        rot = batch.rot
        if self.pose == "random":
            rot = random_rotations(len(batch), generator, dtype=rot.dtype, device=rot.device)
        if render is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_render):
                render = model.render(step.z, rot, batch.ctf)
        if self.detach_render:
            render = render.detach()
        if render.shape != batch.images.shape:
            raise ValueError(
                f"rendering has shape {tuple(render.shape)}, expected {tuple(batch.images.shape)}"
            )
        views = noisy_views(render, self.sigma, self.noise_factors, generator)
        return Views(views, batch.ctf, rot=_per_view(rot, self.num_views))

    def __repr__(self) -> str:
        return (
            f"ReprojectNoise(sigma={self.sigma:g}, noise_factors={self.noise_factors}, "
            f"detach_render={self.detach_render}, pose={self.pose!r})"
        )


@AUGMENTERS.register("noise")
class NoiseAugment(_NoiseFactorViews):
    """Noise-augmentation baseline: the input images plus real-space noise of std f_j·σ.

    Same parameters as ``reproject-noise`` without the model: ``sigma`` (data-domain real-space
    units) and ``noise_factors`` (one view each). Returns ``(views (J, B, D, D), batch.ctf)``,
    re-centred by ``batch.trans`` after the noise is added (:func:`recenter`; see the module
    docstring): with σ = 0 each view is encoded exactly like the anchor.
    """

    #: the noise std is the data's own σ: the trainer passes ``sigma`` (see recipes)
    uses_data_sigma = True
    #: views derive from ``batch.images``; re-centred here, so encoded without a translation
    views_from_input = True

    def __init__(self, sigma: float, noise_factors: Sequence[float] = (0.5, 1.0, 1.5)) -> None:
        self.sigma = _check_sigma(sigma)
        self.noise_factors = _check_factors(noise_factors)

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        """``Views(views (J, B, D, D), batch.ctf, rot = batch.rot for every view)``."""
        views = noisy_views(batch.images.detach(), self.sigma, self.noise_factors, generator)
        return Views(
            recenter(views, batch.trans), batch.ctf, rot=_per_view(batch.rot, self.num_views)
        )

    def __repr__(self) -> str:
        return f"NoiseAugment(sigma={self.sigma:g}, noise_factors={self.noise_factors})"


@AUGMENTERS.register("crop-flip-rotate")
class CropFlipRotate(_ViewAugmenter):
    """Conventional baseline: random flips, in-plane rotations and crops of the input images.

    Per view and image (all drawn from the generator, applied in one ``grid_sample`` call):

    * a horizontal flip with probability ``flip_p``;
    * a rotation by a random multiple of 90° (if ``rot90``) plus a uniform angle in
      ``±max_angle_deg``, about the image center (pixel ``box // 2``, cryoDRGN's origin);
    * a square crop of relative side ``s ~ U(crop_scale)`` at a random position inside the
      image, either resized back to the full box (``crop_mode="resize"``) or kept in place with
      zeros outside (``crop_mode="pad"``).

    Bilinear interpolation, zeros outside the image. The CTF is returned unchanged (an in-plane
    rotation or flip of an astigmatic CTF is not modelled: this is a naive baseline).

    The images are first re-centred by ``batch.trans`` (:func:`recenter`), so that the
    transforms act about the particle's centre and the views are centred: encoding a view with
    the image's shift after an off-centre rotation would not centre it (see the module
    docstring). Returns ``(views (J, B, D, D), batch.ctf)``; :meth:`make_views` adds each
    view's pose, ``batch.rot`` composed with the view's rotation and flip
    (:func:`inplane_pose`; the crop's magnification is not a pose).
    """

    #: views derive from ``batch.images``; re-centred first, so encoded without a translation
    views_from_input = True

    def __init__(
        self,
        num_views: int = 3,
        flip_p: float = 0.5,
        rot90: bool = True,
        max_angle_deg: float = 15.0,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        crop_mode: str = "resize",
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be ≥ 1, got {num_views}")
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low ≤ high ≤ 1, got {crop_scale}")
        if crop_mode not in ("resize", "pad"):
            raise ValueError(f"crop_mode must be 'resize' or 'pad', got {crop_mode!r}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.num_views, self.flip_p, self.rot90 = int(num_views), float(flip_p), bool(rot90)
        self.max_angle_deg, self.crop_scale, self.crop_mode = (
            float(max_angle_deg),
            (lo, hi),
            crop_mode,
        )

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        """``Views(views (J, B, D, D), batch.ctf, rot (J, B, 3, 3))``, ``rot`` the pose of each
        view (:func:`inplane_pose` of ``batch.rot`` and the view's angle and flip)."""
        real = to_real_space(recenter(batch.images.detach(), batch.trans))  # (B, n, n)
        n_img, n = real.shape[0], real.shape[-1]
        m = self.num_views * n_img
        u = _rand((m, 6), generator, real).to(real.dtype)
        flip = torch.where(u[:, 0] < self.flip_p, -1.0, 1.0).to(real.dtype)
        quarter = torch.floor(u[:, 1] * 4) if self.rot90 else torch.zeros_like(u[:, 1])
        angle = quarter * (math.pi / 2) + (2 * u[:, 2] - 1) * math.radians(self.max_angle_deg)
        lo, hi = self.crop_scale
        s = lo + (hi - lo) * u[:, 3]
        offset = (2 * u[:, 4:6] - 1) * (1 - s).unsqueeze(-1)  # crop center, normalized units
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output pixel x (normalized, align_corners=False) samples the input at
        # c + S·R·Flip·(x − c) + t, with c the center pixel box//2 in normalized units.
        rot = torch.stack([cos * flip, -sin, sin * flip, cos], dim=-1).view(m, 2, 2)
        scale = s if self.crop_mode == "resize" else torch.ones_like(s)
        lin = rot * scale.view(m, 1, 1)
        c = torch.full((m, 2), 1.0 / n, dtype=real.dtype, device=real.device)
        shift = offset if self.crop_mode == "resize" else torch.zeros_like(offset)
        affine_t = c - (lin @ c.unsqueeze(-1)).squeeze(-1) + shift
        theta = torch.cat([lin, affine_t.unsqueeze(-1)], dim=-1)  # (m, 2, 3)
        grid = F.affine_grid(theta, [m, 1, n, n], align_corners=False)
        src = real.unsqueeze(0).expand(self.num_views, -1, -1, -1).reshape(m, 1, n, n)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out.view(m, n, n)
        if self.crop_mode == "pad":
            coords = (torch.arange(n, device=real.device, dtype=real.dtype) * 2 + 1) / n - 1
            gx = coords.view(1, 1, n) - c[:, 0].view(m, 1, 1) - offset[:, 0].view(m, 1, 1)
            gy = coords.view(1, n, 1) - c[:, 1].view(m, 1, 1) - offset[:, 1].view(m, 1, 1)
            half = s.view(m, 1, 1)
            out = out * ((gx.abs() <= half) & (gy.abs() <= half)).to(out.dtype)
        views = from_real_space(out.view(self.num_views, n_img, n, n))
        src_rot = batch.rot.unsqueeze(0).expand(self.num_views, -1, -1, -1).reshape(m, 3, 3)
        poses = inplane_pose(src_rot, angle, flip).view(self.num_views, n_img, 3, 3)
        return Views(views, batch.ctf, rot=poses)

    def __repr__(self) -> str:
        return (
            f"CropFlipRotate(num_views={self.num_views}, flip_p={self.flip_p}, rot90={self.rot90}, "
            f"max_angle_deg={self.max_angle_deg}, crop_scale={self.crop_scale}, "
            f"crop_mode={self.crop_mode!r})"
        )


@AUGMENTERS.register("dream")
class Dream(_NoiseFactorViews):
    """Sleep-phase views: renderings of latents from a fixed distribution, with their latents.

    Per batch of ``B`` images: ``B`` latents are drawn, each is rendered by the model (no
    gradient: the decoder is the teacher) at a uniformly random pose with the CTF of one of the
    batch's images, and real-space noise of std ``f_j·σ`` makes view ``j``. The views' targets
    are the drawn latents, so the objective (``regress``) trains the encoder to recover the
    latent that made a noisy image — on fresh images at every step, so it cannot memorize.

    Parameters
    ----------
    sigma:
        Noise std in the real-space units of the data domain (``σ_raw / norm_std``).
    noise_factors:
        ``f_1 … f_J``; one view per factor (default: the data's own noise level).
    latents:
        ``"prior"``: ``N(0, I)``, the VAE's prior. ``"batch"``: ``N(m, diag s²)`` with ``m, s``
        the per-dimension mean and std of the batch's (detached) posterior means, a Gaussian
        fit of the aggregate posterior that follows where the data's latents actually lie.
        ``"posterior"``: the batch's own (detached) posterior means, each rendered at a new
        random pose: fresh images of the conformations the VAE found in the data, so the
        encoder learns to recover those latents from any view and any noise draw.
    poses:
        ``"shared"``: the J views of a latent are one rendering at one random pose with J noise
        draws. ``"per-view"``: each view renders the latent at its own random pose (J
        renderings), so the encoder sees the same conformation from J directions per step.
    draws:
        Noise draws per rendering with ``poses="per-view"``: the J views of a latent are
        ``J / draws`` renderings at their own random poses, each with ``draws`` noise draws
        (consecutive views), so a step renders ``J / draws`` images per latent (J must be a
        multiple of ``draws``; default 1: every view its own rendering).
    fraction:
        The share of the batch that dreams, in ``(0, 1]``: ``M = max(2, round(fraction · B))``
        latents per step (at most ``B``), with the CTFs (and, for ``"posterior"``, the means)
        of the batch's first ``M`` images — the batch is already a random draw. A step then
        renders ``J · M`` images instead of ``J · B``: the sleep phase's cost scales with it.
    band:
        Render only the frequencies ``|k| ≤ band`` (cycles/pixel, in ``(0, 0.5]``; the model's
        ``render(…, band=…)``), zero beyond, before the noise: low-pass dreams for about
        ``(2·band)²`` of the decoder's work. ``None`` (default): the whole loss disk.

    Returns ``(views (J, M, D, D), ctf (M, 8), targets (M, zdim))`` (``M = B`` by default); the
    views are centred renderings, independent of ``batch.trans``. :meth:`make_views` adds the
    random poses they were rendered at.
    """

    #: the noise std is the data's own σ: the trainer passes ``sigma`` (see recipes)
    uses_data_sigma = True
    #: views are centred renderings, encoded without a translation
    views_from_input = False

    def __init__(
        self,
        sigma: float,
        noise_factors: Sequence[float] = (1.0,),
        latents: str = "prior",
        poses: str = "shared",
        fraction: float = 1.0,
        draws: int = 1,
        band: float | None = None,
    ) -> None:
        self.band = None if band is None else check_band(band)
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)
        if poses not in ("shared", "per-view"):
            raise ValueError(f"poses must be 'shared' or 'per-view', got {poses!r}")
        self.poses = poses
        if latents not in ("prior", "batch", "posterior"):
            raise ValueError(f"latents must be 'prior', 'batch' or 'posterior', got {latents!r}")
        self.sigma = _check_sigma(sigma)
        self.noise_factors = _check_factors(noise_factors)
        self.latents = latents
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be an integer ≥ 1, got {draws!r}")
        if draws > 1 and (poses != "per-view" or len(self.noise_factors) % draws):
            raise ValueError(
                f"draws = {draws} needs poses='per-view' and a number of views "
                f"({len(self.noise_factors)}) that is a multiple of it"
            )
        self.draws = draws

    def draw(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(B, zdim)`` latents to render, given the batch's ``(B, zdim)`` posterior means."""
        if self.latents == "posterior":
            return z.detach().float()
        eps = _randn(z.shape, generator, z)
        if self.latents == "prior":
            return eps
        z = z.detach().float()
        return z.mean(dim=0) + z.std(dim=0) * eps

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        """``Views(views (J, M, D, D), ctf (M, 8), rot (J, M, 3, 3), targets (M, zdim))``:
        ``rot`` the pose each view was rendered at (``M`` dreams: see ``fraction``)."""
        targets = self.draw(step.z, generator)
        batch = self._dreamers(batch)
        targets = targets[: len(batch)]
        if self.poses == "per-view":
            return self._views_per_pose(batch, model, targets, generator)
        rot = random_rotations(
            len(batch), generator, dtype=batch.rot.dtype, device=batch.rot.device
        )
        with torch.no_grad():
            render = self._render(model, targets, rot, batch.ctf).detach()
        views = noisy_views(render.float(), self.sigma, self.noise_factors, generator)
        return Views(views, batch.ctf, rot=_per_view(rot, self.num_views), targets=targets)

    def _render(
        self, model: ReconstructionModel, z: Tensor, rot: Tensor, ctf: Tensor | None
    ) -> Tensor:
        if self.band is None:
            return model.render(z, rot, ctf)
        return model.render(z, rot, ctf, band=self.band)

    def _dreamers(self, batch: Batch) -> Batch:
        """The batch's first ``M`` images (all of them when ``fraction`` is 1)."""
        n_img = len(batch)
        m = min(n_img, max(2, round(self.fraction * n_img)))
        if m == n_img:
            return batch
        ctf = None if batch.ctf is None else batch.ctf[:m]
        return Batch(images=batch.images[:m], rot=batch.rot[:m], ctf=ctf)

    def _views_per_pose(
        self,
        batch: Batch,
        model: ReconstructionModel,
        targets: Tensor,
        generator: torch.Generator | None,
    ) -> Views:
        """J views of ``targets`` ``(B, zdim)``: ``J / draws`` renderings at their own random
        poses, each view ``j`` the rendering ``j // draws`` with its own noise."""
        n_render, n_img = self.num_views // self.draws, len(batch)
        rot = random_rotations(
            n_render * n_img, generator, dtype=batch.rot.dtype, device=batch.rot.device
        )
        with torch.no_grad():  # one decoder call for all renderings
            ctf = None if batch.ctf is None else batch.ctf.repeat(n_render, 1)
            render = self._render(model, targets.repeat(n_render, 1), rot, ctf)
        render = render.detach().float().reshape(n_render, n_img, *render.shape[1:])
        views = torch.stack(
            [
                noisy_views(render[j // self.draws], self.sigma, (f,), generator)[0]
                for j, f in enumerate(self.noise_factors)  # J is small (1–8)
            ]
        )
        rot = rot.reshape(n_render, n_img, 3, 3).repeat_interleave(self.draws, dim=0)
        return Views(views, batch.ctf, rot=rot, targets=targets)

    def __repr__(self) -> str:
        return (
            f"Dream(sigma={self.sigma:g}, noise_factors={self.noise_factors}, "
            f"latents={self.latents!r}, poses={self.poses!r}, fraction={self.fraction:g}, "
            f"draws={self.draws}, band={self.band})"
        )
