"""Neural models: positional encodings, encoders, implicit decoders and the heterogeneous VAE.

Importing this package populates the ``POSITIONAL``, ``ENCODERS`` and ``DECODERS`` registries.
"""

from __future__ import annotations

from cryonoo.models.decoders import DECODERS, FourierDecoder, HartleyDecoder
from cryonoo.models.encoders import (
    ENCODERS,
    MLP,
    ConvEncoder,
    MLPEncoder,
    ResidLinear,
    ResidLinearMLP,
)
from cryonoo.models.positional import POSITIONAL
from cryonoo.models.vae import HetVAE, kl_divergence

__all__ = [
    "DECODERS",
    "ENCODERS",
    "MLP",
    "POSITIONAL",
    "ConvEncoder",
    "FourierDecoder",
    "HartleyDecoder",
    "HetVAE",
    "MLPEncoder",
    "ResidLinear",
    "ResidLinearMLP",
    "kl_divergence",
]
