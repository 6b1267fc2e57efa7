"""Self-distillation: make any reconstruction autoencoder's encoder noise-invariant.

:class:`SelfDistillation` wraps a :class:`~cryonoo.types.ReconstructionModel` (CryoNOO,
"Separating signal from noise: a self-distillation approach for amortized heterogeneous cryo-EM
reconstruction"). For epochs ``< warmup_epochs`` its ``training_step`` is exactly the model's.
Afterwards, per batch of ``B`` images::

    step        = model.training_step(batch)                 # loss, z0 = step.z, step.render
    views, ctf  = augmenter(batch, model, step, generator)   # (J, B, D, D), (B, 8) | None
    z_views     = model.encode(views.reshape(J·B, D, D), ctf.repeat(J, 1))   # ONE encoder call
    ssl         = Σ_j objective(z0, z_views[j])["loss"]   # z0 through the heads once
    loss        = step.loss + weight · ssl

With the defaults (``vicreg`` objective, ``reproject-noise`` augmenter, weight 0.3, 10 warm-up
epochs, noise factors 0.5, 1, 1.5 of the data's σ) this is the paper's objective
``L_VAE + λ Σ_j L_VICReg(z0, z_j)``. Nothing here is specific to a VAE: the wrapper only uses
``training_step``, ``encode`` and ``render``.

Logged terms (detached) gain ``ssl/loss`` (the sum over views, before ``weight``), one
``ssl/<term>`` per objective term (the **mean** over the J views, so monitors such as ``std``
keep their scale) and ``ssl/skipped`` (1 when the batch had fewer than 2 images).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import Tensor, nn

from cryonoo.ssl.augment import AUGMENTERS
from cryonoo.ssl.objectives import SSL
from cryonoo.types import Augmenter, Batch, ReconstructionModel, SSLObjective, StepOutput

__all__ = ["SelfDistillation"]

logger = logging.getLogger(__name__)


def _accepted(factory: Any) -> set[str] | None:
    """Keyword names a factory accepts (``None`` if it takes ``**kwargs``)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _infer_zdim(model: nn.Module) -> int:
    for owner in (model, getattr(model, "encoder", None)):
        zdim = getattr(owner, "zdim", None)
        if isinstance(zdim, int):
            return zdim
    raise ValueError(
        "cannot infer the latent width: pass zdim=… (or give the model a `zdim` attribute)"
    )


