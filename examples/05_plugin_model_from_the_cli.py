"""Train a model of your own from the command line, through a plug-in, with self-distillation.

A package registers a reconstruction model in :data:`cryonoo.models.zoo.MODELS` from the
module its ``cryonoo.plugins`` entry point names. Here that package is written to a temporary
directory (a module and its ``.dist-info``, what ``pip install`` would leave) and put on
``PYTHONPATH``; then the real command line lists the model, trains it with the paper's
self-distillation recipe (``--set model.kind=toy-mlp``) and encodes the particles with it.

What the trainer needs of a model: the :class:`cryonoo.types.ReconstructionModel` methods
(``training_step``, ``encode``, ``render``), a ``zdim`` attribute and ``config()`` (the
keyword arguments that rebuild it, saved in the run's ``config.json``). Its constructor takes
whichever of the run's settings it names (``D``, ``zdim``, ``enc_dim``, …).

Run: ``python examples/05_plugin_model_from_the_cli.py`` (CPU, under a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN = '''
"""A toy reconstruction model: MLP encoder, MLP decoder from (latent, pose), no CTF."""
import torch
import torch.nn.functional as F
from torch import nn

from cryonoo.models.zoo import MODELS
from cryonoo.types import StepOutput


class ToyMLP(nn.Module):
    def __init__(self, D: int, zdim: int = 2, enc_dim: int = 64) -> None:
        super().__init__()
        self.D, self.zdim, self.hidden = D, zdim, enc_dim
        self.encoder = nn.Sequential(
            nn.Linear(D * D, enc_dim), nn.ReLU(), nn.Linear(enc_dim, zdim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(zdim + 9, enc_dim), nn.ReLU(), nn.Linear(enc_dim, D * D)
        )

    def config(self) -> dict:
        return {"D": self.D, "zdim": self.zdim, "enc_dim": self.hidden}

    def encode(self, images, ctf=None, trans=None):
        return self.encoder(images.flatten(1))

    def render(self, z, rot, ctf=None):
        return self.decoder(torch.cat([z, rot.flatten(1)], dim=-1)).view(-1, self.D, self.D)

    def training_step(self, batch):
        z = self.encode(batch.images, batch.ctf, batch.trans)
        render = self.render(z, batch.rot, batch.ctf)
        loss = F.mse_loss(render, batch.images)
        return StepOutput(loss=loss, z=z, terms={"recon": loss.detach()}, render=render)


MODELS.add("toy-mlp", ToyMLP, help="A toy MLP autoencoder from the toy-cryonoo-model plug-in.")
'''


def write_plugin(site: Path) -> None:
    """A module plus the ``.dist-info`` whose entry point names it."""
    (site / "toy_cryonoo_model.py").write_text(PLUGIN)
    info = site / "toy_cryonoo_model-0.1.dist-info"
    info.mkdir()
    metadata = "Metadata-Version: 2.1\nName: toy-cryonoo-model\nVersion: 0.1\n"
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text("[cryonoo.plugins]\ntoy = toy_cryonoo_model\n")


def cryonoo(site: Path, *args: object) -> str:
    print("$ cryonoo", " ".join(map(str, args)))
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "cryonoo.cli", *map(str, args)]
    done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return done.stdout


def main() -> None:
    root = Path(tempfile.mkdtemp())
    site = root / "site"
    site.mkdir()
    write_plugin(site)
    assert "toy-mlp" in cryonoo(site, "list")
    data, run = root / "data", root / "run"
    cryonoo(site, "simulate", data, "-D", 16, "-n", 128, "--n-conformations", 4, "--seed", 0)
    cryonoo(
        site, "train", data, "-o", run, "--recipe", "cryonoo", "--set", "model.kind=toy-mlp",
        "--set", "model.enc_dim=64", "--set", "ssl.warmup=1", "--set", "ssl.head=64-64",
        "-n", 3, "--device", "cpu",
    )  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    print("model:", saved["train"]["model"], saved["model"])
    assert saved["train"]["model"] == "toy-mlp" and saved["model"]["zdim"] == 8
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["ssl_active"], "self-distillation ran after the warm-up"
    cryonoo(site, "encode", run, data, "-o", root / "z.pkl", "--device", "cpu")
    print("encoded:", (root / "z.pkl").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
