"""Wrap any autoencoder with CryoNOO self-distillation.

A ~40-line toy autoencoder implements the three methods of
:class:`cryonoo.types.ReconstructionModel` (``training_step``, ``encode``, ``render``) on the
data domain (centered Hartley images on the odd lattice ``D = box + 1``). ``SelfDistillation``
then adds the VICReg term on noisy re-renderings of its own output after one warm-up epoch.

Run: ``python examples/02_wrap_any_autoencoder.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.physics.shifts import shift_ht
from cryonoo.ssl import SelfDistillation, from_real_space
from cryonoo.types import Batch, StepOutput

BOX, ZDIM = 16, 2
D = BOX + 1


class ToyAutoencoder(nn.Module):
    """MLP encoder on the image, MLP decoder from (latent, pose) to a real-space image."""

    def __init__(self, zdim: int = ZDIM, hidden: int = 64) -> None:
        super().__init__()
        self.zdim = zdim
        self.encoder = nn.Sequential(nn.Linear(D * D, hidden), nn.ReLU(), nn.Linear(hidden, zdim))
        self.decoder = nn.Sequential(
            nn.Linear(zdim + 9, hidden), nn.ReLU(), nn.Linear(hidden, BOX * BOX)
        )

    def encode(
        self, images: Tensor, ctf: Tensor | None = None, trans: Tensor | None = None
    ) -> Tensor:
        """``(B, D, D)`` → ``(B, zdim)``; ``trans`` ``(B, 2)`` pixels centres the images first
        (the toy data here are centred, so it stays ``None``). This toy ignores the CTF."""
        if trans is not None:
            images = shift_ht(images, trans)
        return self.encoder(images.flatten(1))

    def render(self, z: Tensor, rot: Tensor, ctf: Tensor | None = None) -> Tensor:
        """``(B, zdim)``, ``(B, 3, 3)`` → ``(B, D, D)`` data-domain images."""
        real = self.decoder(torch.cat([z, rot.flatten(1)], dim=-1)).view(-1, BOX, BOX)
        return from_real_space(real) / BOX

    def training_step(self, batch: Batch) -> StepOutput:
        z = self.encode(batch.images, batch.ctf, batch.trans)
        render = self.render(z, batch.rot, batch.ctf)
        loss = F.mse_loss(render, batch.images)
        return StepOutput(loss=loss, z=z, terms={"recon": loss.detach()}, render=render)


def toy_images(n: int, generator: torch.Generator, sigma: float) -> Tensor:
    """Two Gaussian blobs whose separation varies per image, plus noise; data domain."""
    coords = torch.arange(BOX, dtype=torch.float32) - BOX // 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    gap = 2 + 4 * torch.rand(n, 1, 1, generator=generator)
    blob = torch.exp(-((xx - gap) ** 2 + yy**2) / 4) + torch.exp(-((xx + gap) ** 2 + yy**2) / 4)
    noisy = blob + sigma * torch.randn(n, BOX, BOX, generator=generator)
    return from_real_space(noisy) / BOX  # divide by BOX to keep Hartley values O(1)


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sigma_raw = 0.5
    images = toy_images(256, g, sigma_raw)
    rot = torch.eye(3).expand(len(images), 3, 3)
    model = ToyAutoencoder()
    # the data were divided by BOX, so the real-space noise std in data units is σ / BOX
    wrapped = SelfDistillation(
        model, "vicreg", "reproject-noise", weight=0.3, warmup_epochs=1,
        sigma=sigma_raw / BOX, noise_factors=(1.0, 2.0, 3.0), head="64-64-64",
    )  # fmt: skip
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-3)
    for epoch in range(3):
        wrapped.set_epoch(epoch)
        for start in range(0, len(images), 32):
            batch = Batch(images=images[start : start + 32], rot=rot[start : start + 32])
            out = wrapped.training_step(batch, g)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        ssl = out.terms.get("ssl/loss")
        print(
            f"epoch {epoch}: loss {out.loss.item():.4f}  recon {out.terms['recon'].item():.4f}  "
            f"ssl {'off (warm-up)' if ssl is None else f'{ssl.item():.4f}'}"
        )


if __name__ == "__main__":
    main()
