"""Training recipes: one frozen :class:`TrainConfig` per arm of the paper's tables.

``RECIPES["cryonoo"]`` is the method (VICReg self-distillation on re-noised re-projections,
J = 3 views with noise factors 0.5, 1, 1.5 of the data's own σ, λ = 0.3, warm-up N = 10 epochs,
expander 3 × 1024, ``ReduceLROnPlateau``); ``RECIPES["cryodrgn"]`` is the plain VAE baseline
(cryoDRGN's ``train_vae`` with batch size 64); ``RECIPES["autodecoder"]`` is the ``cryodrgn``
recipe with an autodecoder (a learned latent per image, cryoDRGN-AI style) in place of the VAE,
the baseline of amortized vs test-time inference (paper Table 2). Every other recipe changes one
thing, mirroring the ablations (paper Tables 4, 6 and 7)::

    RECIPES["simsiam"] == replace(RECIPES["cryonoo"], name="simsiam", ssl="simsiam")

Build your own with :func:`dataclasses.replace` or ``cryonoo ablate --ssl … --weight …``.

**Noise factors are relative to the σ of the training images themselves** (estimated from them
with the paper's Algorithm 1, or given as ``noise_sigma``). The paper's factors 1, 2, 3 for
IgG-1D multiply the σ of its 256-px images (Table 5, 1.6979), and its 128-px training images
carry twice that noise ("a noise factor of 2 restores the original noise level"): its views had
0.5, 1 and 1.5 times the noise of the images it trained on. Our default (0.5, 1, 1.5) is that
setting, and the paper's "×2" and "÷2" arms are (1, 2, 3) and (0.25, 0.5, 0.75).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from cryonoo.io.dataset import Preprocessing
from cryonoo.train.precision import PRECISIONS

__all__ = ["ARCHITECTURE_FIELDS", "RECIPES", "RECOMMENDED", "TrainConfig", "get_recipe"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run directory)."""

    name: str = "cryonoo"
    # model (cryoDRGN's defaults)
    zdim: int = 8
    encoder: str = "resid-mlp"
    decoder: str = "fourier"
    enc_layers: int = 3
    enc_dim: int = 1024
    dec_layers: int = 3
    dec_dim: int = 1024
    pe_type: str = "gaussian"
    pe_dim: int | None = None
    feat_sigma: float = 0.5
    activation: str = "relu"
    beta: float | None = None  # KL weight; None → 1/zdim
    model: str = "vae"  # name in cryonoo.models.zoo.MODELS: "vae" or "autodecoder"
    latent_lr: float = 1e-2  # autodecoder only: Adam learning rate of the per-image latents
    latent_l2: float = 1e-3  # autodecoder only: weight of the |z|² prior on the latents
    # optimization
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0  # Adam's L2 term on every parameter
    encoder_weight_decay: float = 0.0  # decoupled (AdamW) decay of the encoder's weights only
    lr_plateau: bool = True  # ReduceLROnPlateau(min, factor 0.5, patience 3) on the epoch loss
    plateau_on: str = "model"  # "model": the model's own loss; "total": + λ·SSL (the paper's)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    grad_clip: float | None = None
    skip_nonfinite: bool = False  # drop batches whose loss is NaN/Inf (counted in stats)
    precision: str = "auto"  # networks' precision: auto | fp32 | bf16 | fp16 (train.precision)
    seed: int = 0
    # self-distillation (ssl=None: no SSL term, the plain model)
    ssl: str | None = "vicreg"
    ssl_weight: float = 0.3
    head: str = "1024-1024-1024"
    warmup_epochs: int = 10
    augment: str = "reproject-noise"
    noise_factors: tuple[float, ...] = (0.5, 1.0, 1.5)  # × the data's σ (see module doc)
    noise_sigma: float | None = None  # in the stack's pixel units; None → estimated
    decoder_freeze: bool = False
    detach_render: bool = True
    detach_target: bool = False  # stop the SSL gradient at z0 (see SelfDistillation)
    encoder_from_ssl_only: bool = False  # after warm-up the encoder learns from SSL alone
    encoder_model_grad: float = 1.0  # after warm-up, the model loss's weight in the encoder
    teacher_momentum: float | None = None  # EMA teacher for the anchor latent (None: none)
    anchor_noise: float = 0.0  # after warm-up, the VAE's encoder sees its image + this × σ noise
    ssl_options: dict[str, Any] = field(default_factory=dict)  # objective kwargs (e.g. inv=25)
    augment_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"pose": "random"}
    # data
    invert: bool = True
    window: bool = True
    window_r: float = 0.85
    lazy: bool | None = None
    num_workers: int = 0
    ctf_rescale: bool = False
    # output
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        checks = {
            "zdim": self.zdim >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "ssl_weight": self.ssl_weight >= 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "noise_factors": len(self.noise_factors) >= 1 and min(self.noise_factors) >= 0,
            "checkpoint_every": self.checkpoint_every >= 1,
            "enc_layers": self.enc_layers >= 0 and self.dec_layers >= 0,
            "latent_lr": self.latent_lr > 0,
            "latent_l2": self.latent_l2 >= 0,
            "precision": self.precision in PRECISIONS,
            "plateau_on": self.plateau_on in ("model", "total"),
            "encoder_weight_decay": self.encoder_weight_decay >= 0
            and not (self.encoder_weight_decay > 0 and self.weight_decay > 0),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(f"invalid training settings: {values}")
        object.__setattr__(self, "noise_factors", tuple(float(f) for f in self.noise_factors))
        # own copies: recipes derived with `replace` must not share (and mutate) one dict
        object.__setattr__(self, "ssl_options", dict(self.ssl_options))
        object.__setattr__(self, "augment_options", dict(self.augment_options))

    @property
    def uses_ssl(self) -> bool:
        """Whether the self-distillation term is active at all."""
        return self.ssl is not None and self.ssl_weight > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form."""
        out = dataclasses.asdict(self)
        out["noise_factors"] = list(self.noise_factors)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if "amp" in data:  # configs written before `precision` had amp: bool
            amp = data.pop("amp")
            data.setdefault("precision", "auto" if amp else "fp32")
        data.pop("extra", None)  # an unused field of older configs
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(names)}")
        if "noise_factors" in data:
            data["noise_factors"] = tuple(data["noise_factors"])
        # configs written before `plateau_on` stepped the scheduler on the total loss
        data.setdefault("plateau_on", "total")
        return cls(**data)

    def preprocessing(self) -> Preprocessing:
        """The image preprocessing of this run (what training, encoding and evaluation apply)."""
        return Preprocessing(invert=self.invert, window=self.window, window_inner=self.window_r)

    def model_fields(self) -> dict[str, Any]:
        """The settings that define the network architecture (must match to resume)."""
        return {k: getattr(self, k) for k in ARCHITECTURE_FIELDS}


#: the TrainConfig fields that define the networks (a run resumes only with the same values)
ARCHITECTURE_FIELDS = (
    "model",
    "zdim",
    "encoder",
    "decoder",
    "enc_layers",
    "enc_dim",
    "dec_layers",
    "dec_dim",
    "pe_type",
    "pe_dim",
    "feat_sigma",
    "activation",
    "ssl",
    "head",
)


_CRYONOO = TrainConfig(plateau_on="total")  # the paper's scheduler watches the total loss
_CRYODRGN = replace(_CRYONOO, name="cryodrgn", ssl=None, lr_plateau=False, plateau_on="model")
# the sleep phase of wake-sleep training (beyond the paper): the encoder regresses the latents
# of decoder renderings drawn afresh at random poses (docs/generalization.md, Round D)
_SLEEP = replace(
    _CRYONOO,
    name="sleep",
    ssl="regress",
    augment="dream",
    head="none",
    noise_factors=(1.0,),
    ssl_weight=1.0,
    lr_plateau=False,  # as the plain VAE: nothing to plateau on once the encoder only sleeps
    plateau_on="model",
)


def _sleep(name: str, **changes: Any) -> TrainConfig:
    return replace(_SLEEP, name=name, **changes)


def _views_per_pose(
    name: str,
    views: int,
    fraction: float = 1.0,
    draws: int = 1,
    band: float | None = None,
    **changes: Any,
) -> TrainConfig:
    """A sleep recipe whose dreams have ``views`` views, each at its own random pose, at the
    data's noise level, λ = 1 / views each (the sleep term's total weight stays 1); a share
    ``fraction`` of each batch dreams, and each rendering serves ``draws`` views with their own
    noise (``Dream(fraction=…, draws=…)``); ``band`` low-passes the renderings."""
    options: dict[str, Any] = {"poses": "per-view"}
    if fraction != 1.0:
        options["fraction"] = fraction
    if draws != 1:
        options["draws"] = draws
    if band is not None:
        options["band"] = band
    return _sleep(
        name,
        noise_factors=(1.0,) * views,
        ssl_weight=1.0 / views,
        augment_options=options,
        **changes,
    )


_AUTODECODER = replace(_CRYODRGN, name="autodecoder", model="autodecoder")


def _arm(name: str, **changes: Any) -> TrainConfig:
    return replace(_CRYONOO, name=name, **changes)


RECIPES: dict[str, TrainConfig] = {
    "cryonoo": _CRYONOO,
    "cryodrgn": _CRYODRGN,
    "autodecoder": _AUTODECODER,
    "single-noise": _arm("single-noise", noise_factors=(1.0,)),  # the data's own noise level
    "no-warmup": _arm("no-warmup", warmup_epochs=0),
    "warmup-5": _arm("warmup-5", warmup_epochs=5),
    "warmup-40": _arm("warmup-40", warmup_epochs=40),
    "lambda-1": _arm("lambda-1", ssl_weight=1.0),
    "lambda-0.1": _arm("lambda-0.1", ssl_weight=0.1),
    "expander-32": _arm("expander-32", head="32-32-32"),
    "expander-128": _arm("expander-128", head="128-128-128"),
    "expander-2048": _arm("expander-2048", head="2048-2048-2048"),
    "expander-4096": _arm("expander-4096", head="4096-4096-4096"),
    "no-expander": _arm("no-expander", head="none"),
    "invariance-only": _arm("invariance-only", ssl="invariance"),
    "simsiam": _arm("simsiam", ssl="simsiam"),
    "barlow": _arm("barlow", ssl="barlow"),
    "noise-aug": _arm("noise-aug", augment="noise"),
    "crop-flip-rotate": _arm("crop-flip-rotate", augment="crop-flip-rotate"),
    "decoder-freeze": _arm("decoder-freeze", decoder_freeze=True),
    "noise-x2": _arm("noise-x2", noise_factors=(1.0, 2.0, 3.0)),
    "noise-half": _arm("noise-half", noise_factors=(0.25, 0.5, 0.75)),
    # beyond the paper: where the SSL gradient flows and how VICReg's terms are weighted
    "anchored": _arm("anchored", detach_target=True),
    "vicreg-25": _arm("vicreg-25", ssl_options={"inv": 25.0, "var": 25.0, "cov": 1.0}),
    "random-pose": _arm("random-pose", augment_options={"pose": "random"}),
    # stop-gradient at z0 and a narrow expander (a lower VICReg covariance floor at small
    # batches; docs/generalization.md, Round C)
    "anchored-128": _arm("anchored-128", detach_target=True, head="128-128-128"),
    "anchored-25": _arm(
        "anchored-25", detach_target=True, ssl_options={"inv": 25.0, "var": 25.0, "cov": 1.0}
    ),
    # the VAE term's scheduler, an EMA teacher, VICReg without its covariance floor (Round D)
    "vae-plateau": _arm("vae-plateau", plateau_on="model"),
    "no-plateau": _arm("no-plateau", lr_plateau=False, plateau_on="model"),
    "ema-teacher": _arm("ema-teacher", teacher_momentum=0.99, plateau_on="model"),
    "vicreg-rank": _arm("vicreg-rank", ssl_options={"cov_scale": "rank"}, plateau_on="model"),
    "sleep": _SLEEP,
    "sleep-batch": _sleep("sleep-batch", augment_options={"latents": "batch"}),
    "sleep-w3": _sleep("sleep-w3", ssl_weight=3.0),
    "sleep-2v": _sleep("sleep-2v", noise_factors=(1.0, 1.0), ssl_weight=0.5),
    "wake-sleep": _sleep("wake-sleep", encoder_from_ssl_only=True),
    "wake-sleep-batch": _sleep(
        "wake-sleep-batch", encoder_from_ssl_only=True, augment_options={"latents": "batch"}
    ),
    # the VAE term's pull on the encoder scaled down after warm-up (Round E)
    "sleep-2v-g03": _sleep(
        "sleep-2v-g03", noise_factors=(1.0, 1.0), ssl_weight=0.5, encoder_model_grad=0.3
    ),
    # the encoder given each image's pose (pose-mlp: the rotation's first two rows as inputs)
    "cryodrgn-pose": replace(_CRYODRGN, name="cryodrgn-pose", encoder="pose-mlp"),
    "sleep-2v-pose": _sleep(
        "sleep-2v-pose", noise_factors=(1.0, 1.0), ssl_weight=0.5, encoder="pose-mlp"
    ),
    # the KL weight (cryoDRGN's 1/zdim = 0.125 by default) and dreams of the batch's own
    # posterior means (Round F)
    "cryodrgn-beta0.5": replace(_CRYODRGN, name="cryodrgn-beta0.5", beta=0.5),
    "cryodrgn-beta1.7": replace(_CRYODRGN, name="cryodrgn-beta1.7", beta=1.67),
    "sleep-2v-beta0.5": _sleep(
        "sleep-2v-beta0.5", noise_factors=(1.0, 1.0), ssl_weight=0.5, beta=0.5
    ),
    "sleep-2v-post": _sleep(
        "sleep-2v-post",
        noise_factors=(1.0, 1.0),
        ssl_weight=0.5,
        augment_options={"latents": "posterior"},
    ),
    # every view of a dream at its own random pose; more views per dream (Round F)
    "sleep-2v-pv": _views_per_pose("sleep-2v-pv", 2),
    "sleep-4v-pv": _views_per_pose("sleep-4v-pv", 4),
    "sleep-4v-pv-an": _views_per_pose("sleep-4v-pv-an", 4, anchor_noise=0.7),
    "sleep-4v-pv-an1": _views_per_pose("sleep-4v-pv-an1", 4, anchor_noise=1.0),
    "sleep-8v-pv": _views_per_pose("sleep-8v-pv", 8),
    "sleep-8v-pv-an": _views_per_pose("sleep-8v-pv-an", 8, anchor_noise=0.7),
    "sleep-8v-pv-an1": _views_per_pose("sleep-8v-pv-an1", 8, anchor_noise=1.0),
    # wake-sleep with per-pose multi-view dreams: after warm-up the encoder learns from the
    # dreams alone (Round G)
    "wake-sleep-4v-pv": _views_per_pose("wake-sleep-4v-pv", 4, encoder_from_ssl_only=True),
    "wake-sleep-8v-pv": _views_per_pose("wake-sleep-8v-pv", 8, encoder_from_ssl_only=True),
    "wake-sleep-8v-pv-ewd1": _views_per_pose(
        "wake-sleep-8v-pv-ewd1", 8, encoder_from_ssl_only=True, encoder_weight_decay=1.0
    ),
    # the same sleep phase at a quarter of its cost: a quarter of the batch dreams (8 views
    # each), or every image dreams with 2 views (Round H)
    "wake-sleep-8v-pv-ewd1-f4": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-f4",
        8,
        encoder_from_ssl_only=True,
        fraction=0.25,
        encoder_weight_decay=1.0,
    ),
    "wake-sleep-2v-pv-ewd1": _views_per_pose(
        "wake-sleep-2v-pv-ewd1", 2, encoder_from_ssl_only=True, encoder_weight_decay=1.0
    ),
    # half the renderings: 8 views per dream from 4 renderings, 2 noise draws each (Round H)
    "wake-sleep-8v-pv-ewd1-n2": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-n2", 8, draws=2, encoder_from_ssl_only=True, encoder_weight_decay=1.0
    ),
    # a quarter of the renderings: 8 views from 2 renderings, 4 noise draws each (Round I)
    "wake-sleep-8v-pv-ewd1-n4": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-n4", 8, draws=4, encoder_from_ssl_only=True, encoder_weight_decay=1.0
    ),
    # low-pass dreams: 8 renderings of |k| ≤ 0.3125 cycles/px (95 % of the signal's power,
    # 39 % of the points) (Round I)
    "wake-sleep-8v-pv-ewd1-lp": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-lp",
        8,
        band=0.3125,
        encoder_from_ssl_only=True,
        encoder_weight_decay=1.0,
    ),
    # decoupled weight decay on the encoder alone: weights only training images excite decay
    # (Round G)
    "sleep-4v-pv-ewd1": _views_per_pose("sleep-4v-pv-ewd1", 4, encoder_weight_decay=1.0),
    "sleep-4v-pv-ewd5": _views_per_pose("sleep-4v-pv-ewd5", 4, encoder_weight_decay=5.0),
    "sleep-4v-pv-an-ewd1": _views_per_pose(
        "sleep-4v-pv-an-ewd1", 4, anchor_noise=0.7, encoder_weight_decay=1.0
    ),
    "sleep-8v-pv-an-ewd1": _views_per_pose(
        "sleep-8v-pv-an-ewd1", 8, anchor_noise=0.7, encoder_weight_decay=1.0
    ),
}


#: the recipe ``cryonoo demo`` recommends (docs/generalization.md, Round I)
RECOMMENDED = "wake-sleep-8v-pv-ewd1-lp"


def get_recipe(name: str) -> TrainConfig:
    """The recipe called ``name``; unknown names list the choices."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}") from None
