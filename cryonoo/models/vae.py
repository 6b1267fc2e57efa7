"""The cryoDRGN-style heterogeneous VAE (``HetOnlyVAE``) as a :class:`ReconstructionModel`.

Conventions (cryoDRGN's ``train_vae``; pinned by ``tests/unit/test_models_*.py``):

* Images are ``(B, D, D)`` normalized symmetrized Hartley images on the odd lattice
  (``D = box + 1``); shifts are ``(B, 2)`` pixels ``(tx, ty)``; CTF rows are ``(B, 8)``
  ``[Apix, dfu, dfv, dfang, kV, Cs, w, phase]``; rotations ``(B, 3, 3)`` act as ``coords @ R``.
* Loss mask: disk of radius ``D // 2`` lattice pixels (|k| ≤ 0.5 cycles/px) without DC, ``Npix``
  points. Encoder mask: disk of radius ``enc_mask_radius`` (default ``D // 2``) without DC, or the
  whole lattice for ``enc_mask_radius = -1``.
* Per batch: the observed image is translated by ``+trans`` (content moves by ``+t``); the
  encoder sees ``y · sign(CTF)`` at the encoder-mask points; ``z = mu + ε·exp(½ logvar)`` in
  training mode (``mu`` in eval mode); the decoder is evaluated at ``coords[mask] @ R`` and
  multiplied by the CTF::

      recon = mean_{b,k} (CTF·Ĥ − Y)²
      kld   = mean_b −½ Σ_j (1 + logvar − mu² − exp(logvar))
      loss  = recon + beta · kld / Npix          (beta defaults to 1/zdim)

* Without CTF (``ctf=None``) there is no phase flip and no CTF multiplication.
* A pose-conditioned encoder (``needs_pose = True``, e.g. ``pose-mlp``) also gets the image's
  ``(B, 3, 3)`` pose ``R`` (the one the decoder renders it at): ``encoder(x, R)``. Other encoders
  never see it, so ``encode(…, rot=R)`` is bit-identical to ``encode(…)`` for them.
* Semi-amortized inference (:meth:`HetVAE.refine`): the posterior mean, then Adam steps on each
  image's point objective ``recon_i + beta · ½|z_i|² / Npix`` against the frozen decoder at the
  image's pose (:mod:`cryonoo.models.refine`).
* Lattice geometry (coordinates, masks, rotations, CTF, phases) is computed in float32 with
  autocast disabled; only the networks run in reduced precision under ``torch.autocast``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.models.base import LatticeModel
from cryonoo.models.encoders import ENCODERS, check_int
from cryonoo.models.refine import REFINE_LR, REFINE_STEPS, OnStep, frozen
from cryonoo.physics.lattice import check_odd_lattice, circular_mask
from cryonoo.types import Batch, StepOutput

__all__ = ["HetVAE", "kl_divergence"]


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``mean_b −½ Σ_j (1 + logvar − mu² − exp(logvar))`` in float32 (KL to N(0, I))."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass; its gradient times ``scale`` in the backward pass."""
    if float(scale) == 0.0:
        return x.detach()
    return x.detach() + float(scale) * (x - x.detach())


