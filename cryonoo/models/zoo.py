"""``MODELS``: the reconstruction models by name (what a recipe's ``model`` field names).

* ``vae`` — :class:`~cryonoo.models.vae.HetVAE`, amortized inference (one encoder pass).
* ``autodecoder`` — :class:`~cryonoo.models.autodecoder.AutoDecoder`, a latent per training
  image and test-time optimization for new ones (needs ``n_images`` and, to encode, poses).

Both take ``D`` and the decoder's arguments; build either from one set of keyword arguments with
:meth:`~cryonoo.registry.Registry.build_accepted`, which passes each only the arguments it takes.
"""

from __future__ import annotations

from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.vae import HetVAE
from cryonoo.registry import Registry

__all__ = ["MODELS", "has_encoder", "reconstruction_models"]

MODELS: Registry = Registry("model")
MODELS.add("vae", HetVAE, help="Amortized heterogeneous VAE (cryoDRGN's HetOnlyVAE).")
MODELS.add(
    "autodecoder",
    AutoDecoder,
    help="Autodecoder: a learned latent per training image, test-time optimization for new ones.",
)


def reconstruction_models() -> tuple[type, ...]:
    """The classes a (possibly wrapped) trained model is unwrapped to: every model registered
    now, plug-ins' included (classes only; a factory function is skipped)."""
    return tuple(obj for obj in map(MODELS.get, MODELS.names()) if isinstance(obj, type))


def has_encoder(model: object) -> bool:
    """Whether ``model`` (a model, or a model class) infers a latent in one encoder pass: it has
    ``encode`` and is not an :class:`AutoDecoder` (whose ``encode`` fits latents with poses)."""
    cls = model if isinstance(model, type) else type(model)
    return not issubclass(cls, AutoDecoder) and hasattr(model, "encode")
