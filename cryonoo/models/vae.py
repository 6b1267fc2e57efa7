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
* Lattice geometry (coordinates, masks, rotations, CTF, phases) is computed in float32 with
  autocast disabled; only the networks run in reduced precision under ``torch.autocast``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.models.decoders import DECODERS
from cryonoo.models.encoders import ENCODERS
from cryonoo.physics.ctf import ctf_from_params
from cryonoo.physics.lattice import check_odd_lattice, circular_mask, lattice_coords
from cryonoo.physics.shifts import shift_ht_points
from cryonoo.types import Batch, StepOutput

__all__ = ["HetVAE", "kl_divergence"]


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``mean_b −½ Σ_j (1 + logvar − mu² − exp(logvar))`` in float32 (KL to N(0, I))."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def _build(registry: Any, spec: Any, **kwargs: Any) -> nn.Module:
    """Build ``spec`` from ``registry`` passing only the keyword arguments its factory takes."""
    if not isinstance(spec, str):
        return spec
    factory = registry.get(spec)
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return registry.build(spec, **kwargs)


class HetVAE(nn.Module):
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
        super().__init__()
        self.D = check_odd_lattice(D)
        if isinstance(zdim, bool) or not isinstance(zdim, int) or zdim < 1:
            raise ValueError(f"zdim must be a positive integer, got {zdim!r}")
        self.zdim = zdim
        self.beta = 1.0 / zdim if beta is None else float(beta)
        r_enc = D // 2 if enc_mask_radius is None else enc_mask_radius
        if r_enc != -1 and not r_enc >= 0:
            raise ValueError(f"enc_mask_radius must be ≥ 0, -1 (no mask) or None, got {r_enc!r}")
        self._config = {
            "D": D, "zdim": zdim, "encoder": encoder, "decoder": decoder,
            "enc_layers": enc_layers, "enc_dim": enc_dim, "dec_layers": dec_layers,
            "dec_dim": dec_dim, "pe_type": pe_type, "pe_dim": pe_dim, "feat_sigma": feat_sigma,
            "activation": activation, "beta": beta, "enc_mask_radius": enc_mask_radius,
            "seed": seed,
        }  # fmt: skip

        loss_mask = circular_mask(D, D // 2)
        if r_enc == -1:
            enc_mask = torch.ones(D * D, dtype=torch.bool)
        else:
            enc_mask = circular_mask(D, float(r_enc))
        work = loss_mask | enc_mask  # point symmetric: translations act on this set
        coords = lattice_coords(D)
        self.n_pix = int(loss_mask.sum())
        self.n_enc = int(enc_mask.sum())
        self._buffer("_work_idx", work.nonzero()[:, 0])
        self._buffer("_freqs_w", coords[work, :2])
        self._buffer("_loss_pos", loss_mask[work].nonzero()[:, 0])
        self._buffer("_enc_pos", enc_mask[work].nonzero()[:, 0])
        self._buffer("_loss_idx", loss_mask.nonzero()[:, 0])
        self._buffer("_enc_idx", enc_mask.nonzero()[:, 0])
        self._buffer("_coords2", coords[loss_mask, :2])  # (Npix, 2); z = 0 on the lattice

        self.encoder = _build(
            ENCODERS, encoder, in_dim=self.n_enc, zdim=zdim, layers=enc_layers, dim=enc_dim,
            activation=activation, D=D,
        )  # fmt: skip
        self.decoder = _build(
            DECODERS, decoder, D=D, zdim=zdim, layers=dec_layers, dim=dec_dim,
            activation=activation, pe_type=pe_type, pe_dim=pe_dim, feat_sigma=feat_sigma, seed=seed,
        )  # fmt: skip
        if getattr(self.encoder, "zdim", zdim) != zdim:
            raise ValueError(f"encoder: built for zdim={self.encoder.zdim}, the model has {zdim}")
        if getattr(self.decoder, "zdim", zdim) != zdim:
            raise ValueError(f"decoder: built for zdim={self.decoder.zdim}, the model has {zdim}")
        self.input_kind = getattr(self.encoder, "input_kind", "points")
        self.check_finite = True  # one device sync per step to name a non-finite term

    def _buffer(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value, persistent=False)

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: Tensor) -> int:
        if not isinstance(images, Tensor) or images.ndim != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, D, D) Hartley images, got {shape}")
        d = images.shape[-1]
        if tuple(images.shape[1:]) != (self.D, self.D):
            raise ValueError(
                f"images: the model was built for D={self.D} ({self.D - 1}-px images); got "
                f"images of shape {tuple(images.shape)} (D={d}); build the model with D={d} "
                f"or resample the particles to {self.D - 1} px"
            )
        return images.shape[0]

    @staticmethod
    def _check(x: Tensor | None, name: str, shape: tuple[int, ...], hint: str) -> None:
        if x is not None and (not isinstance(x, Tensor) or tuple(x.shape) != shape):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape {shape} ({hint}), got {got}")

    # ------------------------------------------------------------- pipeline
    def _autocast_off(self) -> torch.autocast:
        return torch.autocast(device_type=self._freqs_w.device.type, enabled=False)

    def _prepare(
        self, images: Tensor, ctf: Tensor | None, trans: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """→ translated values on the work set ``(B, Nw)`` and the CTF there (or ``None``)."""
        b = self._check_images(images)
        self._check(ctf, "ctf", (b, 8), "[Apix, dfu, dfv, dfang, kV, cs, w, phase] per image")
        self._check(trans, "trans", (b, 2), "shifts (tx, ty) in pixels per image")
        with self._autocast_off():
            y = images.reshape(b, -1).float().index_select(1, self._work_idx)
            if trans is not None:
                y = shift_ht_points(y, self._freqs_w, trans.float(), validate=False)
            c = None
            if ctf is not None:
                c = ctf_from_params(self._freqs_w, ctf.float(), validate=False)
        return y, c

    def _encode_prepared(self, y: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        x = y if c is None else y * torch.sign(c)
        x = x.index_select(1, self._enc_pos)
        if self.input_kind == "image":
            x = x.new_zeros(x.shape[0], self.D * self.D).index_copy(1, self._enc_idx, x)
            x = x.reshape(-1, self.D, self.D)
        mu, logvar = self.encoder(x)
        return mu.float(), logvar.float()

    def _slice_coords(self, rot: Tensor) -> Tensor:
        with self._autocast_off():  # (Npix, 2) @ (B, 2, 3): z = 0, so only R's first rows
            return torch.einsum("nj,bjk->bnk", self._coords2, rot[:, :2].float())

    def _decode(self, z: Tensor, rot: Tensor, c: Tensor | None) -> Tensor:
        """``(B, Npix)`` CTF-modulated decoded values at the loss-mask points."""
        pred = self.decoder(self._slice_coords(rot), z, validate=False).float()
        return pred if c is None else pred * c

    def _to_image(self, values: Tensor) -> Tensor:
        out = values.new_zeros(values.shape[0], self.D * self.D)
        return out.index_copy(1, self._loss_idx, values).reshape(-1, self.D, self.D)

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

        Returns ``StepOutput(loss, z=mu, terms={"recon", "kld", "loss"}, render=(B, D, D))``.
        """
        b = self._check_images(batch.images)
        self._check(batch.rot, "batch.rot", (b, 3, 3), "rotation matrices")
        y, c = self._prepare(batch.images, batch.ctf, batch.trans)
        mu, logvar = self._encode_prepared(y, c)
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
        self, images: Tensor, ctf: Tensor | None = None, trans: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(B, D, D)`` → ``(mu, logvar)``, each ``(B, zdim)``, with training's preprocessing."""
        return self._encode_prepared(*self._prepare(images, ctf, trans))

    def encode(
        self, images: Tensor, ctf: Tensor | None = None, trans: Tensor | None = None
    ) -> Tensor:
        """``(B, D, D)`` → ``(B, zdim)`` posterior means (translation, phase flip, mask)."""
        return self.encode_distribution(images, ctf, trans)[0]

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None) -> Tensor:
        """``(B, zdim)``, ``(B, 3, 3)``, ``(B, 8)|None`` → ``(B, D, D)`` CTF-modulated decoded
        Hartley images, zero outside the loss mask."""
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.zdim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (B, {self.zdim}) (zdim={self.zdim}), got {got}")
        b = z.shape[0]
        self._check(rot, "rot", (b, 3, 3), "one rotation matrix per latent")
        self._check(ctf, "ctf", (b, 8), "[Apix, dfu, dfv, dfang, kV, cs, w, phase] per latent")
        c = None
        if ctf is not None:
            with self._autocast_off():
                c = ctf_from_params(self._coords2, ctf.float(), validate=False)
        return self._to_image(self._decode(z, rot, c))

    def volume(self, z: Tensor | None, norm_std: float = 1.0) -> Tensor:
        """Real-space ``(box, box, box)`` map ``[z, y, x]`` for one latent ``(zdim,)``."""
        if isinstance(z, Tensor) and z.shape[-1] != self.zdim:
            raise ValueError(f"z must have shape ({self.zdim},) (zdim), got {tuple(z.shape)}")
        return self.decoder.volume(z, self.D, norm_std)

    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments (JSON-serializable): ``HetVAE(**model.config())``."""
        for key in ("encoder", "decoder"):
            if not isinstance(self._config[key], str):
                raise TypeError(
                    f"config(): the {key} was given as an object; register it in "
                    f"{key.upper()}S and pass its name to rebuild the model from a config"
                )
        return dict(self._config)
