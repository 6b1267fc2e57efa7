"""Latents of a whole dataset by either kind of inference, streamed in batches.

* ``amortized`` — one encoder pass per batch (:class:`~cryonoo.models.vae.HetVAE`); the
  posterior means, exactly :func:`~cryonoo.train.trainer.encode_dataset`.
* ``autodecode`` — test-time optimization per batch
  (:meth:`~cryonoo.models.autodecoder.AutoDecoder.fit_latents`, all images of a batch at once):
  needs the poses (and uses shifts and CTF when the dataset has them).

Latents come back in dataset order as ``(N, zdim)`` float32 arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from cryonoo.io.dataset import ParticleDataset, make_loader
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.train.trainer import encode_dataset

__all__ = ["METHODS", "autodecode_dataset", "check_method", "infer_latents"]

METHODS = ("amortized", "autodecode")


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
            f"model is a {type(model).__name__}: use --method amortized"
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
) -> np.ndarray:
    """``(N, zdim)`` latents of every particle of ``dataset`` fitted with the frozen decoder.

    ``init="random"`` draws the starting latents from a generator seeded with ``seed`` (one
    stream across batches, so the result depends on ``seed`` and ``batch_size`` only).
    """
    generator = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for batch in make_loader(dataset, batch_size, shuffle=False, pin_memory=False):
        b = batch.to(device)
        z = model.fit_latents(b.images, b.rot, b.ctf, b.trans, steps, lr, generator, init=init)
        out.append(z.float().cpu())
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
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mu, logvar)`` (amortized) or ``(z, None)`` (autodecode), each ``(N, zdim)``; a lazy
    ``dataset`` is streamed batch by batch (:func:`cryonoo.io.dataset.make_loader`)."""
    check_method(model, method)
    if method == "amortized":
        return encode_dataset(model, dataset, device, batch_size=batch_size)
    z = autodecode_dataset(
        model, dataset, device, batch_size=batch_size, steps=steps, lr=lr, seed=seed
    )
    return z, None