class HetVAE(LatticeModel):
    """Amortized heterogeneous VAE: any registered encoder + implicit decoder.

    Parameters
    ----------
    D:
        Odd lattice size (``box + 1``, e.g. 65 for 64-px images).
    zdim:
        Latent width.
    encoder, decoder:
        Names in ``ENCODERS``/``DECODERS`` or already-built modules.
    enc_layers, enc_dim, dec_layers, dec_dim:
        Hidden layers and widths of the encoder and decoder networks.
    pe_type, pe_dim, feat_sigma, seed:
        Decoder positional encoding (name in ``POSITIONAL``, ``enc_dim``, Gaussian scale, seed).
    activation:
        Activation name for both networks.
    beta:
        KL weight; ``None`` → ``1 / zdim``.
    enc_mask_radius:
        Encoder-mask radius in lattice pixels; ``None`` → ``D // 2``; ``-1`` → whole lattice.
    """

    def __init__(
        self,
        D: int,
        zdim: int = 8,
        encoder: str | nn.Module = "resid-mlp",
        decoder: str | nn.Module = "fourier",
        enc_layers: int = 3,
        enc_dim: int = 1024,
        dec_layers: int = 3,
        dec_dim: int = 1024,
        pe_type: str = "gaussian",
        pe_dim: int | None = None,
        feat_sigma: float = 0.5,
        activation: str = "relu",
        beta: float | None = None,
        enc_mask_radius: float | None = None,
        seed: int = 0,
    ) -> None:
        check_odd_lattice(D)
        check_int(zdim, "zdim", 1)
        r_enc = D // 2 if enc_mask_radius is None else enc_mask_radius
        if r_enc != -1 and not r_enc >= 0:
            raise ValueError(f"enc_mask_radius must be ≥ 0, -1 (no mask) or None, got {r_enc!r}")
        if r_enc == -1:
            enc_mask = torch.ones(D * D, dtype=torch.bool)
        else:
            enc_mask = circular_mask(D, float(r_enc))
        super().__init__(D, zdim, extra_mask=enc_mask)
        self.beta = 1.0 / zdim if beta is None else float(beta)
        self._config = {
            "D": D, "zdim": zdim, "encoder": encoder, "decoder": decoder,
            "enc_layers": enc_layers, "enc_dim": enc_dim, "dec_layers": dec_layers,
            "dec_dim": dec_dim, "pe_type": pe_type, "pe_dim": pe_dim, "feat_sigma": feat_sigma,
            "activation": activation, "beta": beta, "enc_mask_radius": enc_mask_radius,
            "seed": seed,
        }  # fmt: skip
        self.n_enc = int(enc_mask.sum())
        self._buffer("_enc_pos", enc_mask[self._work_idx].nonzero()[:, 0])
        self._buffer("_enc_idx", enc_mask.nonzero()[:, 0])

        self.encoder = ENCODERS.build_accepted(
            encoder, in_dim=self.n_enc, zdim=zdim, layers=enc_layers, dim=enc_dim,
            activation=activation, D=D,
        )  # fmt: skip
        self._build_decoder(
            decoder, layers=dec_layers, dim=dec_dim, activation=activation, pe_type=pe_type,
            pe_dim=pe_dim, feat_sigma=feat_sigma, seed=seed,
        )  # fmt: skip
        if getattr(self.encoder, "zdim", zdim) != zdim:
            raise ValueError(f"encoder: built for zdim={self.encoder.zdim}, the model has {zdim}")
        self.input_kind = getattr(self.encoder, "input_kind", "points")
        #: how much of the training loss's gradient reaches the encoder: ``True``/1 all of it,
        #: ``False``/0 none (the decoder learns from detached latents), a float in between
        #: scales it (the forward pass is unchanged); set by SelfDistillation after warm-up
        self.latent_grad: bool | float = True

    @property
    def needs_pose(self) -> bool:
        """Whether the encoder is conditioned on the pose (``encode`` then needs ``rot``)."""
        return bool(getattr(self.encoder, "needs_pose", False))

    # ------------------------------------------------------------- pipeline
    def _encode_prepared(
        self, y: Tensor, c: Tensor | None, rot: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x = y if c is None else torch.sign(c).mul_(y)
        if self._enc_pos.numel() != x.shape[1]:  # else the encoder sees the whole work set
            x = x.index_select(1, self._enc_pos)
        if self.input_kind == "image":
            x = x.new_zeros(x.shape[0], self.D * self.D).index_copy(1, self._enc_idx, x)
            x = x.reshape(-1, self.D, self.D)
        if self.needs_pose:
            if rot is None:
                raise ValueError(
                    f"the encoder ({type(self.encoder).__name__}) is conditioned on the pose: "
                    "pass rot=(B, 3, 3) rotations (the images' poses, batch.rot) to encode"
                )
            mu, logvar = self.encoder(x, rot)
        else:
            mu, logvar = self.encoder(x)
        return mu.float(), logvar.float()

    def forward(self, batch: Batch) -> StepOutput:
        """The training step (so the model can sit inside ``DistributedDataParallel``)."""
        return self.training_step(batch)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """``mu + ε·exp(½ logvar)`` in training mode, ``mu`` in eval mode."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    # ------------------------------------------------------------- protocol
    def training_step(self, batch: Batch) -> StepOutput:
        """cryoDRGN's ``run_batch`` + ``loss_function`` on ``batch``.

        The encoder sees ``batch.encoder_images`` when given (the reconstruction target is
        always ``batch.images``). Returns ``StepOutput(loss, z=mu, terms={"recon", "kld",
        "loss"}, render=(B, D, D))``.
        """
        b = self._check_images(batch.images)
        self._check(batch.rot, "batch.rot", (b, 3, 3), "rotation matrices")
        y, c = self._prepare(batch.images, batch.ctf, batch.trans)
        y_enc = y
        if batch.encoder_images is not None:  # e.g. a re-noised copy; the target stays y
            y_enc, _ = self._prepare(batch.encoder_images, None, batch.trans)
        mu, logvar = self._encode_prepared(y_enc, c, batch.rot)
        if float(self.latent_grad) != 1.0:
            mu, logvar = _scale_grad(mu, self.latent_grad), _scale_grad(logvar, self.latent_grad)
        z = self.reparameterize(mu, logvar)
        c_loss = None if c is None else c.index_select(1, self._loss_pos)
        pred = self._decode(z, batch.rot, c_loss)
        recon = F.mse_loss(pred, y.index_select(1, self._loss_pos))
        kld = kl_divergence(mu, logvar)
        loss = recon + self.beta * kld / self.n_pix
        if self.check_finite and not bool(torch.isfinite(torch.stack([kld, loss])).all()):
            bad = "kld" if not torch.isfinite(kld) else "loss (recon)"
            raise RuntimeError(
                f"non-finite {bad}: recon={float(recon.detach())}, kld={float(kld.detach())}; "
                "lower the learning rate, check the data normalization or disable AMP"
            )
        terms = {"recon": recon.detach(), "kld": kld.detach(), "loss": loss.detach()}
        return StepOutput(loss=loss, z=mu, terms=terms, render=self._to_image(pred))

    def encode_distribution(
        self,
        images: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        rot: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(B, D, D)`` → ``(mu, logvar)``, each ``(B, zdim)``, with training's preprocessing.

        Arguments as :meth:`encode`."""
        b = self._check_images(images)
        self._check(rot, "rot", (b, 3, 3), "rotation matrices, the images' poses")
        y, c = self._prepare(images, ctf, trans)
        return self._encode_prepared(y, c, rot)

    def encode(
        self,
        images: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        rot: Tensor | None = None,
    ) -> Tensor:
        """``(B, D, D)`` → ``(B, zdim)`` posterior means (translation, phase flip, mask).

        ``ctf`` is ``(B, 8)`` or ``None``; ``trans`` is ``(B, 2)`` shifts ``(tx, ty)`` in pixels
        (the images are translated by ``+trans`` before encoding) or ``None`` for centred
        images; ``rot`` is the ``(B, 3, 3)`` poses (cryoDRGN convention, ``coords @ rot``):
        required by a pose-conditioned encoder (:attr:`needs_pose`; ``ValueError`` without
        it), checked for shape and otherwise unused."""
        return self.encode_distribution(images, ctf, trans, rot)[0]

    def latent_prior(self, z: Tensor) -> Tensor:
        """``(B,)`` float32 ``beta · ½|z_b|² / Npix``: the prior of test-time refinement.

        The training objective's KL term with ``z`` a point estimate: the KL of a point mass to
        ``N(0, I)`` is not defined, so the prior's negative log density ``½|z|²`` (up to a
        constant) takes its place, with the same weight ``beta / Npix`` (per-pixel MSE units).
        """
        return self.beta * 0.5 * z.float().pow(2).sum(dim=1) / self.n_pix

    def refine(
        self,
        images: Tensor,
        rot: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        *,
        steps: int = REFINE_STEPS,
        lr: float = REFINE_LR,
        band: float | None = None,
        on_step: OnStep | None = None,
    ) -> Tensor:
        """Semi-amortized latents: ``(B, D, D)`` images at poses ``rot`` ``(B, 3, 3)`` (CTF
        ``(B, 8)``, shifts ``(B, 2)`` px) → ``(B, zdim)``: the posterior mean, then ``steps``
        Adam steps (learning rate ``lr``) of :meth:`refine_latents`, on the frequencies
        ``|k| ≤ band`` cycles/pixel only when ``band`` is given; ``steps=0`` → the mean."""
        with frozen(self), torch.no_grad():  # eval mode, as encode_dataset
            mu = self.encode(images, ctf, trans, rot)
        return self.refine_latents(
            images, rot, ctf, trans, z0=mu, steps=steps, lr=lr, band=band, on_step=on_step
        )

    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments (JSON-serializable): ``HetVAE(**model.config())``."""
        for key in ("encoder", "decoder"):
            if not isinstance(self._config[key], str):
                raise TypeError(
                    f"config(): the {key} was given as an object; register it in "
                    f"{key.upper()}S and pass its name to rebuild the model from a config"
                )
        return dict(self._config)
