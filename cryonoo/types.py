"""Data containers and the plug-in protocols of cryonoo.

The protocols are structural (``typing.Protocol``): a model qualifies by having the methods, not by
inheriting from a cryonoo base class, so thin adapters around models we do not own work too.

Shapes use ``B`` for the batch, ``D`` for the odd lattice size (``box + 1``) and ``zdim`` for the
latent width. Images in a :class:`Batch` live in the model's *data domain*: for the cryoDRGN-style
VAE that is the normalized, symmetrized, centered Hartley transform on the ``D × D`` lattice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Augmenter",
    "Batch",
    "Decoder",
    "Encoder",
    "ReconstructionModel",
    "SSLObjective",
    "StepOutput",
    "TrainableModel",
    "Views",
]


@dataclass(frozen=True)
class Batch:
    """A batch of particle images with their poses and CTF parameters.

    Attributes
    ----------
    images:
        ``(B, D, D)`` images in the data domain.
    rot:
        ``(B, 3, 3)`` rotation matrices, cryoDRGN convention (lattice ``coords @ rot``).
    trans:
        ``(B, 2)`` in-plane shifts in **pixels** (``x`` then ``y``), or ``None``: the model
        translates each image by ``+trans`` (content moves by ``+t``,
        :func:`cryonoo.physics.shifts.shift_ht`) to centre the particle before encoding it.
    ctf:
        ``(B, 8)`` CTF parameters ``[Apix_A, dfu_A, dfv_A, dfang_deg, volt_kV, cs_mm, w,
        phase_deg]`` (cryoDRGN ``ctf.pkl`` columns 1–8), or ``None`` for CTF-free data.
    index:
        ``(B,)`` int64 indices of the particles in their dataset.
    encoder_images:
        ``(B, D, D)`` what a model's encoder sees in ``training_step`` instead of ``images``
        (e.g. a re-noised copy, see ``SelfDistillation(anchor_noise=…)``), or ``None``: the
        encoder sees ``images``. The reconstruction target is always ``images``.
    """

    images: Tensor
    rot: Tensor
    trans: Tensor | None = None
    ctf: Tensor | None = None
    index: Tensor | None = None
    encoder_images: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[-1] != self.images.shape[-2]:
            raise ValueError(f"Batch.images must be (B, D, D), got {tuple(self.images.shape)}")
        n = self.images.shape[0]
        expected = {
            "rot": (n, 3, 3),
            "trans": (n, 2),
            "ctf": (n, 8),
            "index": (n,),
            "encoder_images": tuple(self.images.shape),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"Batch.{name} must have shape {shape} for {n} images, got {tuple(value.shape)}"
                )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy every tensor to ``device``."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Page-locked copy for fast asynchronous host→GPU transfer (used by DataLoader)."""
        pinned = {
            f.name: (v.pin_memory() if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**pinned)


@dataclass
class StepOutput:
    """What a model's ``training_step`` returns.

    Attributes
    ----------
    loss:
        Scalar differentiable loss (the model's own terms, already weighted).
    z:
        ``(B, zdim)`` latent used as the first SSL view (for a VAE: the posterior mean).
    terms:
        Detached scalar terms for logging, e.g. ``{"recon": …, "kld": …}``.
    render:
        ``(B, D, D)`` the model's CTF-modulated rendering of the batch in the data domain, if it
        computed one (lets the self-distillation wrapper avoid a second decoder pass).
    """

    loss: Tensor
    z: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    render: Tensor | None = None


@dataclass(frozen=True)
class Views:
    """What an augmenter's ``make_views`` returns: the views and how to encode them.

    Attributes
    ----------
    views:
        ``(J, B, D, D)`` views in the data domain, **centred** (see :class:`Augmenter`).
    ctf:
        ``(B, 8)`` CTF to encode every view with (repeated over the J views), or ``None``.
    rot:
        ``(J, B, 3, 3)`` the pose of every view (cryoDRGN convention, lattice ``coords @ rot``):
        the pose a rendering was rendered at, or the input image's pose carried through the
        view's transform. ``None``: not stated (then a pose-conditioned encoder cannot encode
        the views). Pose-conditioned encoders are given these; other models ignore them.
    targets:
        ``(B, zdim)`` latents the views must encode to instead of the batch's own (``dream``),
        or ``None``.
    """

    views: Tensor
    ctf: Tensor | None
    rot: Tensor | None = None
    targets: Tensor | None = None

    def as_tuple(self) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
        """The legacy augmenter return: ``(views, ctf)`` or ``(views, ctf, targets)``."""
        if self.targets is None:
            return self.views, self.ctf
        return self.views, self.ctf, self.targets


@runtime_checkable
class ReconstructionModel(Protocol):
    """Any autoencoder-style reconstruction model that self-distillation can wrap."""

    def training_step(self, batch: Batch) -> StepOutput:
        """The model's own loss on ``batch`` and the latent it used."""
        ...

    def encode(
        self, images: Tensor, ctf: Tensor | None = None, trans: Tensor | None = None
    ) -> Tensor:
        """``(B, D, D)`` data-domain images, ``(B, 8)`` CTF, ``(B, 2)`` shifts in pixels →
        ``(B, zdim)`` latent means (same preprocessing as training, e.g. translation by
        ``+trans``, CTF phase flip and encoder mask).

        ``trans`` is optional: a model for centred data may omit the argument. The
        self-distillation wrapper then still works (its registered augmenters hand over
        centred views and pass no ``trans``), but it raises ``TypeError`` when a translation
        has to be passed.

        A model whose encoder is conditioned on the pose has the attribute
        ``needs_pose = True`` and an ``encode(images, ctf, trans, rot)`` taking the ``(B, 3, 3)``
        poses (``ValueError`` without them); the wrapper then passes every view's pose as
        ``rot=`` (see :class:`Views`). Models without the attribute are never given ``rot``."""
        ...

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None) -> Tensor:
        """``(B, zdim)``, ``(B, 3, 3)``, ``(B, 8)`` → ``(B, D, D)`` CTF-modulated images in the
        data domain, zero outside the decoder's mask."""
        ...


