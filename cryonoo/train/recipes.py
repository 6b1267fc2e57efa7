"""Training recipes: one frozen :class:`~cryonoo.train.config.TrainConfig` per arm of the
paper's tables.

``RECIPES["cryonoo"]`` is the method (VICReg self-distillation on re-noised re-projections,
J = 3 views with noise factors 0.5, 1, 1.5 of the data's own σ, λ = 0.3, warm-up N = 10 epochs,
expander 3 × 1024, ``ReduceLROnPlateau``); ``RECIPES["cryodrgn"]`` is the plain VAE baseline
(cryoDRGN's ``train_vae`` with batch size 64); ``RECIPES["autodecoder"]`` is the ``cryodrgn``
recipe with an autodecoder (a learned latent per image, cryoDRGN-AI style) in place of the VAE,
the baseline of amortized vs test-time inference (paper Table 2). Every other recipe changes one
thing, mirroring the ablations (paper Tables 4, 6 and 7)::

    RECIPES["simsiam"] == RECIPES["cryonoo"].replace({"ssl.objective": "simsiam"}, name="simsiam")

Build your own with :meth:`TrainConfig.replace <cryonoo.train.config.TrainConfig.replace>`
(``section.key`` names), a settings file or ``cryonoo ablate --ssl … --weight …``.

**Noise factors are relative to the σ of the training images themselves** (estimated from them
with the paper's Algorithm 1, or given as ``noise_sigma``). The paper's factors 1, 2, 3 for
IgG-1D multiply the σ of its 256-px images (Table 5, 1.6979), and its 128-px training images
carry twice that noise ("a noise factor of 2 restores the original noise level"): its views had
0.5, 1 and 1.5 times the noise of the images it trained on. Our default (0.5, 1, 1.5) is that
setting, and the paper's "×2" and "÷2" arms are (1, 2, 3) and (0.25, 0.5, 0.75).
"""

from __future__ import annotations

from typing import Any

from cryonoo.train.config import ARCHITECTURE_FIELDS, TrainConfig

__all__ = ["ARCHITECTURE_FIELDS", "RECIPES", "RECOMMENDED", "TrainConfig", "get_recipe"]


# the paper's scheduler watches the total loss
_CRYONOO = TrainConfig().replace({"optim.plateau_on": "total"})
_CRYODRGN = _CRYONOO.replace(
    {"ssl.objective": None, "optim.lr_plateau": False, "optim.plateau_on": "model"}, name="cryodrgn"
)
# the sleep phase of wake-sleep training (beyond the paper): the encoder regresses the latents
# of decoder renderings drawn afresh at random poses (docs/generalization.md, Round D)
_SLEEP = _CRYONOO.replace(
    {
        "ssl.objective": "regress",
        "ssl.augment": "dream",
        "ssl.head": "none",
        "ssl.noise_factors": (1.0,),
        "ssl.weight": 1.0,
        # as the plain VAE: nothing to plateau on once the encoder only sleeps
        "optim.lr_plateau": False,
        "optim.plateau_on": "model",
    },
    name="sleep",
)


def _sleep(name: str, changes: dict[str, Any] | None = None) -> TrainConfig:
    """The sleep recipe with ``changes`` (``section.key`` → value), called ``name``."""
    return _SLEEP.replace(changes, name=name)


