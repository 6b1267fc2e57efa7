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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cryonoo.physics.fft import ht2_center, iht2_center, symmetrize_ht, unsymmetrize_ht
from cryonoo.physics.rotations import random_rotations
from cryonoo.registry import Registry
from cryonoo.types import Batch, ReconstructionModel, StepOutput

__all__ = [
    "AUGMENTERS",
    "CropFlipRotate",
    "NoiseAugment",
    "ReprojectNoise",
    "from_real_space",
    "to_real_space",
]

AUGMENTERS: Registry = Registry("augmenter")


def to_real_space(x: Tensor) -> Tensor:
    """``(…, D, D)`` data-domain Hartley images → ``(…, D−1, D−1)`` real-space images."""
    return iht2_center(unsymmetrize_ht(x))


def from_real_space(x: Tensor) -> Tensor:
    """``(…, n, n)`` real-space images (n even) → ``(…, n+1, n+1)`` data-domain images."""
    return symmetrize_ht(ht2_center(x))


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


@AUGMENTERS.register("reproject-noise")
class ReprojectNoise:
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
    detached). Returns ``(views (J, B, D, D), batch.ctf)``.
    """

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

    @property
    def num_views(self) -> int:
        return len(self.noise_factors)

    def __call__(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        render = step.render if self.pose == "same" else None
        if render is None:
            rot = batch.rot
            if self.pose == "random":
                rot = random_rotations(len(batch), generator, dtype=rot.dtype, device=rot.device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_render):
                render = model.render(step.z, rot, batch.ctf)
        if self.detach_render:
            render = render.detach()
        if render.shape != batch.images.shape:
            raise ValueError(
                f"rendering has shape {tuple(render.shape)}, expected {tuple(batch.images.shape)}"
            )
        return noisy_views(render, self.sigma, self.noise_factors, generator), batch.ctf

    def __repr__(self) -> str:
        return (
            f"ReprojectNoise(sigma={self.sigma:g}, noise_factors={self.noise_factors}, "
            f"detach_render={self.detach_render}, pose={self.pose!r})"
        )


@AUGMENTERS.register("noise")
class NoiseAugment:
    """Noise-augmentation baseline: the input images plus real-space noise of std f_j·σ.

    Same parameters as ``reproject-noise`` without the model: ``sigma`` (data-domain real-space
    units) and ``noise_factors`` (one view each). Returns ``(views (J, B, D, D), batch.ctf)``.
    """

    def __init__(self, sigma: float, noise_factors: Sequence[float] = (0.5, 1.0, 1.5)) -> None:
        self.sigma = _check_sigma(sigma)
        self.noise_factors = _check_factors(noise_factors)

    @property
    def num_views(self) -> int:
        return len(self.noise_factors)

    def __call__(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        images = batch.images.detach()
        return noisy_views(images, self.sigma, self.noise_factors, generator), batch.ctf

    def __repr__(self) -> str:
        return f"NoiseAugment(sigma={self.sigma:g}, noise_factors={self.noise_factors})"


@AUGMENTERS.register("crop-flip-rotate")
class CropFlipRotate:
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
    """

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

    def __call__(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        real = to_real_space(batch.images.detach())  # (B, n, n)
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
        trans = c - (lin @ c.unsqueeze(-1)).squeeze(-1) + shift
        theta = torch.cat([lin, trans.unsqueeze(-1)], dim=-1)  # (m, 2, 3)
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
        return views, batch.ctf

    def __repr__(self) -> str:
        return (
            f"CropFlipRotate(num_views={self.num_views}, flip_p={self.flip_p}, rot90={self.rot90}, "
            f"max_angle_deg={self.max_angle_deg}, crop_scale={self.crop_scale}, "
            f"crop_mode={self.crop_mode!r})"
        )
