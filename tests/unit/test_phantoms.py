import numpy as np
import pytest
import torch

from cryonoo.data.phantoms import PHANTOMS, Phantom, render_atoms


def test_registry_has_builtin_phantoms():
    assert {"igg-1d", "igg-rl", "igg-states", "igg-bound"} <= set(PHANTOMS.names())
    with pytest.raises(KeyError, match="choose from"):
        PHANTOMS.get("igg-2d")


@pytest.mark.parametrize("name", PHANTOMS.names())
def test_phantom_contract(name):
    """Every phantom: deterministic, fits in the field of view, renders finite positive maps."""
    a, b = PHANTOMS.build(name), PHANTOMS.build(name)
    assert isinstance(a, Phantom) and len(a) >= 2
    for ca, cb in zip(a.conformations, b.conformations, strict=True):
        assert np.array_equal(ca, cb)
    radius = max(np.linalg.norm(c, axis=1).max() for c in a.conformations)
    # inside cryoDRGN's default real-space window (0.85 of the half box)
    assert radius < 0.8 * 256.0 / 2
    vol = a.volume(0, 32)
    assert vol.shape == (32, 32, 32) and torch.isfinite(vol).all() and vol.min() >= 0
    assert not torch.equal(a.volume(0, 32), a.volume(len(a) - 1, 32))


def test_igg_1d_motion_is_one_arm_on_an_arc():
    p = PHANTOMS.build("igg-1d", n_conformations=5)
    first, last = p.conformations[0], p.conformations[-1]
    moved = np.linalg.norm(first - last, axis=1) > 1e-6
    # exactly one arm (one contiguous block of atoms) moves, the rest is fixed
    assert 0.2 < moved.mean() < 0.45
    # the moving atoms keep their distance to the hinge (rotation about the origin)
    np.testing.assert_allclose(
        np.linalg.norm(first[moved], axis=1), np.linalg.norm(last[moved], axis=1), rtol=1e-9
    )
    # consecutive conformations are equally spaced along the arc
    steps = [np.linalg.norm(p.conformations[i + 1] - p.conformations[i]) for i in range(4)]
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)


def test_igg_states_are_two_independent_arms():
    """State 2a + b: arm A's state a, arm B's state b; each moving block is about a third of the
    atoms, the two blocks are disjoint, and each moves rigidly about the hinge (the origin)."""
    p = PHANTOMS.build("igg-states")
    assert len(p) == 4 and len({c.shape for c in p.conformations}) == 1
    base = p.conformations[0]
    moved = [np.linalg.norm(c - base, axis=1) > 1e-6 for c in p.conformations]
    assert not moved[1][moved[2]].any()  # arm B (state 1) and arm A (state 2) are disjoint
    np.testing.assert_array_equal(moved[3], moved[1] | moved[2])  # state 3 moves both
    for state in (1, 2):
        assert 0.25 < moved[state].mean() < 0.4
        np.testing.assert_allclose(
            np.linalg.norm(base[moved[state]], axis=1),
            np.linalg.norm(p.conformations[state][moved[state]], axis=1),
            rtol=1e-9,
        )


def test_igg_bound_adds_a_small_domain():
    p = PHANTOMS.build("igg-bound")
    sizes = [len(c) for c in p.conformations]
    assert sizes[0] == sizes[2] < sizes[1] == sizes[3]
    assert 0.03 < (sizes[1] - sizes[0]) / sizes[1] < 0.08  # the bound domain: ~5 % of the mass


def test_render_mass_and_centre():
    """A single atom at the origin: unit mass centred on voxel box//2; shifts move it in x/y/z."""
    box, apix = 32, 2.0
    vol = render_atoms(np.zeros((1, 3)), box, apix, sigma_A=3.0, dtype=torch.float64)
    assert vol.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert np.unravel_index(int(vol.argmax()), vol.shape) == (16, 16, 16)
    vol = render_atoms(np.array([[4.0, -6.0, 8.0]]), box, apix, sigma_A=2.0)
    # [z, y, x] indexing: x = +2 px, y = −3 px, z = +4 px
    assert np.unravel_index(int(vol.argmax()), vol.shape) == (20, 13, 18)


def test_bad_input():
    with pytest.raises(ValueError, match="atoms_A"):
        render_atoms(np.zeros((3, 2)), 16, 1.0)
    with pytest.raises(ValueError, match="apix"):
        render_atoms(np.zeros((3, 3)), 16, 0.0)
    with pytest.raises(ValueError, match="n_conformations"):
        PHANTOMS.build("igg-1d", n_conformations=0)
    with pytest.raises(IndexError):
        PHANTOMS.build("igg-states").volume(4, 16)
    for name in ("igg-states", "igg-bound"):
        with pytest.raises(ValueError, match="exactly 4 states"):
            PHANTOMS.build(name, n_conformations=3)
