import pytest
import torch

from cryonoo.physics.lattice import (
    Lattice,
    check_band,
    circular_mask,
    half_count,
    lattice_coords,
    lattice_freqs,
)


def test_coords_layout_matches_cryodrgn():
    D = 5
    c = lattice_coords(D)
    assert c.shape == (25, 3)
    assert torch.all(c[:, 2] == 0)
    # x is the fast (column) axis, y the row axis, values linspace(-0.5, 0.5, D)
    assert torch.allclose(c[:5, 0], torch.linspace(-0.5, 0.5, 5))
    assert torch.allclose(c[:5, 1], torch.full((5,), -0.5))
    assert torch.allclose(c[::5, 1], torch.linspace(-0.5, 0.5, 5))
    # DC at flat index D^2 // 2
    assert torch.all(c[D * D // 2] == 0)


def test_freqs_are_cycles_per_pixel():
    f = lattice_freqs(65)
    assert f.abs().max() == pytest.approx(0.5)
    # spacing 1/box
    assert (f[1, 0] - f[0, 0]).item() == pytest.approx(1 / 64)


def test_mask_counts_and_point_symmetry():
    D = 31
    m = circular_mask(D)
    assert not m[D * D // 2]
    # cryoDRGN: 708 encoder pixels for 30-px images
    assert int(m.sum()) == 708
    pts = lattice_coords(D)[m]
    assert torch.allclose(pts, -pts.flip(0))
    n = pts.shape[0]
    assert half_count(n) == n // 2 and half_count(n + 1) == n // 2 + 1


def test_mask_radius_units_agree():
    D = 65
    a = circular_mask(D, radius_px=16)
    b = circular_mask(D, radius_freq=16 / 64)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        circular_mask(D, radius_px=2, radius_freq=0.1)


@pytest.mark.parametrize("bad", [4, 1, 2.0, -3])
def test_even_or_bad_D_rejected(bad):
    with pytest.raises(ValueError, match="odd"):
        lattice_coords(bad)


def test_lattice_object_caches_masks():
    lat = Lattice(33)
    assert lat.box == 32
    m1 = lat.circular_mask()
    assert m1 is lat.circular_mask()
    assert torch.equal(m1, circular_mask(33))
    assert torch.allclose(lat.freqs2d, lattice_freqs(33))


def test_check_band_takes_radii_up_to_nyquist_only():
    assert check_band(0.25) == 0.25 and check_band(0.5) == 0.5 and check_band(1 / 3) == 1 / 3
    assert isinstance(check_band(torch.tensor(0.2).item()), float)
    for bad in (0, 0.0, -0.1, 0.51, True, "0.2", None, float("nan")):
        with pytest.raises(ValueError, match=r"--refine-band must be in \(0, 0.5\] cycles/pixel"):
            check_band(bad, "--refine-band")
