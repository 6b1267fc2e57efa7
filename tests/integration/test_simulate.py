"""The simulator writes a complete, self-consistent dataset directory with the right physics."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.io.cryodrgn import load_ctf_pkl, load_poses
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.physics.noise import estimate_noise_sigma


def _simulate(tmp_path, name="sim", **overrides):
    cfg = SimulationConfig(**{"box": 32, "n_images": 400, "snr": 0.1, "seed": 3, **overrides})
    phantom = PHANTOMS.build("igg-1d", n_conformations=8)
    return simulate_phantom(tmp_path / name, phantom, cfg)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("sim"), shift_extent_px=3.0)


def test_layout_and_consistency(dataset):
    root = dataset.root
    for name in [
        "particles.mrcs",
        "poses.pkl",
        "ctf.pkl",
        "labels.npy",
        "split.npz",
        "config.json",
    ]:
        assert (root / name).is_file(), name
    assert [p.name for p in dataset.gt_volumes] == [f"vol_{k:03d}.mrc" for k in range(8)]
    cfg = json.loads((root / "config.json").read_text())
    assert cfg["n_images"] == 400 and cfg["box"] == 32 and cfg["noise_sigma"] > 0
    labels = np.load(root / "labels.npy")
    assert labels.shape == (400,) and set(labels.tolist()) == set(range(8))
    np.testing.assert_array_equal(np.bincount(labels), 50)
    train, test = dataset.split["train"], dataset.split["test"]
    assert len(test) == 80 and len(train) == 320
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(400))
    with mrcfile.open(root / "particles.mrcs") as mrc:
        assert mrc.data.shape == (400, 32, 32)
        assert mrc.voxel_size.x == pytest.approx(cfg["apix"], rel=1e-5)
    with mrcfile.open(dataset.gt_volumes[0]) as mrc:
        assert mrc.data.shape == (32, 32, 32)
        assert mrc.voxel_size.x == pytest.approx(cfg["apix"], rel=1e-5)
    rots, trans = load_poses(root / "poses.pkl")
    assert rots.shape == (400, 3, 3) and trans.shape == (400, 2)
    assert np.abs(trans).max() <= 3.0 / 33 + 1e-9
    ctf = load_ctf_pkl(root / "ctf.pkl")
    assert ctf.shape == (400, 9) and np.all(ctf[:, 0] == 32)
    np.testing.assert_allclose(ctf[:, 5:8], [[300, 2.7, 0.1]] * 400, rtol=1e-6)


def test_seeded_and_bit_exact(tmp_path):
    kw = {"n_images": 32, "oversample": 1}
    a = _simulate(tmp_path, "a", **kw)
    b = _simulate(tmp_path, "b", **kw)
    c = _simulate(tmp_path, "c", seed=4, **kw)
    read = [mrcfile.read(d.particles) for d in (a, b, c)]
    assert np.array_equal(read[0], read[1])
    assert not np.array_equal(read[0], read[2])
    assert np.array_equal(load_poses(a.poses)[0], load_poses(b.poses)[0])


def test_snr_and_noise_sigma(tmp_path):
    """Same seed, SNR 0.1 vs (nearly) noise-free: the difference is the noise."""
    noisy = _simulate(tmp_path, "noisy", n_images=200, snr=0.1, oversample=1)
    clean = _simulate(tmp_path, "clean", n_images=200, snr=1e12, oversample=1)
    x, y = mrcfile.read(noisy.particles).astype(np.float64), mrcfile.read(clean.particles)
    noise = x - y
    measured_snr = y.var() / noise.var()
    assert measured_snr == pytest.approx(0.1, rel=0.05)
    sigma = noisy.config["noise_sigma"]
    assert noise.std() == pytest.approx(sigma, rel=0.02)
    est = estimate_noise_sigma(torch.from_numpy(x))
    assert est.sigma == pytest.approx(sigma, rel=0.05)


def test_load_dataset_dir_errors(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset_dir(tmp_path / "nope")
    (tmp_path / "partial").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing particles\.mrcs"):
        load_dataset_dir(tmp_path / "partial")


def test_bad_config():
    with pytest.raises(ValueError, match="box"):
        SimulationConfig(box=33)
    with pytest.raises(ValueError, match="snr"):
        SimulationConfig(snr=0)
    with pytest.raises(KeyError, match="choose from"):
        simulate_phantom("/tmp/unused", "no-such-phantom", SimulationConfig())


@pytest.mark.parametrize("with_ctf_and_shifts", [False, True])
def test_backprojection_recovers_ground_truth(tmp_path, with_ctf_and_shifts):
    """Noise-free simulated images + their stored poses/CTF back-project to the GT map.

    Proves the simulator, the pose/shift/CTF file conventions and the projector agree: the data
    are contrast-inverted (white), shifts are re-centred by ``trans × (box + 1)`` pixels and the
    CTF is read back from ctf.pkl.
    """
    from cryonoo.eval.fsc import fsc_curve
    from cryonoo.physics.ctf import ctf_from_params, ctf_params_for_box
    from cryonoo.physics.lattice import lattice_freqs
    from cryonoo.physics.shifts import shift_images
    from cryonoo.physics.simulate import CTFDistribution
    from cryonoo.physics.slice import backproject

    box = 32
    cfg = SimulationConfig(
        box=box,
        n_images=2000,
        snr=1e12,
        seed=0,
        ctf=CTFDistribution() if with_ctf_and_shifts else None,
        shift_extent_px=3.0 if with_ctf_and_shifts else 0.0,
    )
    data = simulate_phantom(tmp_path, PHANTOMS.build("igg-1d", n_conformations=1), cfg)
    images = -torch.from_numpy(mrcfile.read(data.particles).astype(np.float64))
    rots, trans = load_poses(data.poses)
    images = shift_images(images, torch.from_numpy(trans * (box + 1)))
    ctf = None
    if with_ctf_and_shifts:
        params = ctf_params_for_box(load_ctf_pkl(data.ctf), box).double()
        freqs = lattice_freqs(box + 1, dtype=torch.float64)
        ctf = ctf_from_params(freqs, params).reshape(-1, box + 1, box + 1)
    volume = backproject(images, torch.from_numpy(rots), ctf=ctf)
    gt = torch.from_numpy(mrcfile.read(data.gt_volumes[0]).astype(np.float64))
    fsc = fsc_curve(volume, gt).fsc
    # every shell up to the last one below Nyquist (0.5 − 1/box cycles/px)
    assert fsc.min() > 0.9, fsc
    # and the same images without contrast inversion give the negative map
    assert fsc_curve(-volume, gt).fsc[1:].max() < -0.9


def test_open_dataset_from_directory_and_ctf_box_check(tmp_path):
    from cryonoo.io.cryodrgn import load_ctf_pkl, save_ctf_pkl
    from cryonoo.io.dataset import open_dataset

    data = _simulate(tmp_path, "d", box=16, n_images=40, oversample=1)
    train = open_dataset(data.root, ind="train", lazy=False)
    assert len(train) == len(data.split["train"]) and train.D == 17
    np.testing.assert_array_equal(train.indices, data.split["train"])
    batch = train[[0, 1]]
    assert batch.ctf.shape == (2, 8) and batch.images.shape == (2, 17, 17)
    # the split can also be named as split.npz:KEY
    test = open_dataset(data.particles, data.poses, data.ctf, ind=f"{data.root}/split.npz:test")
    np.testing.assert_array_equal(test.indices, data.split["test"])
    # a CTF file made for another box is refused unless rescaling is asked for
    ctf = load_ctf_pkl(data.ctf)
    ctf[:, 0] = 32
    save_ctf_pkl(tmp_path / "ctf32.pkl", ctf)
    with pytest.raises(ValueError, match=r"box size\(s\) \[32\] but the particles"):
        open_dataset(data.particles, data.poses, tmp_path / "ctf32.pkl")
    rescaled = open_dataset(data.particles, data.poses, tmp_path / "ctf32.pkl", ctf_rescale=True)
    assert rescaled.ctf[0, 0].item() == pytest.approx(32 * ctf[0, 1] / 16)
    with pytest.raises(ValueError, match=r"count mismatch|particles"):
        open_dataset(data.particles, data.poses, data.ctf, ind=np.arange(50))
