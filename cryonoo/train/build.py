"""Everything a training run steps: the model, its optimizer and scheduler, the generators, the
precision, the loader and the (DistributedDataParallel-wrapped) model that takes the steps.

:func:`build_training` builds them in a fixed order, which fixes what the seeded global
generator draws (the model's initial weights first), and restores a resume state into them
(:func:`restore_training`) before the model is wrapped for data-parallel training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cryonoo.io.dataset import ParticleDataset, make_loader
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.vae import HetVAE
from cryonoo.models.zoo import MODELS, has_encoder, reconstruction_models
from cryonoo.ssl.augment import AUGMENTERS, run_context_of
from cryonoo.ssl.distill import SelfDistillation
from cryonoo.train.config import OptimConfig
from cryonoo.train.cryodrgn_init import load_cryodrgn_weights
from cryonoo.train.distributed import DistInfo, ShardedBatchSampler
from cryonoo.train.precision import Precision, resolve_precision
from cryonoo.train.recipes import TrainConfig
from cryonoo.types import Batch, StepOutput

if TYPE_CHECKING:
    from cryonoo.train.plan import RunPlan

__all__ = [
    "Training",
    "base_model",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_training",
    "needs_data_sigma",
    "restore_training",
]

#: the seed offset of each rank's own random streams (rank 0 draws what a single process draws)
RANK_SEED_STRIDE = 7919

PlateauScheduler = torch.optim.lr_scheduler.ReduceLROnPlateau


def needs_data_sigma(config: TrainConfig) -> bool:
    """Whether the recipe's augmenter takes the data's noise σ (``"sigma"`` in its run
    context, :func:`cryonoo.ssl.augment.run_context_of`)."""
    return config.uses_ssl and "sigma" in run_context_of(AUGMENTERS.get(config.ssl.augment))


def _augmenter_kwargs(config: TrainConfig, noise_sigma: float | None) -> dict[str, Any]:
    """The augmenter's constructor arguments: the run context it declares (σ, noise factors,
    number of views, detach_render), then ``config.ssl.augment_options``."""
    takes = run_context_of(AUGMENTERS.get(config.ssl.augment))
    if "sigma" in takes and noise_sigma is None:
        raise ValueError(f"augmenter {config.ssl.augment!r} needs the noise σ of the data")
    context = {
        "sigma": noise_sigma,
        "noise_factors": config.ssl.noise_factors,
        "num_views": len(config.ssl.noise_factors),
        "detach_render": config.ssl.detach_render,
    }
    return {**{key: context[key] for key in takes}, **config.ssl.augment_options}


def build_model(
    config: TrainConfig, D: int, *, noise_sigma: float | None = None, n_images: int | None = None
) -> nn.Module:
    """The model of a recipe: ``MODELS[config.model.kind]`` (a :class:`HetVAE` or an
    :class:`AutoDecoder`), wrapped for self-distillation if ``config.ssl.objective``.

    ``noise_sigma`` is the augmentation σ in the data domain (``σ_raw / norm_std``);
    ``n_images`` the number of training images (the autodecoder's latent table).
    """
    vae = MODELS.build_accepted(
        config.model.kind,
        D=D,
        n_images=n_images,
        latent_l2=config.model.latent_l2,
        zdim=config.model.zdim,
        encoder=config.model.encoder,
        decoder=config.model.decoder,
        enc_layers=config.model.enc_layers,
        enc_dim=config.model.enc_dim,
        dec_layers=config.model.dec_layers,
        dec_dim=config.model.dec_dim,
        pe_type=config.model.pe_type,
        pe_dim=config.model.pe_dim,
        feat_sigma=config.model.feat_sigma,
        activation=config.model.activation,
        beta=config.model.beta,
        seed=config.optim.seed,
    )
    for setting in ("decoder_chunk", "cpu_block_points"):
        value = getattr(config.optim, setting)
        if hasattr(vae, setting):
            setattr(vae, setting, value)
        elif value != getattr(OptimConfig(), setting):  # a model without it keeps the default
            raise ValueError(
                f"optim.{setting}: the {config.model.kind!r} model does not decode in chunks"
            )
    if not config.uses_ssl:
        return vae
    if not has_encoder(vae):
        raise ValueError(
            f"recipe {config.name!r}: self-distillation needs an encoder, the "
            f"{config.model.kind!r} model has none; set ssl.objective=none (or --ssl none) for it"
        )
    return SelfDistillation(
        vae,
        objective=config.ssl.objective,
        augmenter=config.ssl.augment,
        weight=config.ssl.weight,
        warmup_epochs=config.ssl.warmup,
        decoder_freeze=config.ssl.decoder_freeze,
        detach_target=config.ssl.detach_target,
        encoder_from_ssl_only=config.ssl.encoder_from_ssl_only,
        encoder_model_grad=config.ssl.encoder_model_grad,
        anchor_noise=config.ssl.anchor_noise,
        teacher_momentum=config.ssl.teacher_momentum,
        objective_kwargs={"head": config.ssl.head, **config.ssl.options},
        augmenter_kwargs=_augmenter_kwargs(config, noise_sigma),
    )


def base_model(model: nn.Module) -> HetVAE | AutoDecoder:
    """The reconstruction model inside a (possibly wrapped, possibly DDP) model."""
    while not isinstance(model, reconstruction_models()):
        inner = getattr(model, "module", None) or getattr(model, "model", None)
        if inner is None:
            raise TypeError(f"no reconstruction model inside {type(model).__name__}")
        model = inner
    return model


def build_optimizer(
    config: TrainConfig, model: nn.Module, vae: HetVAE | AutoDecoder
) -> torch.optim.Adam | torch.optim.AdamW:
    """Adam over ``model``'s parameters (an autodecoder's latents at ``config.model.latent_lr``).

    With ``config.optim.encoder_weight_decay`` > 0: AdamW whose decoupled decay acts on the
    encoder's parameters alone (decoder, SSL head and latents undecayed), i.e. plain Adam for
    everything else. ``config.optim.fused_adam`` selects torch's fused kernel (one pass over
    the parameters instead of several multi-tensor passes).
    """
    if isinstance(vae, AutoDecoder):
        params: Any = vae.param_groups(config.model.latent_lr)
    else:
        params = model.parameters()
    fused = {"fused": True} if config.optim.fused_adam else {}  # unset: torch's default Adam
    if config.optim.encoder_weight_decay <= 0:
        return torch.optim.Adam(
            params, lr=config.optim.lr, weight_decay=config.optim.weight_decay, **fused
        )
    encoder = getattr(vae, "encoder", None)
    if encoder is None:
        raise ValueError(f"encoder_weight_decay: {type(vae).__name__} has no encoder")
    encoder_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [
        {"params": list(encoder.parameters()), "weight_decay": config.optim.encoder_weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.optim.lr, **fused)


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer
) -> PlateauScheduler | None:
    """``ReduceLROnPlateau`` on the epoch loss when ``config.optim.lr_plateau``, else ``None``."""
    if not config.optim.lr_plateau:
        return None
    return PlateauScheduler(
        optimizer, "min", factor=config.optim.plateau_factor, patience=config.optim.plateau_patience
    )


@dataclass
class Training:
    """The objects one training run steps (built by :func:`build_training`).

    Attributes
    ----------
    model:
        What is trained, on ``device``: the reconstruction model, or a :class:`SelfDistillation`
        around it.
    vae:
        The reconstruction model inside (:func:`base_model`): what is encoded and saved.
    step_model:
        ``model``, wrapped in ``DistributedDataParallel`` in a distributed job: what runs the
        forward pass, so that gradients are averaged over ranks.
    optimizer, scheduler:
        Adam and the optional ``ReduceLROnPlateau``.
    loader_generator:
        The CPU generator of the shuffled order (the same on every rank).
    aug_generator:
        The generator of the augmenter's views, on ``device`` (one stream per rank).
    precision, scaler:
        The networks' precision and its gradient scaler (active for float16 only).
    loader:
        Shuffled batches of the dataset (this rank's share of each in a distributed job).
    device, info:
        This process's device and place in the job.
    start_epoch:
        The epoch training starts in (0-based; a resume state's).
    cryodrgn_weights:
        The cryoDRGN checkpoint the weights started from, if any (recorded in ``config.json``).
    """

    model: nn.Module
    vae: HetVAE | AutoDecoder
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: PlateauScheduler | None
    loader_generator: torch.Generator
    aug_generator: torch.Generator
    precision: Precision
    scaler: torch.amp.GradScaler
    loader: DataLoader
    device: torch.device
    info: DistInfo
    start_epoch: int = 0
    cryodrgn_weights: str | None = None

    @property
    def distills(self) -> bool:
        """Whether the model is a :class:`SelfDistillation` (it takes ``aug_generator``)."""
        return isinstance(self.model, SelfDistillation)

    def forward(self, batch: Batch) -> StepOutput:
        """The training step's forward pass on ``batch`` (through ``step_model``, autocast)."""
        with self.precision.autocast():
            if self.distills:
                return self.step_model(batch, self.aug_generator)
            return self.step_model(batch)


def _distributed(model: nn.Module, config: TrainConfig, plan: RunPlan) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` in a distributed job (else itself)."""
    if not plan.info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[plan.device] if plan.device.type == "cuda" else None,
        find_unused_parameters=config.uses_ssl,  # the SSL heads idle during warm-up
    )


def _loader(
    dataset: ParticleDataset, config: TrainConfig, plan: RunPlan, generator: torch.Generator
) -> DataLoader:
    """The shuffling loader of the run (each rank takes its share of every batch)."""
    info = plan.info
    return make_loader(
        dataset,
        config.optim.batch_size,
        generator=generator,
        num_workers=config.data.num_workers,
        pin_memory=plan.device.type == "cuda",
        shard=(lambda batches: ShardedBatchSampler(batches, info)) if info.enabled else None,
    )


def build_training(config: TrainConfig, dataset: ParticleDataset, plan: RunPlan) -> Training:
    """Build the run's :class:`Training` for ``plan``.

    The global generator is seeded with ``config.optim.seed`` before the model is built (its initial
    weights), then, on ranks > 0, reseeded per rank (their reparameterization noise). A
    cryoDRGN start loads its weights into the new model; a resume state is restored into
    everything before the model is wrapped for data-parallel training.
    """
    dev, rank = plan.device, plan.info.rank
    torch.manual_seed(config.optim.seed)
    model = build_model(
        config, dataset.D, noise_sigma=plan.noise_sigma_data, n_images=len(dataset)
    ).to(dev)
    vae = base_model(model)
    vae.check_finite = False  # the loop checks, where the particle indices are known
    cryodrgn_weights = plan.recorded_cryodrgn_weights
    if plan.cryodrgn_run is not None:
        cryodrgn_weights = load_cryodrgn_weights(vae, plan.cryodrgn_run, dataset)
    if rank:  # other reparameterization noise on every rank (rank 0 as a single process)
        torch.manual_seed(config.optim.seed + RANK_SEED_STRIDE * rank)
    optimizer = build_optimizer(config, model, vae)
    loader_generator = torch.Generator().manual_seed(config.optim.seed)
    aug_seed = config.optim.seed + 1 + RANK_SEED_STRIDE * rank
    precision = resolve_precision(config.optim.precision, dev)
    training = Training(
        model=model,
        vae=vae,
        step_model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(config, optimizer),
        loader_generator=loader_generator,
        aug_generator=torch.Generator(device=dev).manual_seed(aug_seed),
        precision=precision,
        scaler=precision.grad_scaler(),
        loader=_loader(dataset, config, plan, loader_generator),
        device=dev,
        info=plan.info,
        cryodrgn_weights=cryodrgn_weights,
    )
    if plan.state is not None:
        restore_training(training, plan.state, config.optim.seed)
    training.step_model = _distributed(model, config, plan)
    return training


def restore_training(training: Training, state: dict[str, Any], seed: int) -> None:
    """Continue from checkpoint ``state``: weights, optimizer, scheduler, the shuffle generator
    and ``start_epoch``; rank 0 also takes the saved augmentation and global generators (an
    exact continuation), other ranks reseed theirs from ``seed``, their rank and the epoch."""
    t = training
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scheduler is not None and state.get("scheduler"):
        t.scheduler.load_state_dict(state["scheduler"])
    t.loader_generator.set_state(state["loader_generator"])  # the same order on every rank
    t.start_epoch = int(state["epoch"])
    if t.info.is_main:
        t.aug_generator.set_state(state["aug_generator"].to(t.aug_generator.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        if t.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    else:
        offset = RANK_SEED_STRIDE * t.info.rank + t.start_epoch
        t.aug_generator.manual_seed(seed + 1 + offset)
        torch.manual_seed(seed + offset)
