"""Simulate a heterogeneous particle dataset and write it as a *dataset directory*.

Layout (read back by :func:`load_dataset_dir`, accepted by ``train`` and ``evaluate``)::

    OUTDIR/particles.mrcs   (N, box, box) float32, voxel size set; white particles
    OUTDIR/poses.pkl        cryoDRGN (rots (N, 3, 3), trans (N, 2) box fractions)
    OUTDIR/ctf.pkl          cryoDRGN (N, 9) float32
    OUTDIR/labels.npy       (N,) int64 ground-truth conformation of each image
    OUTDIR/split.npz        'train' and 'test' index arrays (seeded, sorted)
    OUTDIR/gt/vol_000.mrc … ground-truth map per conformation, box³, voxel size set
    OUTDIR/config.json      every parameter, including the noise σ used

Order of operations: pose, CTF and shift for every image are drawn first (seeded); each
conformation's images are rendered (optionally at twice the box and Fourier-cropped, which removes
aliasing of the band-limited signal), the clean stack is written to disk chunk by chunk, the pooled
signal variance is measured, and Gaussian noise of ``σ = sqrt(var_signal / snr)`` is added in
place, so the SNR holds exactly on the output box (CryoBench adds its noise before cropping, which
raises the effective SNR; ours is the SNR of the file). Memory stays bounded by ``chunk_size``
images whatever ``n_images`` is.

Stored shifts: an image whose content was moved by ``s`` pixels gets ``trans = −s / (box + 1)``,
so that cryoDRGN's reading (``trans × (box + 1)`` pixels applied to the data) re-centres it
exactly.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mrcfile
import numpy as np
import torch

import cryonoo
from cryonoo.data.phantoms import PHANTOMS, Phantom
from cryonoo.io.atomic import atomic_path, atomic_write
from cryonoo.io.cryodrgn import save_ctf_pkl, save_poses
from cryonoo.io.dataset_dir import DatasetDir, load_dataset_dir
from cryonoo.io.mrc import read_mrc, write_mrc
from cryonoo.physics.fft import fourier_crop, ht3_center, iht3_center
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.simulate import (
    CTFDistribution,
    project_images,
    sample_ctf_params,
    sample_shifts,
    volume_spectrum,
)

__all__ = [
    "SimulationConfig",
    "simulate_dataset",
    "simulate_from_maps",
    "simulate_phantom",
]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of a simulated dataset (all saved to ``config.json``)."""

    box: int = 64
    n_images: int = 20_000
    snr: float = 0.1
    seed: int = 0
    apix: float | None = None  # Å/px at ``box``; default from the phantom's field of view
    ctf: CTFDistribution | None = field(default_factory=CTFDistribution)
    shift_extent_px: float = 0.0
    oversample: int = 2  # render at oversample × box, then Fourier-crop
    test_fraction: float = 0.2
    sigma_A: float | None = None  # pseudo-atom Gaussian width; default max(1.5, apix / 2)
    contrast: float = -1.0  # white particles (RELION/cryoSPARC); see physics.simulate
    chunk_size: int = 256

    def __post_init__(self) -> None:
        checks = [
            (self.box >= 8 and self.box % 2 == 0, f"box must be even and ≥ 8, got {self.box}"),
            (self.n_images >= 1, f"n_images must be ≥ 1, got {self.n_images}"),
            (self.snr > 0 and math.isfinite(self.snr), f"snr must be > 0, got {self.snr}"),
            (self.oversample in (1, 2, 4), f"oversample must be 1, 2 or 4, got {self.oversample}"),
            (
                0 <= self.test_fraction < 1,
                f"test_fraction must be in [0, 1), got {self.test_fraction}",
            ),
            (self.apix is None or self.apix > 0, f"apix must be > 0, got {self.apix}"),
            (self.chunk_size >= 1, f"chunk_size must be ≥ 1, got {self.chunk_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _write_stack_header(path: Path, n: int, box: int, apix: float) -> None:
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = apix


def simulate_dataset(
    outdir: str | os.PathLike[str],
    volumes: torch.Tensor,
    config: SimulationConfig,
    *,
    apix: float,
    source: dict | None = None,
    progress: ProgressFn | None = None,
) -> DatasetDir:
    """Render ``volumes`` (``(K, m, m, m)`` with ``m = oversample · box``, voxel ``apix /
    oversample``) into a dataset directory at ``outdir``; ground-truth maps are the volumes
    Fourier-cropped to ``box``. Returns the written :class:`DatasetDir`."""
    out = Path(outdir)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    k_conf, m = volumes.shape[0], volumes.shape[-1]
    box, n = config.box, config.n_images
    if volumes.ndim != 4 or m != config.oversample * box:
        raise ValueError(
            f"volumes must be (K, {config.oversample * box}, …) for box {box} and oversample "
            f"{config.oversample}, got {tuple(volumes.shape)}"
        )
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    labels = rng.permutation(np.arange(n) % k_conf).astype(np.int64)
    rots = random_rotations(n, gen, dtype=torch.float64)  # saved in float64, like parsers
    shifts = sample_shifts(n, config.shift_extent_px, rng)
    ctf9 = sample_ctf_params(n, box, apix, config.ctf, rng) if config.ctf else None
    order = rng.permutation(n)
    n_test = round(config.test_fraction * n)
    split = {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}

    render_ctf = None
    if ctf9 is not None:
        render_ctf = torch.from_numpy(ctf9[:, 1:].astype(np.float32))
        render_ctf[:, 0] = apix / config.oversample
    render_shift = torch.from_numpy(shifts * config.oversample).float()

    stack_path = out / "particles.mrcs"
    sum_x = sum_x2 = 0.0
    with atomic_path(stack_path) as tmp:
        _write_stack_header(tmp, n, box, apix)
        with mrcfile.mmap(tmp, mode="r+") as mrc:
            data = mrc.data
            done = 0
            for k in range(k_conf):
                spectrum = volume_spectrum(volumes[k].float())
                idx = np.flatnonzero(labels == k)
                for start in range(0, idx.size, config.chunk_size):
                    ids = idx[start : start + config.chunk_size]
                    t = torch.from_numpy(ids)
                    clean = project_images(
                        spectrum,
                        rots[t].float(),
                        None if render_ctf is None else render_ctf[t],
                        render_shift[t] if config.shift_extent_px > 0 else None,
                        contrast=config.contrast,
                    )
                    if config.oversample > 1:
                        clean = fourier_crop(clean, box, rescale=True)
                    sum_x += float(clean.double().sum())
                    sum_x2 += float((clean.double() ** 2).sum())
                    data[ids] = clean.numpy().astype(np.float32)
                    done += ids.size
                    if progress:
                        progress(done, 2 * n)
            count = n * box * box
            signal_var = sum_x2 / count - (sum_x / count) ** 2
            sigma = math.sqrt(signal_var / config.snr)
            noise_gen = torch.Generator().manual_seed(config.seed + 1)
            for start in range(0, n, config.chunk_size):
                stop = min(n, start + config.chunk_size)
                noise = torch.randn(
                    stop - start, box, box, generator=noise_gen, dtype=torch.float64
                )
                data[start:stop] = (data[start:stop] + sigma * noise.numpy()).astype(np.float32)
                if progress:
                    progress(n + stop, 2 * n)
            mrc.update_header_stats()
            mrc.flush()

    trans_frac = -shifts / (box + 1)
    save_poses(out / "poses.pkl", rots.numpy(), trans_frac)
    if ctf9 is not None:
        save_ctf_pkl(out / "ctf.pkl", ctf9)
    with atomic_path(out / "labels.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels)
    with atomic_path(out / "split.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **split)
    for k in range(k_conf):
        gt = volumes[k] if config.oversample == 1 else _crop_volume(volumes[k], box)
        write_mrc(out / "gt" / f"vol_{k:03d}.mrc", gt.float().numpy(), voxel_size=apix)

    record = {
        **asdict(config),
        "apix": apix,
        "n_conformations": k_conf,
        "noise_sigma": sigma,
        "signal_variance": signal_var,
        "snr_definition": "pooled pixel variance of the noise-free images / noise variance",
        "trans_convention": "box fractions; content shift s px stored as -s/(box+1)",
        "contrast_note": "white particles: cryoDRGN's default inversion gives positive density",
        "source": source or {},
        "cryonoo_version": cryonoo.__version__,
    }
    with atomic_write(out / "config.json", "w") as fh:
        json.dump(record, fh, indent=2, default=str)
    return load_dataset_dir(out)


def _crop_volume(volume: torch.Tensor, box: int) -> torch.Tensor:
    """Fourier-crop a ``(m, m, m)`` volume to ``(box, box, box)`` keeping its values' scale."""
    m = volume.shape[-1]
    s = m // 2 - box // 2
    ht = ht3_center(volume.double())[s : s + box, s : s + box, s : s + box]
    return iht3_center(ht) * (box / m) ** 3


def simulate_phantom(
    outdir: str | os.PathLike[str],
    phantom: str | Phantom,
    config: SimulationConfig,
    *,
    progress: ProgressFn | None = None,
) -> DatasetDir:
    """Simulate a dataset from a built-in phantom (name in ``PHANTOMS``) or a ``Phantom``."""
    ph = PHANTOMS.build(phantom)
    apix = config.apix or ph.default_apix(config.box)
    sigma = config.sigma_A or max(1.5, 0.5 * apix)
    m = config.oversample * config.box
    vols = torch.stack(
        [
            ph.volume(
                k,
                m,
                apix / config.oversample,
                sigma,
            )
            for k in range(len(ph))
        ]
    )
    return simulate_dataset(
        outdir,
        vols,
        config,
        apix=apix,
        source={"phantom": ph.name, "sigma_A": sigma},
        progress=progress,
    )


def simulate_from_maps(
    outdir: str | os.PathLike[str],
    pattern: str,
    config: SimulationConfig,
    *,
    progress: ProgressFn | None = None,
) -> DatasetDir:
    """Simulate from user maps matching a glob ``pattern`` (sorted; one conformation each).

    Maps must all be ``box³`` (then rendered without oversampling) or ``(oversample·box)³``.
    """
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no maps match {pattern!r}")
    arrays, apixes = [], []
    for p in paths:
        data, info = read_mrc(p, mmap=False)
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise ValueError(f"{p}: maps must be cubic volumes, got shape {data.shape}")
        arrays.append(torch.from_numpy(np.asarray(data, dtype=np.float32)))
        apixes.append(info.voxel_size or 1.0)
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"all maps must have the same box; got sizes {sorted(sizes)}")
    size = sizes.pop()
    oversample = size // config.box if size % config.box == 0 else 0
    if oversample not in (1, 2, 4):
        raise ValueError(
            f"map box {size} must equal the image box {config.box} or 2× / 4× it "
            f"(resample the maps first)"
        )
    cfg = replace(config, oversample=oversample)
    apix = config.apix or apixes[0] * oversample
    return simulate_dataset(
        outdir, torch.stack(arrays), cfg, apix=apix, source={"maps": paths}, progress=progress
    )
