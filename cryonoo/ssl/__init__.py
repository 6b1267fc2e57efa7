"""Self-supervised parts of cryonoo: losses, heads, objectives, augmenters, self-distillation.

Importing this package populates the registries :data:`HEADS`, :data:`SSL` and
:data:`AUGMENTERS`. The typical entry point is :class:`SelfDistillation`, which wraps any
:class:`~cryonoo.types.ReconstructionModel`::

    from cryonoo.ssl import SelfDistillation

    wrapped = SelfDistillation(model, "vicreg", "reproject-noise", sigma=sigma, zdim=8)
    wrapped.set_epoch(epoch)
    out = wrapped.training_step(batch, generator)
"""

from __future__ import annotations

from cryonoo.ssl.augment import (
    AUGMENTERS,
    CropFlipRotate,
    NoiseAugment,
    ReprojectNoise,
    from_real_space,
    to_real_space,
)
from cryonoo.ssl.distill import SelfDistillation
from cryonoo.ssl.heads import HEADS, IdentityHead, MLPHead, build_head, parse_spec
from cryonoo.ssl.losses import (
    VICREG_CONVENTION,
    barlow_twins_loss,
    collapse_std,
    invariance_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
)
from cryonoo.ssl.objectives import (
    SSL,
    BarlowTwinsObjective,
    InvarianceObjective,
    SimSiamObjective,
    VICRegObjective,
)

__all__ = [
    "AUGMENTERS",
    "HEADS",
    "SSL",
    "VICREG_CONVENTION",
    "BarlowTwinsObjective",
    "CropFlipRotate",
    "IdentityHead",
    "InvarianceObjective",
    "MLPHead",
    "NoiseAugment",
    "ReprojectNoise",
    "SelfDistillation",
    "SimSiamObjective",
    "VICRegObjective",
    "barlow_twins_loss",
    "build_head",
    "collapse_std",
    "from_real_space",
    "invariance_loss",
    "parse_spec",
    "simsiam_loss",
    "to_real_space",
    "vicreg_loss",
    "vicreg_terms",
]
