from __future__ import annotations

import numpy as np
import pytest
import torch

from cryonoo.io.dataset import (
    ParticleDataset,
    Preprocessing,
    estimate_norm_std,
    make_loader,
    preprocess_images,
)
from cryonoo.io.mrc import write_mrc
from cryonoo.io.stack import open_images
from cryonoo.physics.masks import soft_circular_window
from cryonoo.physics.rotations import random_rotations

N, BOX = 40, 16


def _numpy_sym_ht(x: np.ndarray) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fft2(np.fft.fftshift(x, axes=(-2, -1))), axes=(-2, -1))
    h = f.real - f.imag
    h = np.concatenate([h, h[:, :1]], axis=1)
    return np.concatenate([h, h[:, :, :1]], axis=2)


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, BOX, BOX)).astype(np.float32)
    write_mrc(tmp_path / "p.mrcs", images, voxel_size=2.0)
    return open_images(tmp_path / "p.mrcs"), images


@pytest.fixture
def poses():
    rots = random_rotations(N, torch.Generator().manual_seed(1))
    trans = torch.rand(N, 2, generator=torch.Generator().manual_seed(2)) * 0.1 - 0.05
    ctf = torch.tensor([[2.0, 15000, 14000, 10.0, 300, 2.7, 0.1, 0.0]]).repeat(N, 1)
    return rots, trans, ctf


def test_norm_std_matches_numpy(stack):
    source, images = stack
    # cryoDRGN: evenly spaced particles, inverted, no window
    assert estimate_norm_std(source, invert=True, n_images=10) == pytest.approx(
        float(_numpy_sym_ht(-images[::4]).std()), rel=1e-5
    )


def test_preprocess_order(stack):
    _, images = stack
    window = soft_circular_window(BOX)
    out = preprocess_images(torch.from_numpy(images[:3]), window=window, invert=True, norm_std=2.0)
    expected = _numpy_sym_ht(-(images[:3] * window.numpy())) / 2.0
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_lazy_equals_in_memory_and_subset(stack, poses):
    source, _ = stack
    rots, trans, ctf = poses
    subset = np.array([3, 7, 11, 20, 39])
    kw = {"indices": subset, "norm_std": 1.5}
    lazy = ParticleDataset(source, rots, trans, ctf, lazy=True, **kw)
    eager = ParticleDataset(source, rots, trans, ctf, lazy=False, **kw)
    assert len(lazy) == len(eager) == 5 and lazy.D == BOX + 1
    a, b = lazy[[4, 0, 2]], eager[[4, 0, 2]]
    assert torch.allclose(a.images, b.images, atol=1e-6)
    assert a.index.tolist() == [4, 0, 2]
    assert torch.equal(a.rot, rots[[39, 3, 11]])
    # shifts: box fractions × (box + 1) pixels, as cryoDRGN
    assert torch.allclose(a.trans, trans[[39, 3, 11]] * (BOX + 1))
    assert torch.equal(a.ctf, ctf[[39, 3, 11]])


def test_no_window_no_invert(stack, poses):
    source, images = stack
    ds = ParticleDataset(
        source, poses[0], preprocessing=Preprocessing(invert=False, window=False), norm_std=1.0
    )
    np.testing.assert_allclose(ds[[1]].images.numpy(), _numpy_sym_ht(images[1:2]), atol=1e-4)
    assert ds[[1]].trans is None and ds[[1]].ctf is None


def test_count_mismatch_and_bad_values(stack, poses):
    source, _ = stack
    rots, trans, ctf = poses
    with pytest.raises(ValueError, match=r"40 particles but the poses \(rotations\) have 39 rows"):
        ParticleDataset(source, rots[:39], norm_std=1.0)
    with pytest.raises(ValueError, match="CTF"):
        ParticleDataset(source, rots, trans, ctf[:, :7], norm_std=1.0)
    bad = rots.clone()
    bad[5, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf, e\.g\. at particles \[5\]"):
        ParticleDataset(source, bad, norm_std=1.0)
    with pytest.raises(ValueError, match="indices must lie in"):
        ParticleDataset(source, rots, indices=[0, 40], norm_std=1.0)
    ds = ParticleDataset(source, rots, norm_std=1.0)
    with pytest.raises(IndexError):
        ds[[40]]


def test_read_only_arrays_are_copied_without_a_warning(stack, poses):
    """Poses and CTF from a read-only map (e.g. ``np.load(mmap_mode="r")``) are accepted
    silently and the caller's array is never aliased."""
    import warnings

    source, _ = stack
    rots, trans, ctf = (t.numpy().copy() for t in poses)
    for a in (rots, trans, ctf):
        a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ParticleDataset(source, rots, trans, ctf, norm_std=1.0)
    assert torch.equal(ds.rots, torch.from_numpy(rots.copy()))
    assert torch.equal(ds.ctf, torch.from_numpy(ctf.copy()))
    assert ds.rots.data_ptr() != rots.ctypes.data


def test_loader_is_seeded_and_complete(stack, poses):
    source, _ = stack
    ds = ParticleDataset(source, poses[0], norm_std=1.0, lazy=False)

    def order(seed):
        loader = make_loader(ds, 8, generator=torch.Generator().manual_seed(seed))
        return torch.cat([b.index for b in loader]).tolist()

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(N))
    seq = make_loader(ds, 16, shuffle=False)
    assert [len(b) for b in seq] == [16, 16, 8]


def test_loader_workers_serve_the_same_batches(stack, poses):
    """Lazy datasets pickle into worker processes and give the same batches as the main one."""
    source, _ = stack
    ds = ParticleDataset(source, poses[0], norm_std=1.0, lazy=True)
    main = [b.images for b in make_loader(ds, 8, shuffle=False)]
    workers = [b.images for b in make_loader(ds, 8, shuffle=False, num_workers=2)]
    assert len(main) == len(workers) == 5
    for a, b in zip(main, workers, strict=True):
        assert torch.equal(a, b)
