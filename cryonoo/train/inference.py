"""Latents of a whole dataset by either kind of inference, streamed in batches.

* ``amortized`` — one encoder pass per batch (:class:`~cryonoo.models.vae.HetVAE`); the
  posterior means, exactly :func:`~cryonoo.train.encode.encode_dataset` (which gives the
  dataset's poses, ``Batch.rot``, to a pose-conditioned encoder such as ``pose-mlp``; so does
  ``refine`` for its starting point).
* ``autodecode`` — test-time optimization per batch
  (:meth:`~cryonoo.models.autodecoder.AutoDecoder.fit_latents`, all images of a batch at once):
  needs the poses (and uses shifts and CTF when the dataset has them).
* ``refine`` — semi-amortized (:meth:`~cryonoo.models.vae.HetVAE.refine`): the encoder's
  posterior mean, then ``steps`` Adam steps (default ``REFINE_STEPS`` = 20, lr ``REFINE_LR`` =
  5e-2) of each image's point objective against the frozen decoder at its pose; needs the
  poses, and an encoder (an autodecoder run's test-time fitting is ``autodecode``).

Latents come back in dataset order as ``(N, zdim)`` float32 arrays. Every method reads the
next ``prefetch`` batches on a background thread while it works on the current one
(:func:`cryonoo.io.prefetch.prefetched`); the latents do not depend on it.
"""

from __future__ import annotations

import numpy as np
import torch

from cryonoo.io.dataset import ParticleDataset, in_order
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.refine import REFINE_LR, REFINE_STEPS
from cryonoo.models.vae import HetVAE
from cryonoo.train.encode import encode_dataset

__all__ = [
    "METHODS",
    "POSED_METHODS",
    "autodecode_dataset",
    "check_method",
    "infer_latents",
    "refine_dataset",
]

METHODS = ("amortized", "autodecode", "refine")
#: the methods that fit latents at each particle's pose (so the dataset needs poses)
POSED_METHODS = ("autodecode", "refine")


def check_method(model: torch.nn.Module, method: str) -> None:
    """Raise ``ValueError`` unless ``model`` supports ``method`` (the message names the fix)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    is_ad = isinstance(model, AutoDecoder)
    if method == "amortized" and is_ad:
        raise ValueError(
            "amortized inference is not available for an autodecoder run: it has no encoder; "
            "use --method autodecode (test-time optimization of each latent, needs poses)"
        )
    if method == "autodecode" and not is_ad:
        raise ValueError(
            f"--method autodecode needs an autodecoder run (recipe 'autodecoder'); this run's "
            f"model is a {type(model).__name__}: use --method amortized (or --refine K to refine "
            "the encoder's latents at the poses)"
        )
    if method == "refine" and is_ad:
        raise ValueError(
            "refine starts from the encoder's latent, and an autodecoder run has no encoder: "
            "refining its latents is --method autodecode (test-time optimization, --steps K)"
        )
    if method == "refine" and not isinstance(model, HetVAE):
        raise ValueError(
            f"refine needs a HetVAE (an encoder and a decoder); this run's model is a "
            f"{type(model).__name__}"
        )


def autodecode_dataset(
    model: AutoDecoder,
    dataset: ParticleDataset,
    device: torch.device,
    *,
    batch_size: int = 1024,
    steps: int | None = None,
    lr: float | None = None,
    init: str = "zeros",
    seed: int = 0,
    prefetch: int = 2,
) -> np.ndarray:
    """``(N, zdim)`` latents of every particle of ``dataset`` fitted with the frozen decoder.

    ``init="random"`` draws the starting latents from a generator seeded with ``seed`` (one
    stream across batches, so the result depends on ``seed`` and ``batch_size`` only).
    """
    generator = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for batch in in_order(dataset, batch_size, prefetch=prefetch):
        b = batch.to(device)
        z = model.fit_latents(b.images, b.rot, b.ctf, b.trans, steps, lr, generator, init=init)
        out.append(z.float().cpu())
    if not out:
        return np.zeros((0, model.zdim), np.float32)
    return torch.cat(out).numpy()


def refine_dataset(
    model: HetVAE,
    dataset: ParticleDataset,
    device: torch.device,
    *,
    batch_size: int = 1024,
    steps: int = REFINE_STEPS,
    lr: float = REFINE_LR,
    band: float | None = None,
    prefetch: int = 2,
) -> np.ndarray:
    """``(N, zdim)`` float32 semi-amortized latents of every particle of ``dataset`` (dataset
    order): :meth:`HetVAE.refine <cryonoo.models.vae.HetVAE.refine>` batch by batch (``band``:
    fitted on ``|k| ≤ band`` cycles/pixel only). The result does not depend on ``batch_size``
    (every image is refined independently)."""
    out = []
    for batch in in_order(dataset, batch_size, prefetch=prefetch):
        b = batch.to(device)
        z = model.refine(b.images, b.rot, b.ctf, b.trans, steps=steps, lr=lr, band=band)
        out.append(z.cpu())
    if not out:
        return np.zeros((0, model.zdim), np.float32)
    return torch.cat(out).numpy()


def infer_latents(
    model: torch.nn.Module,
    dataset: ParticleDataset,
    device: torch.device,
    method: str = "amortized",
    *,
    batch_size: int = 1024,
    steps: int | None = None,
    lr: float | None = None,
    band: float | None = None,
    seed: int = 0,
    prefetch: int = 2,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mu, logvar)`` (amortized) or ``(z, None)`` (autodecode, refine), each ``(N, zdim)``;
    a lazy ``dataset`` is streamed batch by batch (:func:`cryonoo.io.dataset.in_order`).

    ``steps``/``lr`` (``None``: the method's defaults) are the Adam budget of autodecode and
    refine; ``band`` (refine only) fits the frequencies ``|k| ≤ band`` cycles/pixel alone;
    ``seed`` seeds autodecode's random starts; ``prefetch`` batches are read ahead on a thread
    (``0``: none).
    """
    check_method(model, method)
    if band is not None and method != "refine":
        raise ValueError(f"band applies to method 'refine' only, not {method!r}")
    if method == "amortized":
        return encode_dataset(model, dataset, device, batch_size=batch_size, prefetch=prefetch)
    common = {"batch_size": batch_size, "steps": steps, "lr": lr, "prefetch": prefetch}
    if method == "refine":
        common["steps"] = REFINE_STEPS if steps is None else steps
        common["lr"] = REFINE_LR if lr is None else lr
        return refine_dataset(model, dataset, device, band=band, **common), None
    z = autodecode_dataset(model, dataset, device, seed=seed, **common)
    return z, None
