"""Neural models: positional encodings, encoders, implicit decoders, the heterogeneous VAE and
the autodecoder baseline.

Importing this package populates the ``POSITIONAL``, ``ENCODERS``, ``DECODERS`` and ``MODELS``
registries.
"""

from __future__ import annotations

from cryonoo.models.autodecoder import AutoDecoder
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
from cryonoo.models.zoo import MODELS

__all__ = [
    "DECODERS",
    "ENCODERS",
    "MLP",
    "MODELS",
    "POSITIONAL",
    "AutoDecoder",
    "ConvEncoder",
    "FourierDecoder",
    "HartleyDecoder",
    "HetVAE",
    "MLPEncoder",
    "ResidLinear",
    "ResidLinearMLP",
    "kl_divergence",
]
