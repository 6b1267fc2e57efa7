"""End to end: the VAE learns a small volume from noise-free projections, with the right hand."""

from __future__ import annotations

import torch
from torch import Tensor

from cryonoo.models import HetVAE
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.simulate import volume_spectrum
from cryonoo.physics.slice import extract_central_slices
from cryonoo.types import Batch


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _chiral_blobs(box: int, sigma: float = 1.5) -> Tensor:
    """Three Gaussian blobs at non-symmetric positions, ``[z, y, x]``."""
    centers = [(2.0, -1.5, 0.5), (-2.5, 0.5, -1.5), (0.0, 2.0, 2.0)]  # (x, y, z) px
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    return sum(
        torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
        for cx, cy, cz in centers
    )


def test_vae_learns_volume_with_correct_handedness() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to contention
    try:
        D = 17
        truth = _chiral_blobs(D - 1)
        g = torch.Generator().manual_seed(0)
        rot = random_rotations(1000, generator=g)
        images = extract_central_slices(volume_spectrum(truth), rot)  # (N, D, D) Hartley
        std = float(images.std())
        images = images / std
        torch.manual_seed(0)
        model = HetVAE(D, zdim=1, enc_layers=1, enc_dim=32, dec_layers=2, dec_dim=64)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            idx = torch.randint(0, len(rot), (32,), generator=g)
            out = model.training_step(Batch(images[idx], rot[idx]))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        vol = model.eval().volume(torch.zeros(1), norm_std=std)
    finally:
        torch.set_num_threads(threads)
    assert vol.shape == truth.shape
    c, c_mirror = _corr(vol, truth), _corr(vol, truth.flip(0))
    assert c > 0.8, c
    assert c > c_mirror + 0.2, (c, c_mirror)