def _views_per_pose(
    name: str,
    views: int,
    fraction: float = 1.0,
    draws: int = 1,
    band: float | None = None,
    changes: dict[str, Any] | None = None,
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
    dream = {"ssl.noise_factors": (1.0,) * views, "ssl.weight": 1.0 / views}
    return _sleep(name, {**dream, "ssl.augment_options": options, **(changes or {})})


_AUTODECODER = _CRYODRGN.replace({"model.kind": "autodecoder"}, name="autodecoder")


def _arm(name: str, changes: dict[str, Any] | None = None) -> TrainConfig:
    """The paper's method with ``changes`` (``section.key`` → value), called ``name``."""
    return _CRYONOO.replace(changes, name=name)


RECIPES: dict[str, TrainConfig] = {
    "cryonoo": _CRYONOO,
    "cryodrgn": _CRYODRGN,
    "autodecoder": _AUTODECODER,
    # the data's own noise level
    "single-noise": _arm("single-noise", {"ssl.noise_factors": (1.0,)}),
    "no-warmup": _arm("no-warmup", {"ssl.warmup": 0}),
    "warmup-5": _arm("warmup-5", {"ssl.warmup": 5}),
    "warmup-40": _arm("warmup-40", {"ssl.warmup": 40}),
    "lambda-1": _arm("lambda-1", {"ssl.weight": 1.0}),
    "lambda-0.1": _arm("lambda-0.1", {"ssl.weight": 0.1}),
    "expander-32": _arm("expander-32", {"ssl.head": "32-32-32"}),
    "expander-128": _arm("expander-128", {"ssl.head": "128-128-128"}),
    "expander-2048": _arm("expander-2048", {"ssl.head": "2048-2048-2048"}),
    "expander-4096": _arm("expander-4096", {"ssl.head": "4096-4096-4096"}),
    "no-expander": _arm("no-expander", {"ssl.head": "none"}),
    "invariance-only": _arm("invariance-only", {"ssl.objective": "invariance"}),
    "simsiam": _arm("simsiam", {"ssl.objective": "simsiam"}),
    "barlow": _arm("barlow", {"ssl.objective": "barlow"}),
    "noise-aug": _arm("noise-aug", {"ssl.augment": "noise"}),
    "crop-flip-rotate": _arm("crop-flip-rotate", {"ssl.augment": "crop-flip-rotate"}),
    "decoder-freeze": _arm("decoder-freeze", {"ssl.decoder_freeze": True}),
    "noise-x2": _arm("noise-x2", {"ssl.noise_factors": (1.0, 2.0, 3.0)}),
    "noise-half": _arm("noise-half", {"ssl.noise_factors": (0.25, 0.5, 0.75)}),
    # beyond the paper: where the SSL gradient flows and how VICReg's terms are weighted
    "anchored": _arm("anchored", {"ssl.detach_target": True}),
    "vicreg-25": _arm("vicreg-25", {"ssl.options": {"inv": 25.0, "var": 25.0, "cov": 1.0}}),
    "random-pose": _arm("random-pose", {"ssl.augment_options": {"pose": "random"}}),
    # stop-gradient at z0 and a narrow expander (a lower VICReg covariance floor at small
    # batches; docs/generalization.md, Round C)
    "anchored-128": _arm("anchored-128", {"ssl.detach_target": True, "ssl.head": "128-128-128"}),
    "anchored-25": _arm(
        "anchored-25",
        {"ssl.detach_target": True, "ssl.options": {"inv": 25.0, "var": 25.0, "cov": 1.0}},
    ),
    # the VAE term's scheduler, an EMA teacher, VICReg without its covariance floor (Round D)
    "vae-plateau": _arm("vae-plateau", {"optim.plateau_on": "model"}),
    "no-plateau": _arm("no-plateau", {"optim.lr_plateau": False, "optim.plateau_on": "model"}),
    "ema-teacher": _arm("ema-teacher", {"ssl.teacher_momentum": 0.99, "optim.plateau_on": "model"}),
    "vicreg-rank": _arm(
        "vicreg-rank", {"ssl.options": {"cov_scale": "rank"}, "optim.plateau_on": "model"}
    ),
    "sleep": _SLEEP,
    "sleep-batch": _sleep("sleep-batch", {"ssl.augment_options": {"latents": "batch"}}),
    "sleep-w3": _sleep("sleep-w3", {"ssl.weight": 3.0}),
    "sleep-2v": _sleep("sleep-2v", {"ssl.noise_factors": (1.0, 1.0), "ssl.weight": 0.5}),
    "wake-sleep": _sleep("wake-sleep", {"ssl.encoder_from_ssl_only": True}),
    "wake-sleep-batch": _sleep(
        "wake-sleep-batch",
        {"ssl.encoder_from_ssl_only": True, "ssl.augment_options": {"latents": "batch"}},
    ),
    # the VAE term's pull on the encoder scaled down after warm-up (Round E)
    "sleep-2v-g03": _sleep(
        "sleep-2v-g03",
        {"ssl.noise_factors": (1.0, 1.0), "ssl.weight": 0.5, "ssl.encoder_model_grad": 0.3},
    ),
    # the encoder given each image's pose (pose-mlp: the rotation's first two rows as inputs)
    "cryodrgn-pose": _CRYODRGN.replace({"model.encoder": "pose-mlp"}, name="cryodrgn-pose"),
    "sleep-2v-pose": _sleep(
        "sleep-2v-pose",
        {"ssl.noise_factors": (1.0, 1.0), "ssl.weight": 0.5, "model.encoder": "pose-mlp"},
    ),
    # the KL weight (cryoDRGN's 1/zdim = 0.125 by default) and dreams of the batch's own
    # posterior means (Round F)
    "cryodrgn-beta0.5": _CRYODRGN.replace({"model.beta": 0.5}, name="cryodrgn-beta0.5"),
    "cryodrgn-beta1.7": _CRYODRGN.replace({"model.beta": 1.67}, name="cryodrgn-beta1.7"),
    "sleep-2v-beta0.5": _sleep(
        "sleep-2v-beta0.5", {"ssl.noise_factors": (1.0, 1.0), "ssl.weight": 0.5, "model.beta": 0.5}
    ),
    "sleep-2v-post": _sleep(
        "sleep-2v-post",
        {
            "ssl.noise_factors": (1.0, 1.0),
            "ssl.weight": 0.5,
            "ssl.augment_options": {"latents": "posterior"},
        },
    ),
    # every view of a dream at its own random pose; more views per dream (Round F)
    "sleep-2v-pv": _views_per_pose("sleep-2v-pv", 2),
    "sleep-4v-pv": _views_per_pose("sleep-4v-pv", 4),
    "sleep-4v-pv-an": _views_per_pose("sleep-4v-pv-an", 4, changes={"ssl.anchor_noise": 0.7}),
    "sleep-4v-pv-an1": _views_per_pose("sleep-4v-pv-an1", 4, changes={"ssl.anchor_noise": 1.0}),
    "sleep-8v-pv": _views_per_pose("sleep-8v-pv", 8),
    "sleep-8v-pv-an": _views_per_pose("sleep-8v-pv-an", 8, changes={"ssl.anchor_noise": 0.7}),
    "sleep-8v-pv-an1": _views_per_pose("sleep-8v-pv-an1", 8, changes={"ssl.anchor_noise": 1.0}),
    # wake-sleep with per-pose multi-view dreams: after warm-up the encoder learns from the
    # dreams alone (Round G)
    "wake-sleep-4v-pv": _views_per_pose(
        "wake-sleep-4v-pv", 4, changes={"ssl.encoder_from_ssl_only": True}
    ),
    "wake-sleep-8v-pv": _views_per_pose(
        "wake-sleep-8v-pv", 8, changes={"ssl.encoder_from_ssl_only": True}
    ),
    "wake-sleep-8v-pv-ewd1": _views_per_pose(
        "wake-sleep-8v-pv-ewd1",
        8,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
    ),
    # the same sleep phase at a quarter of its cost: a quarter of the batch dreams (8 views
    # each), or every image dreams with 2 views (Round H)
    "wake-sleep-8v-pv-ewd1-f4": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-f4",
        8,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
        fraction=0.25,
    ),
    "wake-sleep-2v-pv-ewd1": _views_per_pose(
        "wake-sleep-2v-pv-ewd1",
        2,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
    ),
    # half the renderings: 8 views per dream from 4 renderings, 2 noise draws each (Round H)
    "wake-sleep-8v-pv-ewd1-n2": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-n2",
        8,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
        draws=2,
    ),
    # a quarter of the renderings: 8 views from 2 renderings, 4 noise draws each (Round I)
    "wake-sleep-8v-pv-ewd1-n4": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-n4",
        8,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
        draws=4,
    ),
    # low-pass dreams: 8 renderings of |k| ≤ 0.3125 cycles/px (95 % of the signal's power,
    # 39 % of the points) (Round I)
    "wake-sleep-8v-pv-ewd1-lp": _views_per_pose(
        "wake-sleep-8v-pv-ewd1-lp",
        8,
        changes={"ssl.encoder_from_ssl_only": True, "optim.encoder_weight_decay": 1.0},
        band=0.3125,
    ),
    # decoupled weight decay on the encoder alone: weights only training images excite decay
    # (Round G)
    "sleep-4v-pv-ewd1": _views_per_pose(
        "sleep-4v-pv-ewd1", 4, changes={"optim.encoder_weight_decay": 1.0}
    ),
    "sleep-4v-pv-ewd5": _views_per_pose(
        "sleep-4v-pv-ewd5", 4, changes={"optim.encoder_weight_decay": 5.0}
    ),
    "sleep-4v-pv-an-ewd1": _views_per_pose(
        "sleep-4v-pv-an-ewd1",
        4,
        changes={"ssl.anchor_noise": 0.7, "optim.encoder_weight_decay": 1.0},
    ),
    "sleep-8v-pv-an-ewd1": _views_per_pose(
        "sleep-8v-pv-an-ewd1",
        8,
        changes={"ssl.anchor_noise": 0.7, "optim.encoder_weight_decay": 1.0},
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
