import math

import numpy as np
import pytest
import torch

from cryonoo.physics.masks import (
    circular_mask_2d,
    radius_grid,
    soft_circular_window,
    soft_spherical_mask,
    spherical_mask,
)


def window_ref(box: int, inner: float, outer: float) -> np.ndarray:
    """cryoDRGN's window written out: half-box radius on linspace(−1, 1, box+1)[:-1]."""
    axis = np.linspace(-1, 1, box + 1)[:-1]
    r = np.sqrt(axis[None, :] ** 2 + axis[:, None] ** 2)
    return np.clip(1 - (r - inner) / (outer - inner), 0, 1)


@pytest.mark.parametrize("box", [30, 64, 33])
def test_window_matches_definition(box):
    win = soft_circular_window(box)
    assert win.shape == (box, box) and win.dtype == torch.float32
    assert np.allclose(win.numpy(), window_ref(box, 0.85, 0.99), atol=1e-6)


def test_window_centre_corners_ramp():
    box = 64
    win = soft_circular_window(box, 0.5, 0.9)
    assert win[box // 2, box // 2] == 1.0
    assert win[0, 0] == 0.0 and win[0, -1] == 0.0 and win[-1, 0] == 0.0 and win[-1, -1] == 0.0
    # along the +x ray from the centre: 1 up to r = 0.5 (16 px), linear down to 0 at 0.9 (28.8 px)
    ray = win[box // 2, box // 2 :].double().numpy()
    r = np.arange(ray.size) / (box / 2)
    assert np.all(np.diff(ray) <= 0)
    assert np.all(ray[r <= 0.5] == 1.0) and np.all(ray[r >= 0.9] == 0.0)
    ramp = (r > 0.5) & (r < 0.9)
    assert np.allclose(ray[ramp], (0.9 - r[ramp]) / 0.4, atol=1e-6)
    assert np.allclose(win.numpy(), win.numpy().T)  # symmetric about the diagonal


def test_window_validation():
    with pytest.raises(ValueError, match="inner_radius must be < outer_radius"):
        soft_circular_window(32, 0.9, 0.8)
    with pytest.raises(ValueError, match="inner_radius"):
        soft_circular_window(32, -0.1, 0.8)
    with pytest.raises(ValueError, match="box"):
        soft_circular_window(0)


def test_radius_grid_centre():
    r = radius_grid(8, 2)
    assert r[4, 4] == 0 and r[4, 7] == 3 and r[0, 4] == 4
    r3 = radius_grid(7, 3)
    assert r3[3, 3, 3] == 0 and r3[0, 3, 3] == 3 and r3.shape == (7, 7, 7)


def test_circular_mask_2d():
    m = circular_mask_2d(16, 5)
    assert m.shape == (16, 16) and m.dtype == torch.float32
    y, x = np.meshgrid(np.arange(16) - 8, np.arange(16) - 8, indexing="ij")
    assert np.array_equal(m.numpy(), (x**2 + y**2 <= 25).astype(np.float32))
    assert m[8, 13] == 1 and m[8, 14] == 0 and m[8, 3] == 1 and m[8, 2] == 0


def test_spherical_masks():
    box, radius, edge = 24, 7.0, 4.0
    hard = spherical_mask(box, radius)
    soft = soft_spherical_mask(box, radius, edge)
    assert hard.shape == soft.shape == (box, box, box)
    assert hard[12, 12, 12] == 1 and hard[12, 12, 19] == 1 and hard[12, 12, 20] == 0
    assert float(hard.sum()) == float(
        sum(1 for i in range(-12, 12) for j in range(-12, 12) for k in range(-12, 12)
            if i * i + j * j + k * k <= 49)
    )  # fmt: skip
    assert float(soft.min()) >= 0 and float(soft.max()) <= 1
    r = radius_grid(box, 3)
    inside, outside = r <= radius, r >= radius + edge
    assert torch.equal(soft[inside], hard[inside])
    assert torch.all(soft[outside] == 0) and torch.all(hard[outside] == 0)
    # cosine edge: halfway through the edge the mask is 0.5
    assert soft[12, 12, 12 + 9].item() == pytest.approx(0.5, abs=1e-6)  # r = 9 = 7 + 4/2
    expected = 0.5 * (1 + math.cos(math.pi * (8 - radius) / edge))
    assert soft[12, 12, 20].item() == pytest.approx(expected, abs=1e-6)
    ray = soft[12, 12, 12:].numpy()
    assert np.all(np.diff(ray) <= 0)
    assert torch.equal(soft_spherical_mask(box, radius, 0.0), hard)


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (circular_mask_2d, (16, -1.0)),
        (circular_mask_2d, (16, 0.0)),
        (spherical_mask, (16, float("nan"))),
        (spherical_mask, (16, 100.0)),
        (soft_spherical_mask, (16, 5.0, -1.0)),
    ],
)
def test_radius_validation(fn, args):
    with pytest.raises(ValueError, match="_px"):
        fn(*args)
