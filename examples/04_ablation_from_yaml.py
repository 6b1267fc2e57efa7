"""Run an ablation arm from a YAML file with the command line, no code changed.

Writes ``arm.yaml`` (the paper's recipe with SimSiam in place of VICReg, a smaller λ, and no
learning-rate plateau), then runs ``cryonoo simulate`` and ``cryonoo train --config arm.yaml``
with one more setting given by ``--set``. Every field of a recipe is reachable this way:
``cryonoo config RECIPE --full`` prints them all, by section.

Run: ``python examples/04_ablation_from_yaml.py`` (CPU, under a minute).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ARM = """\
recipe: cryonoo          # start from the paper's recipe
name: simsiam-small-lambda
model: {enc_dim: 32, dec_dim: 32, zdim: 4}
optim: {epochs: 3, batch_size: 32, lr_plateau: false}
ssl: {objective: simsiam, weight: 0.1, warmup: 1}
output: {checkpoint_every: 3}
"""


def cryonoo(*args: object) -> None:
    command = [sys.executable, "-m", "cryonoo.cli", *map(str, args)]
    print("$ cryonoo", " ".join(map(str, args)))
    subprocess.run(command, check=True)


def main() -> None:
    root = Path(tempfile.mkdtemp())
    (root / "arm.yaml").write_text(ARM)
    cryonoo("simulate", root / "data", "-D", 16, "-n", 128, "--n-conformations", 4, "--seed", 0)
    cryonoo(
        "train", root / "data", "-o", root / "run", "--config", root / "arm.yaml",
        "--set", "ssl.head=64-64", "--device", "cpu",
    )  # fmt: skip
    saved = json.loads((root / "run" / "config.json").read_text())["train"]
    print({k: saved[k] for k in ("name", "ssl", "ssl_weight", "head", "lr_plateau", "epochs")})
    assert (saved["ssl"], saved["ssl_weight"], saved["head"]) == ("simsiam", 0.1, "64-64")


if __name__ == "__main__":
    main()
