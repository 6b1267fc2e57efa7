"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny simulated dataset directory: 96 images of 16 px, 4 igg-1d conformations, SNR 1."""
    cfg = SimulationConfig(box=16, n_images=96, snr=1.0, seed=0, oversample=1)
    return simulate_phantom(
        tmp_path_factory.mktemp("data"), PHANTOMS.build("igg-1d", n_conformations=4), cfg
    )
