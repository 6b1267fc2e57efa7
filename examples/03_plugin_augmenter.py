"""Add an augmenter from outside the package and train CryoNOO with it.

``BandLimit`` makes each view the training image low-passed at a random radius, plus noise of
the data's own σ. It registers in :data:`cryonoo.ssl.augment.AUGMENTERS` under a name, declares
what it needs from the run (``run_context = ("sigma", "noise_factors")``: the trainer passes
the data's σ and the recipe's noise factors, one view per factor), and any recipe can then use
it by that name. In a package of your own, make the registration an entry point so that
`cryonoo list` and every ``cryonoo train --set ssl.augment=…`` see it without an import::

    [project.entry-points."cryonoo.plugins"]
    my_parts = "my_package.augmenters"

Run: ``python examples/03_plugin_augmenter.py`` (CPU, under a minute).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.io.dataset import open_dataset
from cryonoo.physics.lattice import radial_index
from cryonoo.ssl.augment import AUGMENTERS, recenter
from cryonoo.train.recipes import get_recipe
from cryonoo.train.trainer import train
from cryonoo.types import Batch, ReconstructionModel, StepOutput, Views


@AUGMENTERS.register("bandlimit", help="Low-passed copies of the image plus the data's noise.")
class BandLimit:
    """Views ``(J, B, D, D)``: the image low-passed at radius ``U(min_radius, D/2)`` pixels
    (a disk in the data domain, the centred Hartley lattice), plus noise of std ``f_j·σ``."""

    run_context = ("sigma", "noise_factors")  # what the trainer passes (augment.RUN_CONTEXT)
    views_from_input = True  # views derive from batch.images (re-centred here)

    def __init__(self, sigma: float, noise_factors=(1.0, 1.0), min_radius: float = 3.0) -> None:
        self.sigma, self.noise_factors, self.min_radius = sigma, tuple(noise_factors), min_radius
        self.num_views = len(self.noise_factors)

    def make_views(
        self,
        batch: Batch,
        model: ReconstructionModel,
        step: StepOutput,
        generator: torch.Generator | None = None,
    ) -> Views:
        images = batch.images.detach()
        J, (B, D, _) = self.num_views, images.shape
        radius = radial_index(D, device=images.device)
        cut = self.min_radius + (D / 2 - self.min_radius) * torch.rand(
            J, B, 1, 1, generator=generator
        )
        factors = torch.tensor(self.noise_factors).view(J, 1, 1, 1)
        noise = torch.randn(J, *images.shape, generator=generator) * factors * self.sigma
        views = images * (radius <= cut) + noise
        return Views(recenter(views, batch.trans), batch.ctf, rot=batch.rot.expand(J, -1, -1, -1))

    def __call__(self, batch, model, step, generator=None):
        return self.make_views(batch, model, step, generator).as_tuple()


def main() -> None:
    root = Path(tempfile.mkdtemp())
    config = SimulationConfig(box=16, n_images=128, snr=0.5, seed=0, oversample=1)
    data = simulate_phantom(root / "data", PHANTOMS.build("igg-1d", n_conformations=4), config)
    recipe = get_recipe("cryonoo").replace(
        {
            "ssl.augment": "bandlimit",
            "ssl.noise_factors": (1.0, 1.0),
            "optim.epochs": 3,
            "ssl.warmup": 1,
            "optim.batch_size": 32,
            "model.enc_dim": 32,
            "model.dec_dim": 32,
            "ssl.head": "64-64",
        },
        name="bandlimit-demo",
    )
    result = train(recipe, open_dataset(data.root, ind="train"), root / "run", device="cpu")
    last = result.stats[-1]
    print(f"epoch {last['epoch']}: model loss {last['model_loss']:.3f}, SSL {last['ssl/loss']:.3f}")
    assert last["ssl_active"] and torch.isfinite(torch.tensor(last["ssl/loss"]))


if __name__ == "__main__":
    main()