class SelfDistillation(nn.Module):
    """Wrap a reconstruction model with an SSL term on augmented views of its own rendering.

    Parameters
    ----------
    model:
        Any ``nn.Module`` implementing :class:`~cryonoo.types.ReconstructionModel`.
    objective:
        A name in :data:`cryonoo.ssl.objectives.SSL` or a built objective module.
    augmenter:
        A name in :data:`cryonoo.ssl.augment.AUGMENTERS` or a callable augmenter.
    weight:
        λ multiplying ``Σ_j objective(z0, z_j)`` (0.3 in CryoNOO).
    warmup_epochs:
        Epochs of plain model training before the SSL term starts (``N = 10`` in CryoNOO).
    decoder_freeze:
        After warm-up, set ``requires_grad = False`` on the wrapped model's parameters whose
        name (as in ``model.named_parameters()``) starts with ``decoder_prefix``. This assumes
        the model keeps its decoder in an attribute of that name; a model whose names do not
        match raises ``ValueError`` rather than silently freezing nothing.
    detach_target:
        Stop the SSL gradient at the original image's latent ``z0`` (the anchor): the term
        then trains the encoder only through the views, to map re-noised renderings onto the
        latent of the real image, and cannot pull ``z0`` itself toward the (initially blurry,
        conformation-poor) renderings. Off by default (the symmetric VICReg of the paper).
    decoder_prefix:
        Parameter-name prefix of the decoder (default ``"decoder"``).
    zdim:
        Latent width for building a named objective; default ``model.zdim`` or
        ``model.encoder.zdim``.
    objective_kwargs, augmenter_kwargs:
        Keyword arguments for the named objective / augmenter factories.
    **kwargs:
        Further keyword arguments, routed to whichever factory accepts them (e.g. ``sigma`` and
        ``noise_factors`` to the augmenter, ``head`` to the objective).
    """

    def __init__(
        self,
        model: ReconstructionModel,
        objective: str | SSLObjective = "vicreg",
        augmenter: str | Augmenter = "reproject-noise",
        weight: float = 0.3,
        warmup_epochs: int = 10,
        decoder_freeze: bool = False,
        zdim: int | None = None,
        *,
        detach_target: bool = False,
        decoder_prefix: str = "decoder",
        objective_kwargs: dict[str, Any] | None = None,
        augmenter_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(model, ReconstructionModel):
            raise TypeError(
                "model must be an nn.Module with training_step(batch), encode(images, ctf) and "
                f"render(z, rot, ctf) (see cryonoo.types.ReconstructionModel); got {type(model)!r}"
            )
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be ≥ 0, got {warmup_epochs}")
        self.model = model
        obj_kw, aug_kw = dict(objective_kwargs or {}), dict(augmenter_kwargs or {})
        obj_names = _accepted(SSL.get(objective)) if isinstance(objective, str) else set()
        aug_names = _accepted(AUGMENTERS.get(augmenter)) if isinstance(augmenter, str) else set()
        for key, value in kwargs.items():
            to_obj = obj_names is None or key in obj_names
            to_aug = aug_names is None or key in aug_names
            if to_obj == to_aug:
                problem = "is accepted by both" if to_obj else "is accepted by neither"
                raise TypeError(
                    f"keyword {key!r} {problem} the objective and the augmenter; "
                    "use objective_kwargs= / augmenter_kwargs="
                )
            (obj_kw if to_obj else aug_kw)[key] = value
        if isinstance(objective, str):
            in_dim = zdim if zdim is not None else _infer_zdim(model)
            objective = SSL.build(objective, in_dim=in_dim, **obj_kw)
        elif obj_kw:
            raise TypeError(f"objective keywords {sorted(obj_kw)} given with a built objective")
        if isinstance(augmenter, str):
            augmenter = AUGMENTERS.build(augmenter, **aug_kw)
        elif aug_kw:
            raise TypeError(f"augmenter keywords {sorted(aug_kw)} given with a built augmenter")
        if not callable(objective) or not callable(augmenter):
            raise TypeError("objective and augmenter must be callable")
        self.objective = objective
        self.augmenter = augmenter
        self.weight = float(weight)
        self.warmup_epochs = int(warmup_epochs)
        self.decoder_freeze = bool(decoder_freeze)
        self.detach_target = bool(detach_target)
        self.decoder_prefix = decoder_prefix
        self.epoch = 0
        self._frozen: list[str] = []
        self._warned_small = False
        if self.decoder_freeze and not self.decoder_parameter_names():
            raise ValueError(
                f"decoder_freeze=True but no parameter of the model starts with "
                f"{decoder_prefix!r}; set decoder_prefix="
            )

    # ------------------------------------------------------------------ schedule
    @property
    def active(self) -> bool:
        """Whether the SSL term is on (``epoch ≥ warmup_epochs``)."""
        return self.epoch >= self.warmup_epochs

    def decoder_parameter_names(self) -> list[str]:
        """Names of the wrapped model's parameters that ``decoder_freeze`` acts on."""
        return [n for n, _ in self.model.named_parameters() if n.startswith(self.decoder_prefix)]

    def set_epoch(self, epoch: int) -> None:
        """Tell the wrapper the current (0-based) epoch; applies or lifts the decoder freeze."""
        self.epoch = int(epoch)
        params = dict(self.model.named_parameters())
        if self.decoder_freeze and self.active and not self._frozen:
            for name in self.decoder_parameter_names():
                if params[name].requires_grad:
                    params[name].requires_grad_(False)
                    self._frozen.append(name)
        elif not self.active and self._frozen:
            for name in self._frozen:
                params[name].requires_grad_(True)
            self._frozen = []

    # ------------------------------------------------------------------ protocol
    def encode(self, images: Tensor, ctf: Tensor | None = None) -> Tensor:
        """The wrapped model's ``encode``."""
        return self.model.encode(images, ctf)

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None) -> Tensor:
        """The wrapped model's ``render``."""
        return self.model.render(z, rot, ctf)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> StepOutput:
        """Same as :meth:`training_step` (so the wrapper can sit inside DDP)."""
        return self.training_step(batch, generator)

    def training_step(self, batch: Batch, generator: torch.Generator | None = None) -> StepOutput:
        """The model's step, plus ``weight · Σ_j objective(z0, z_j)`` after warm-up."""
        step = self.model.training_step(batch)
        if not self.active:
            return step
        n_img = len(batch)
        if n_img < 2:
            if not self._warned_small:
                logger.warning(
                    "self-distillation skipped on a batch of %d image(s): the SSL objective "
                    "needs at least 2 (use drop_last=True); further skips are not logged",
                    n_img,
                )
                self._warned_small = True
            zero = torch.zeros((), device=step.loss.device)
            terms = {**step.terms, "ssl/loss": zero, "ssl/skipped": torch.ones_like(zero)}
            return StepOutput(loss=step.loss, z=step.z, terms=terms, render=step.render)

        views, ctf = self.augmenter(batch, self.model, step, generator)
        if views.ndim != 4 or views.shape[1:] != batch.images.shape:
            raise ValueError(
                f"augmenter returned views of shape {tuple(views.shape)}, expected "
                f"(J, {', '.join(map(str, batch.images.shape))})"
            )
        n_views, size = views.shape[0], views.shape[-1]
        flat_ctf = None if ctf is None else ctf.repeat(n_views, 1)
        z_views = self.model.encode(views.reshape(n_views * n_img, size, size), flat_ctf)
        z_views = z_views.reshape(n_views, n_img, -1)

        # the original image's latent is the anchor; detached, the SSL gradient reaches the
        # encoder only through the views (robustness) and cannot erase z0's information
        target = step.z.detach() if self.detach_target else step.z
        total: Tensor | None = None
        sums: dict[str, Tensor] = {}
        for out in self._score_views(target, z_views):
            total = out["loss"] if total is None else total + out["loss"]
            for key, value in out.items():
                if key != "loss":
                    v = value.detach()
                    sums[key] = v if key not in sums else sums[key] + v
        assert total is not None
        terms = dict(step.terms)
        terms["ssl/loss"] = total.detach()
        terms.update({f"ssl/{k}": v / n_views for k, v in sums.items()})
        terms.setdefault("ssl/skipped", torch.zeros((), device=total.device))
        loss = step.loss + self.weight * total
        return StepOutput(loss=loss, z=step.z, terms=terms, render=step.render)

    def _score_views(self, target: Tensor, z_views: Tensor) -> list[dict[str, Tensor]]:
        """``objective(z0, z_j)`` for every view; the anchor is embedded once when the
        objective offers ``forward_views`` (every registered one does)."""
        many = getattr(self.objective, "forward_views", None)
        if callable(many):
            return many(target, z_views)
        return [self.objective(target, z_j) for z_j in z_views]  # J is small (1–3)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, warmup_epochs={self.warmup_epochs}, "
            f"decoder_freeze={self.decoder_freeze}, detach_target={self.detach_target}, "
            f"augmenter={self.augmenter!r}"
        )
