"""The autodecoder baseline (cryoDRGN-AI style): one learned latent per training image, no encoder.

Same decoder family, lattice, loss mask and CTF handling as :class:`~cryonoo.models.vae.HetVAE`
(shared through :class:`~cryonoo.models.base.LatticeModel`); where the VAE *infers* a latent with
an encoder pass, the autodecoder *optimizes* one:

* Training: ``self.embedding`` is an ``nn.Embedding(n_images, zdim)`` indexed by
  ``Batch.index`` (positions of the images in the training subset, as ``ParticleDataset``
  serves them), initialized ``N(0, init_std²)`` from a generator seeded with ``seed``. Per batch::

      recon = mean_{b,k} (CTF·Ĥ(z_b) − Y)²          (the VAE's masked MSE, Npix points)
      prior = mean_b |z_b|²
      loss  = recon + latent_l2 · prior              (a Gaussian prior on the latents)

  The latents usually need a larger learning rate than the decoder (each is updated once per
  epoch): :meth:`param_groups` gives the two groups.
* New images (``encode``/``fit_latents``): test-time optimization. The decoder is frozen (no
  gradient, parameters untouched), latents start at zero (or are drawn from a generator, or at
  the training mean) and Adam minimizes, for every image independently but batched,
  ``mean_k (CTF·Ĥ(z) − Y)² + latent_l2·|z|²`` for ``steps`` steps (the fitting every
  :class:`~cryonoo.models.base.LatticeModel` shares, :mod:`cryonoo.models.refine`, with
  :meth:`AutoDecoder.latent_prior`). This needs the poses, so ``encode`` without ``rot`` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.models.base import LatticeModel
from cryonoo.models.encoders import check_int
from cryonoo.types import Batch, StepOutput

__all__ = ["FIT_INITS", "AutoDecoder"]

#: how :meth:`AutoDecoder.fit_latents` starts the latents of new images
FIT_INITS = ("zeros", "random", "mean")


def _positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


class AutoDecoder(LatticeModel):
    """Implicit decoder + a table of per-image latents (see the module docstring).

    Parameters
    ----------
    D:
        Odd lattice size (``box + 1``).
    n_images:
        Number of training images (rows of the latent table).
    zdim:
        Latent width.
    decoder, dec_layers, dec_dim, pe_type, pe_dim, feat_sigma, activation, seed:
        The decoder, exactly as for :class:`~cryonoo.models.vae.HetVAE`; ``seed`` also seeds the
        latent table's initialization.
    latent_l2:
        Weight of the ``|z|²`` prior (0 turns it off), in units of the per-pixel MSE.
    init_std:
        Standard deviation of the initial training latents (and of ``init="random"`` fits).
    fit_steps, fit_lr:
        Default Adam steps and learning rate of :meth:`fit_latents`.
    """

    def __init__(
        self,
        D: int,
        n_images: int,
        zdim: int = 8,
        decoder: str | nn.Module = "fourier",
        dec_layers: int = 3,
        dec_dim: int = 1024,
        pe_type: str = "gaussian",
        pe_dim: int | None = None,
        feat_sigma: float = 0.5,
        activation: str = "relu",
        latent_l2: float = 1e-3,
        init_std: float = 0.01,
        fit_steps: int = 50,
        fit_lr: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__(D, zdim)
        if n_images is None:
            raise ValueError(
                "n_images is required: an autodecoder learns one latent per training image; "
                "pass the size of the training subset"
            )
        self.n_images = check_int(n_images, "n_images", 1)
        self.latent_l2 = _positive_float(latent_l2, "latent_l2", allow_zero=True)
        self.init_std = _positive_float(init_std, "init_std", allow_zero=True)
        self.fit_steps = check_int(fit_steps, "fit_steps", 0)
        self.fit_lr = _positive_float(fit_lr, "fit_lr")
        self._config = {
            "D": D, "n_images": n_images, "zdim": zdim, "decoder": decoder,
            "dec_layers": dec_layers, "dec_dim": dec_dim, "pe_type": pe_type, "pe_dim": pe_dim,
            "feat_sigma": feat_sigma, "activation": activation, "latent_l2": latent_l2,
            "init_std": init_std, "fit_steps": fit_steps, "fit_lr": fit_lr, "seed": seed,
        }  # fmt: skip
        self._build_decoder(
            decoder, layers=dec_layers, dim=dec_dim, activation=activation, pe_type=pe_type,
            pe_dim=pe_dim, feat_sigma=feat_sigma, seed=seed,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(int(seed))
        table = torch.randn(self.n_images, zdim, generator=gen) * self.init_std
        self.embedding = nn.Embedding(self.n_images, zdim, _weight=table)

    # ------------------------------------------------------------- training
    def param_groups(self, latent_lr: float | None = None) -> list[dict[str, Any]]:
        """Adam parameter groups: the decoder (optimizer's lr) and the latents (``latent_lr``;
        ``None`` → the optimizer's lr), the latents without weight decay."""
        latents: dict[str, Any] = {"params": [self.embedding.weight], "weight_decay": 0.0}
        if latent_lr is not None:
            latents["lr"] = _positive_float(latent_lr, "latent_lr")
        return [{"params": list(self.decoder.parameters())}, latents]

    def latent_table(self) -> Tensor:
        """``(n_images, zdim)`` float32 learned latents of the training images (detached)."""
        return self.embedding.weight.detach().float()

    def latent_prior(self, z: Tensor) -> Tensor:
        """``(B,)`` float32 ``latent_l2 · |z_b|²``: the prior of training and of test-time fits,
        in units of the per-pixel MSE."""
        return self.latent_l2 * z.float().pow(2).sum(dim=1)

    def forward(self, batch: Batch) -> StepOutput:
        """The training step (so the model can sit inside ``DistributedDataParallel``)."""
        return self.training_step(batch)

    def training_step(self, batch: Batch) -> StepOutput:
        """Masked MSE of the batch's latents plus the prior (module docstring).

        Returns ``StepOutput(loss, z, terms={"recon", "prior", "loss"}, render=(B, D, D))``.
        """
        b = self._check_images(batch.images)
        self._check(batch.rot, "batch.rot", (b, 3, 3), "rotation matrices")
        index = batch.index
        if index is None:
            raise ValueError(
                "batch.index is None: an autodecoder needs the position of every image in the "
                "training subset to look up its latent (ParticleDataset batches carry it)"
            )
        if bool(((index < 0) | (index >= self.n_images)).any()):
            raise ValueError(
                f"batch.index must lie in [0, {self.n_images}) (positions in the training "
                f"subset of {self.n_images} images), got values in "
                f"[{int(index.min())}, {int(index.max())}]; train on the subset the model was "
                "built for"
            )
        y, c = self._prepare(batch.images, batch.ctf, batch.trans)  # work set = loss mask
        z = self.embedding(index.long())
        pred = self._decode(z, batch.rot, c)
        recon = F.mse_loss(pred, y)
        prior = z.float().pow(2).sum(dim=1).mean()
        loss = recon + self.latent_prior(z).mean()
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise RuntimeError(
                f"non-finite loss: recon={float(recon.detach())}, prior={float(prior.detach())}; "
                "lower the learning rates or check the data normalization"
            )
        terms = {"recon": recon.detach(), "prior": prior.detach(), "loss": loss.detach()}
        return StepOutput(loss=loss, z=z, terms=terms, render=self._to_image(pred))

    # ------------------------------------------------------------- inference
    def _initial_latents(self, b: int, init: str, generator: torch.Generator | None) -> Tensor:
        device = self._coords2.device
        if init == "zeros":
            return torch.zeros(b, self.zdim, device=device)
        if init == "mean":
            return self.latent_table().mean(0, keepdim=True).expand(b, -1).clone()
        if init == "random":
            gen_device = generator.device if generator is not None else torch.device("cpu")
            z = torch.randn(b, self.zdim, generator=generator, device=gen_device)
            return (z * self.init_std).to(device)
        raise ValueError(f"init must be one of {FIT_INITS}, got {init!r}")

    def fit_latents(
        self,
        images: Tensor,
        rot: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        generator: torch.Generator | None = None,
        *,
        init: str = "zeros",
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> Tensor:
        """Test-time optimization: ``(B, D, D)`` images with known poses → ``(B, zdim)`` latents.

        ``rot`` is ``(B, 3, 3)``, ``trans`` ``(B, 2)`` pixels, ``ctf`` ``(B, 8)``; every tensor
        on the model's device. :meth:`refine_latents` (the shared
        :func:`cryonoo.models.refine.fit_latents`) with this model's prior: the decoder is frozen
        (its parameters and ``.grad`` are left as they were); Adam (``lr``, default ``fit_lr``)
        runs ``steps`` (default ``fit_steps``) steps on all images at once, each image's loss
        independent of the others. ``init`` is ``"zeros"``, ``"random"`` (``N(0, init_std²)``
        from ``generator``) or ``"mean"`` (the training latents' mean). ``on_step(k, z)`` is
        called with a copy of the latents after step ``k`` (1-based; e.g. to record several
        budgets in one run). Works under ``torch.no_grad()``.
        """
        steps = self.fit_steps if steps is None else check_int(steps, "steps", 0)
        lr = self.fit_lr if lr is None else _positive_float(lr, "lr")
        b = self._check_images(images)
        with torch.no_grad():
            z0 = self._initial_latents(b, init, generator)
        return self.refine_latents(
            images, rot, ctf, trans, z0=z0, steps=steps, lr=lr, on_step=on_step
        )

    def encode(
        self,
        images: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        *,
        rot: Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(B, D, D)`` → ``(B, zdim)`` latents by :meth:`fit_latents`; needs ``rot``."""
        if rot is None:
            raise ValueError(
                "AutoDecoder.encode needs the poses: an autodecoder has no encoder, its latents "
                "are found by test-time optimization against the decoder's projections at each "
                "image's pose; pass rot=(B, 3, 3) (and trans, ctf) or call fit_latents"
            )
        return self.fit_latents(images, rot, ctf, trans, steps, lr, generator)

    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments (JSON-serializable): ``AutoDecoder(**config())``."""
        if not isinstance(self._config["decoder"], str):
            raise TypeError(
                "config(): the decoder was given as an object; register it in DECODERS and "
                "pass its name to rebuild the model from a config"
            )
        return dict(self._config)
