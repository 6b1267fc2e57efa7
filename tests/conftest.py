"""Shared fixtures: sample-file location, devices, seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

_REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("CRYONOO_SAMPLES", _REPO.parent / "shared" / "samples"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def samples() -> Path:
    """Directory of real cryoDRGN/RELION/cryoSPARC sample files; skips when absent."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample files not found at {SAMPLES} (set CRYONOO_SAMPLES)")
    return SAMPLES


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available device (CPU always; CUDA when present)."""
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0."""
    return torch.Generator().manual_seed(0)