@runtime_checkable
class TrainableModel(ReconstructionModel, Protocol):
    """A :class:`ReconstructionModel` ``cryonoo train`` can train, save and load by name: it is
    registered in ``MODELS`` (``--set model.kind=NAME``), has ``zdim`` and ``config()`` — the
    keyword arguments that rebuild it (saved in the run's ``config.json``). Its constructor
    takes whichever run settings it names (``D``, ``zdim``, ``enc_dim``, …). Latents are its
    ``encode`` means, or ``encode_distribution(images, ctf, trans, rot) → (mu, logvar)`` when
    it has one. ``examples/05_plugin_model_from_the_cli.py`` trains such a model."""

    zdim: int

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this model."""
        ...


@runtime_checkable
class Encoder(Protocol):
    """An ``ENCODERS`` entry: maps a model's encoder input to a Gaussian posterior.

    ``input_kind`` says what the model feeds it: ``"points"`` — ``(B, n_in)`` the in-mask
    lattice values of the phase-flipped images (cryoDRGN's encoder input), or ``"image"`` —
    ``(B, D, D)`` those values scattered back onto the lattice. An encoder with the class
    attribute ``needs_pose = True`` is called as ``encoder(x, rot)`` with the ``(B, 3, 3)``
    poses (see :mod:`cryonoo.models.encoders`).
    """

    zdim: int
    input_kind: str

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """→ ``((B, zdim) mean, (B, zdim) log-variance)``."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """A ``DECODERS`` entry: an implicit volume, the 3-D Hartley spectrum at any frequency for a
    latent (``zdim`` 0: homogeneous, ``z`` is ``None``)."""

    zdim: int

    def __call__(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(B, N, 3)`` frequencies in cycles/pixel on the lattice's ``[-0.5, 0.5]`` cube and
        ``(B, zdim)`` latents → ``(B, N)`` Hartley values; ``validate`` checks the inputs."""
        ...

    def volume(self, z: Tensor | None, D: int | None = None, norm_std: float = 1.0) -> Tensor:
        """The real-space ``(D−1, D−1, D−1)`` map (``[z, y, x]``) of one latent."""
        ...


@runtime_checkable
class Augmenter(Protocol):
    """Produces augmented views of a batch (possibly using the model's own rendering)."""

    def __call__(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """→ ``(J, B, D, D)`` views and the ``(B, 8)`` CTF to encode them with (or ``None``).

        Views are **centred** (encoded with no translation): renderings are, and views of
        ``batch.images`` must be re-centred by ``batch.trans`` first
        (:func:`cryonoo.ssl.augment.recenter`). An augmenter whose views keep the input frame
        sets the attribute ``views_need_trans = True`` and the wrapper encodes them with
        ``batch.trans``; see :mod:`cryonoo.ssl.augment`.

        An augmenter may also offer ``make_views(batch, model, step, generator) → Views``, which
        the wrapper prefers: it also states the views' poses (for pose-conditioned encoders).
        Every registered augmenter does, and its ``__call__`` is ``make_views(…).as_tuple()``."""
        ...


@runtime_checkable
class SSLObjective(Protocol):
    """A self-supervised loss between two latent batches; owns its heads."""

    def __call__(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """``(B, zdim)``, ``(B, zdim)`` → ``{"loss": scalar, <term>: scalar, …}``."""
        ...
