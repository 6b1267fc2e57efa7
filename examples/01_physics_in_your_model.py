"""Use cryonoo's physics in a model of your own: a voxel map fitted by gradient descent.

The model is one ``(n, n, n)`` tensor. Its images are :func:`cryonoo.physics.slice.project`
(the Fourier slice theorem, differentiable) at known poses; the loss is the mean squared error
to noisy projections of a built-in phantom. Gradient descent through the projector recovers the
map; its FSC to the truth is compared with direct Fourier back-projection
(:func:`cryonoo.physics.slice.backproject`) of the same images.

Run: ``python examples/01_physics_in_your_model.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.eval.fsc import fsc_auc, fsc_curve
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.slice import backproject, project

BOX, N_IMAGES, NOISE_STD = 16, 400, 0.5


def main() -> None:
    g = torch.Generator().manual_seed(0)
    truth = PHANTOMS.build("igg-1d", n_conformations=1).volume(0, BOX).float()
    rot = random_rotations(N_IMAGES, g)
    clean = project(truth, rot)
    images = clean + NOISE_STD * clean.std() * torch.randn(clean.shape, generator=g)

    volume = torch.zeros(BOX, BOX, BOX, requires_grad=True)  # the whole "model"
    optimizer = torch.optim.Adam([volume], lr=0.2)
    for step in range(300):
        batch = torch.randint(N_IMAGES, (64,), generator=g)
        loss = (project(volume, rot[batch]) - images[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    fitted = fsc_auc(fsc_curve(volume.detach(), truth)).item()
    direct = fsc_auc(fsc_curve(backproject(images, rot), truth)).item()
    print(f"FSC_AUC to the truth: gradient descent {fitted:.3f}, back-projection {direct:.3f}")
    assert fitted > 0.8 * direct, "the fitted map should approach the direct reconstruction"


if __name__ == "__main__":
    main()
