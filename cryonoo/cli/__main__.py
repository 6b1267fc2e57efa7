"""``python -m cryonoo.cli`` (used by torchrun)."""

from cryonoo.cli import app

app()
