"""The device a command runs on, and the posterior latents of a whole dataset.

:func:`resolve_device` turns ``--device`` into a :class:`torch.device`; :func:`encode_dataset`
runs an encoder over every particle of a dataset in dataset order (what training writes to
``z.N.pkl`` and what ``encode``, ``evaluate`` and the benchmarks use).
"""

from __future__ import annotations

import numpy as np
import torch

from cryonoo.io.dataset import ParticleDataset, in_order
from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.vae import HetVAE
from cryonoo.types import ReconstructionModel

__all__ = ["encode_dataset", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; errors name the missing device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


@torch.no_grad()
def encode_dataset(
    model: HetVAE | ReconstructionModel,
    dataset: ParticleDataset,
    device: torch.device,
    batch_size: int = 512,
    *,
    prefetch: int = 2,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Posterior ``(mu, logvar)`` of every particle of ``dataset`` in dataset order.

    Each ``(N, zdim)`` float32; a model without ``encode_distribution`` (any other
    :class:`~cryonoo.types.ReconstructionModel`) gives its ``encode`` means and ``None``.
    Every batch is encoded with its CTF, shifts (pixels) and poses (``Batch.rot``,
    ``(B, 3, 3)``): a pose-conditioned encoder (``pose-mlp``) needs them, the others ignore
    them. A dataset opened without poses has identity rotations, which a
    pose-conditioned encoder would take at face value.

    The next ``prefetch`` batches are read and preprocessed on a background thread while the
    current one is encoded (:func:`cryonoo.io.prefetch.prefetched`; ``0``: in turn). The
    latents do not depend on it. Call under ``torch.autocast`` for reduced-precision
    networks (``cryonoo encode --precision bf16``)."""
    if isinstance(model, AutoDecoder):
        raise ValueError(
            "an autodecoder has no encoder to encode particles with: its latents are fitted "
            "with the poses (cryonoo encode --method autodecode, cryonoo bench inference)"
        )
    was_training = model.training
    model.eval()
    mus, logvars = [], []
    posterior = hasattr(model, "encode_distribution")  # else: a plain `encode` (means only)
    for batch in in_order(dataset, batch_size, prefetch=prefetch):
        b = batch.to(device)
        if posterior:
            mu, logvar = model.encode_distribution(b.images, b.ctf, b.trans, b.rot)
            logvars.append(logvar.float().cpu())
        else:
            mu = model.encode(b.images, b.ctf, b.trans)
        mus.append(mu.float().cpu())
    model.train(was_training)
    zdim = model.zdim
    if not mus:
        empty = np.zeros((0, zdim), np.float32)
        return empty, (empty.copy() if posterior else None)
    return torch.cat(mus).numpy(), (torch.cat(logvars).numpy() if posterior else None)
