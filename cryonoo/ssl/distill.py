"""Self-distillation: make any reconstruction autoencoder's encoder noise-invariant.

:class:`SelfDistillation` wraps a :class:`~cryonoo.types.ReconstructionModel` (CryoNOO,
"Separating signal from noise: a self-distillation approach for amortized heterogeneous cryo-EM
reconstruction"). For epochs ``< warmup_epochs`` its ``training_step`` is exactly the model's.
Afterwards, per batch of ``B`` images::

    step        = model.training_step(batch)                 # loss, z0 = step.z, step.render
    views, ctf  = augmenter(batch, model, step, generator)   # (J, B, D, D), (B, 8) | None
                  # (augmenter.make_views(…) when it has one: a Views, with the views' poses)
    z_views     = model.encode(views.reshape(J·B, D, D), ctf.repeat(J, 1))   # ONE encoder call
                  # (+ trans=batch.trans.repeat(J, 1) only if augmenter.views_need_trans)
                  # (+ rot=<the views' poses> only if model.needs_pose; see Poses below)
    ssl         = Σ_j objective(z0, z_views[j])["loss"]   # z0 through the heads once
    loss        = step.loss + weight · ssl

With the defaults (``vicreg`` objective, ``reproject-noise`` augmenter, weight 0.3, 10 warm-up
epochs, noise factors 0.5, 1, 1.5 of the data's σ) this is the paper's objective
``L_VAE + λ Σ_j L_VICReg(z0, z_j)``. Nothing here is specific to a VAE: the wrapper only uses
``training_step``, ``encode`` and ``render``.

Logged terms (detached) gain ``ssl/loss`` (the sum over views, before ``weight``), one
``ssl/<term>`` per objective term (the **mean** over the J views, so monitors such as ``std``
keep their scale) and ``ssl/skipped`` (1 when the batch had fewer than 2 images).

Translations: ``z0`` is encoded with the image's in-plane shift ``batch.trans`` (``(B, 2)``
pixels), i.e. of the centred particle. Every registered augmenter returns centred views — the
model's renderings are centred, and views of the input images are re-centred by the augmenter
*before* any geometric transform (see :mod:`cryonoo.ssl.augment`) — so the views are encoded
with no translation and models whose ``encode`` takes no ``trans`` keep working. A custom
augmenter whose views stay in the input images' frame declares ``views_need_trans = True``;
its views are then encoded with ``trans = batch.trans.repeat(J, 1)``, and a model whose
``encode`` cannot take ``trans`` raises ``TypeError`` instead of silently dropping the shift.

Poses: a model whose encoder is conditioned on the pose (``model.needs_pose``, e.g. a
:class:`~cryonoo.models.vae.HetVAE` with the ``pose-mlp`` encoder) gets every view's pose as
``rot=`` (``(J·B, 3, 3)``, view-major like the views): the augmenter's
:class:`~cryonoo.types.Views` ``rot`` from ``make_views`` — ``batch.rot`` for views at the
image's own pose (``reproject-noise``, ``noise``), the rendering poses for random-pose
renderings (``reproject-noise`` with ``pose="random"``, ``dream``), the in-plane-composed poses
for ``crop-flip-rotate``. A legacy augmenter (tuple only) gets ``batch.rot`` if it declares
``views_keep_pose = True`` and is refused otherwise (``ValueError``). The anchor (and the
teacher) are encoded with ``batch.rot``. Models without ``needs_pose`` are never given ``rot``.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from cryonoo.ssl.augment import AUGMENTERS, noisy_views
from cryonoo.ssl.objectives import MIN_SSL_BATCH, SSL, warn_small_batch
from cryonoo.types import Augmenter, Batch, ReconstructionModel, SSLObjective, StepOutput, Views

__all__ = ["SelfDistillation"]


def _takes_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` accepts a ``name=`` keyword (``True`` when it cannot be inspected)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind in keyword)
        for p in params
    )


def _takes_trans(fn: Any) -> bool:
    """Whether ``fn`` accepts a ``trans=`` keyword (``True`` when it cannot be inspected)."""
    return _takes_keyword(fn, "trans")


def _infer_zdim(model: nn.Module) -> int:
    for owner in (model, getattr(model, "encoder", None)):
        zdim = getattr(owner, "zdim", None)
        if isinstance(zdim, int):
            return zdim
    raise ValueError(
        "cannot infer the latent width: pass zdim=… (or give the model a `zdim` attribute)"
    )


def _check_views(out: Views, batch: Batch, z: Tensor) -> None:
    """Refuse an augmenter's :class:`Views` whose shapes do not fit ``batch`` and ``z``.

    Views of the batch's images are ``(J, B, D, D)``. Views that bring their own targets
    (``dream``) may be of any number ``M ≥ 1`` of latents: ``(J, M, D, D)`` with targets
    ``(M, zdim)`` and ``ctf`` ``(M, 8)``, so a recipe can dream for part of the batch only.
    """
    views, image_shape = out.views, tuple(batch.images.shape)
    if views.ndim != 4 or tuple(views.shape[2:]) != image_shape[1:]:
        raise ValueError(
            f"augmenter returned views of shape {tuple(views.shape)}, expected "
            f"(J, {', '.join(map(str, image_shape))})"
        )
    n_views = views.shape[1]
    if out.targets is None and n_views != image_shape[0]:
        raise ValueError(
            f"augmenter returned views of shape {tuple(views.shape)}, expected "
            f"(J, {', '.join(map(str, image_shape))}): one view per image unless it "
            "returns its own targets"
        )
    if out.targets is not None and tuple(out.targets.shape) != (n_views, z.shape[1]):
        raise ValueError(
            f"augmenter targets have shape {tuple(out.targets.shape)}, expected "
            f"({n_views}, {z.shape[1]}) (one latent per view column, zdim {z.shape[1]})"
        )
    if out.ctf is not None and tuple(out.ctf.shape) != (n_views, 8):
        raise ValueError(
            f"augmenter returned a CTF of shape {tuple(out.ctf.shape)}, expected ({n_views}, 8)"
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
    encoder_from_ssl_only:
        After warm-up, train the encoder by the SSL term alone (wake-sleep): the model's own
        loss then reaches the decoder through detached latents (the model must have a
        ``latent_grad`` switch, as :class:`~cryonoo.models.vae.HetVAE` does). With the
        ``dream`` augmenter this is the sleep phase of a Helmholtz machine: the encoder never
        fits the training images themselves, so it has nothing of theirs to memorize.
        Equivalent to ``encoder_model_grad=0``.
    encoder_model_grad:
        After warm-up, the weight (in [0, 1]) of the model's own loss in the encoder's
        gradient (the forward pass is unchanged; the decoder keeps the full gradient). 1: as
        during warm-up; 0: ``encoder_from_ssl_only``. In between the encoder still fits the
        training images, with less pull than the SSL term.
    anchor_noise:
        After warm-up, the model's own step encodes each training image with fresh real-space
        noise of std ``anchor_noise · σ`` added (``Batch.encoder_images``; σ is the augmenter's
        ``sigma``, the data's noise level), while it still reconstructs the image itself: the
        encoder cannot key a latent to one noise draw it sees every epoch. 0 (default): off.
    teacher_momentum:
        Encode the anchor with an exponential-moving-average copy of the model (the teacher,
        as in BYOL/DINO) instead of the model itself: after each step the teacher's parameters
        move to ``m·θ_teacher + (1 − m)·θ_model``. It starts as a copy of the model at the
        first SSL step (the end of warm-up) and receives no gradient. ``None`` (default): no
        teacher.
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
        encoder_from_ssl_only: bool = False,
        encoder_model_grad: float = 1.0,
        anchor_noise: float = 0.0,
        teacher_momentum: float | None = None,
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
        obj_names = SSL.accepts(objective) if isinstance(objective, str) else set()
        aug_names = AUGMENTERS.accepts(augmenter) if isinstance(augmenter, str) else set()
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
        self.encoder_from_ssl_only = bool(encoder_from_ssl_only)
        if not 0.0 <= encoder_model_grad <= 1.0:
            raise ValueError(f"encoder_model_grad must be in [0, 1], got {encoder_model_grad}")
        #: after warm-up, the weight of the model's own loss in the encoder's gradient
        self.encoder_model_grad = 0.0 if encoder_from_ssl_only else float(encoder_model_grad)
        if anchor_noise < 0:
            raise ValueError(f"anchor_noise must be ≥ 0, got {anchor_noise}")
        if anchor_noise and getattr(augmenter, "sigma", None) is None:
            raise ValueError(
                "anchor_noise needs the data's noise σ: use an augmenter that takes sigma "
                f"(dream, reproject-noise, noise); {augmenter!r} has none"
            )
        self.anchor_noise = float(anchor_noise)
        self.teacher: nn.Module | None = None
        if teacher_momentum is not None:
            if not 0 <= teacher_momentum < 1:
                raise ValueError(f"teacher_momentum must be in [0, 1), got {teacher_momentum}")
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
            self.register_buffer("teacher_started", torch.zeros((), dtype=torch.bool))
        self.teacher_momentum = teacher_momentum
        if self.encoder_model_grad != 1.0 and not hasattr(model, "latent_grad"):
            raise ValueError(
                "encoder_from_ssl_only=True / encoder_model_grad < 1 need a model with a "
                "`latent_grad` switch (how much "
                f"its own loss trains the encoder); {type(model).__name__} has none"
            )
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
        if self.encoder_model_grad != 1.0:
            self.model.latent_grad = self.encoder_model_grad if self.active else True
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
    @property
    def needs_pose(self) -> bool:
        """Whether the wrapped model's encoder is conditioned on the pose (``model.needs_pose``)."""
        return bool(getattr(self.model, "needs_pose", False))

    def encode(
        self,
        images: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        rot: Tensor | None = None,
    ) -> Tensor:
        """The wrapped model's ``encode``: ``(B, D, D)``, ``(B, 8) | None``, ``(B, 2) | None``
        pixels, ``(B, 3, 3) | None`` poses → ``(B, zdim)``.

        ``trans`` and ``rot`` are passed on (as ``trans=``, ``rot=``) only when given, so models
        whose ``encode`` takes neither work as long as none is needed; given one, such a model
        raises ``TypeError`` rather than encoding un-centred images or dropping the pose.
        """
        kwargs: dict[str, Tensor] = {}
        if trans is not None:
            if not _takes_trans(self.model.encode):
                raise TypeError(
                    f"{type(self.model).__name__}.encode takes no `trans` argument, but the "
                    f"images to encode need their in-plane shifts (augmenter {self.augmenter!r} "
                    "declares views_need_trans): add `trans: Tensor | None = None` ((B, 2) "
                    "pixels) to the model's encode, or re-centre the views in the augmenter "
                    "(see cryonoo.ssl.augment.recenter)"
                )
            kwargs["trans"] = trans
        if rot is not None:
            if not _takes_keyword(self.model.encode, "rot"):
                raise TypeError(
                    f"{type(self.model).__name__}.encode takes no `rot` argument, but it was "
                    "given the images' poses: add `rot: Tensor | None = None` ((B, 3, 3)) to "
                    "the model's encode, or do not declare needs_pose"
                )
            kwargs["rot"] = rot
        return self.model.encode(images, ctf, **kwargs)

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None, **options: Any) -> Tensor:
        """The wrapped model's ``render`` (keyword ``options`` such as ``band`` passed on)."""
        return self.model.render(z, rot, ctf, **options)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> StepOutput:
        """Same as :meth:`training_step` (so the wrapper can sit inside DDP)."""
        return self.training_step(batch, generator)

    def training_step(self, batch: Batch, generator: torch.Generator | None = None) -> StepOutput:
        """The model's step, plus ``weight · Σ_j objective(z0, z_j)`` after warm-up."""
        if not self.active:
            return self.model.training_step(batch)
        step = self.model.training_step(self._anchor_batch(batch, generator))
        n_img = len(batch)
        if n_img < MIN_SSL_BATCH:  # skipped before the views are drawn: no generator draws
            if not self._warned_small:
                warn_small_batch("self-distillation", n_img)
                self._warned_small = True
            zero = torch.zeros((), device=step.loss.device)
            terms = {**step.terms, "ssl/loss": zero, "ssl/skipped": torch.ones_like(zero)}
            return StepOutput(loss=step.loss, z=step.z, terms=terms, render=step.render)

        out = self._views(batch, step, generator)
        views, ctf, anchor = out.views, out.ctf, out.targets
        n_views, n_img, size = views.shape[0], views.shape[1], views.shape[-1]
        flat_ctf = None if ctf is None else ctf.repeat(n_views, 1)
        # registered augmenters return centred views (no translation); see the module docstring
        flat_trans = None
        if getattr(self.augmenter, "views_need_trans", False) and batch.trans is not None:
            flat_trans = batch.trans.detach().repeat(n_views, 1)
        flat_rot = self._view_poses(out, batch) if self.needs_pose else None
        z_views = self.encode(
            views.reshape(n_views * n_img, size, size), flat_ctf, flat_trans, flat_rot
        )
        z_views = z_views.reshape(n_views, n_img, -1)

        # the original image's latent is the anchor; detached, the SSL gradient reaches the
        # encoder only through the views (robustness) and cannot erase z0's information.
        # An augmenter that returns its own targets (dream) fixes the anchor itself.
        if anchor is not None:
            target = anchor.detach()
        elif self.teacher is not None:
            target = self._teacher_latents(batch)
        else:
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

    def _anchor_batch(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """``batch``, with re-noised ``encoder_images`` when ``anchor_noise`` is on."""
        if not self.anchor_noise:
            return batch
        sigma = float(self.augmenter.sigma)  # type: ignore[attr-defined]
        noisy = noisy_views(batch.images.detach().float(), sigma, (self.anchor_noise,), generator)
        return replace(batch, encoder_images=noisy[0].to(batch.images.dtype))

    @torch.no_grad()
    def _teacher_latents(self, batch: Batch) -> Tensor:
        """``(B, zdim)`` anchor latents from the EMA teacher, updated first (see
        ``teacher_momentum``): the parameters the model has after the previous step."""
        assert self.teacher is not None and self.teacher_momentum is not None
        m = 0.0 if not bool(self.teacher_started) else self.teacher_momentum
        for t, p in zip(self.teacher.parameters(), self.model.parameters(), strict=True):
            t.lerp_(p.detach(), 1.0 - m)
        for t, b in zip(self.teacher.buffers(), self.model.buffers(), strict=True):
            t.copy_(b)
        self.teacher_started.fill_(True)
        self.teacher.eval()  # the wrapper's .train() reaches it too
        if self.needs_pose:
            return self.teacher.encode(batch.images, batch.ctf, batch.trans, rot=batch.rot).float()
        return self.teacher.encode(batch.images, batch.ctf, batch.trans).float()

    def _views(self, batch: Batch, step: StepOutput, generator: torch.Generator | None) -> Views:
        """The augmenter's :class:`~cryonoo.types.Views`: from its ``make_views`` when it has
        one, else from its legacy ``(views, ctf)`` / ``(views, ctf, targets)`` (no poses)."""
        make_views = getattr(self.augmenter, "make_views", None)
        if callable(make_views):
            out = make_views(batch, self.model, step, generator)
            if not isinstance(out, Views):
                raise TypeError(
                    f"augmenter {self.augmenter!r}: make_views must return a cryonoo.types.Views, "
                    f"got {type(out).__name__}"
                )
        else:
            legacy = self.augmenter(batch, self.model, step, generator)
            if len(legacy) == 3:
                out = Views(legacy[0], legacy[1], targets=legacy[2])
            else:
                views, ctf = legacy
                out = Views(views, ctf)
        _check_views(out, batch, step.z)
        return out

    def _view_poses(self, out: Views, batch: Batch) -> Tensor:
        """``(J·B, 3, 3)`` detached pose of every view, view-major like the flattened views."""
        n_views, n_img = out.views.shape[0], out.views.shape[1]
        if out.rot is not None:
            if tuple(out.rot.shape) != (n_views, n_img, 3, 3):
                raise ValueError(
                    f"augmenter {self.augmenter!r} returned view poses of shape "
                    f"{tuple(out.rot.shape)}, expected ({n_views}, {n_img}, 3, 3)"
                )
            return out.rot.detach().reshape(n_views * n_img, 3, 3)
        if getattr(self.augmenter, "views_keep_pose", False):
            return batch.rot.detach().repeat(n_views, 1, 1)
        raise ValueError(
            f"the model's encoder is conditioned on the pose, but augmenter {self.augmenter!r} "
            "does not say at which poses its views are: return cryonoo.types.Views(…, rot=(J, B, "
            "3, 3)) from a make_views method, or set views_keep_pose = True if every view keeps "
            "its image's pose (batch.rot)"
        )

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
            f"encoder_from_ssl_only={self.encoder_from_ssl_only}, "
            f"augmenter={self.augmenter!r}"
        )
