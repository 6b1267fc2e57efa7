"""Particle datasets that serve :class:`~cryonoo.types.Batch` es, with cryoDRGN's preprocessing.

Preprocessing (cryoDRGN ``ImageDataset``), in this order, for real images of even box ``n``:

1. multiply by the real-space soft window (radius 0.85 → 0.99 of the half box) if ``window``;
2. multiply by −1 if ``invert`` (cryoDRGN's default: stacks are expected to hold white,
   contrast-inverted particles, RELION/cryoSPARC style, when a CTF is used);
3. centered Hartley transform, symmetrized to the odd lattice ``D = n + 1``;
4. divide by ``norm_std``: the std of the (inverted, *un-windowed*) Hartley images of ~1000
   evenly spaced particles (the mean is always 0).

Two storage modes:

* **in memory**: all particles are preprocessed once (in chunks) and kept as ``(N, D, D)``
  float32 Hartley images; batches are slices of that tensor.
* **lazy**: particles are read from the (memory-mapped) stack and preprocessed per batch, so a
  stack larger than RAM streams with bounded memory.

The default (``lazy=None``) keeps the data in memory when it takes less than half of the
available RAM.

A dataset is indexed by *position* ``0 … len−1`` in its subset; ``Batch.index`` holds those
positions and ``dataset.indices`` maps them to particle numbers in the stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from cryonoo.io.cryodrgn import load_ctf_pkl, load_indices, load_poses
from cryonoo.io.dataset_dir import is_dataset_dir, load_dataset_dir
from cryonoo.io.heap import pipeline_heap, trim_heap
from cryonoo.io.mrc import ParticleFileError
from cryonoo.io.prefetch import prefetched
from cryonoo.io.stack import ImageSource, Subset, check_finite, open_images
from cryonoo.physics.ctf import ctf_params_for_box
from cryonoo.physics.fft import ht2_center, ht2_center_symmetrized, symmetrize_ht
from cryonoo.physics.masks import soft_circular_window
from cryonoo.types import Batch

__all__ = [
    "ParticleDataset",
    "Preprocessing",
    "available_memory_bytes",
    "estimate_norm_std",
    "in_order",
    "make_loader",
    "open_dataset",
    "preprocess_images",
]


@dataclass(frozen=True)
class Preprocessing:
    """cryoDRGN's image preprocessing options (see the module docstring)."""

    invert: bool = True
    window: bool = True
    window_inner: float = 0.85
    window_outer: float = 0.99


def preprocess_images(
    images: Tensor, *, window: Tensor | None, invert: bool, norm_std: float
) -> Tensor:
    """``(B, n, n)`` real images → ``(B, n+1, n+1)`` normalized symmetrized Hartley images.

    ``symmetrize_ht(ht2_center(±window · images)) / norm_std``, computed from one real FFT with
    the float32 conversion, the window, the sign and the normalization in one pass before it
    (:func:`ht2_center_symmetrized`).
    """
    return ht2_center_symmetrized(images, (-1.0 if invert else 1.0) / norm_std, window)


def estimate_norm_std(source: ImageSource, invert: bool = True, n_images: int = 1000) -> float:
    """Std of the symmetrized Hartley images of ~``n_images`` evenly spaced particles.

    As cryoDRGN: particles ``range(0, N, N // min(n_images, N))``, inverted if asked, no window.
    """
    n = len(source)
    step = max(1, n // min(n_images, n))
    idx = np.arange(0, n, step)
    ht = symmetrize_ht(ht2_center(_as_tensor(source.images(idx))))
    std = float(ht.double().std(correction=0))  # numpy convention, as cryoDRGN
    if not np.isfinite(std) or std <= 0:
        raise ValueError(
            f"cannot normalize: the Hartley std of {len(idx)} sample particles is {std}; "
            "the stack is constant or contains NaN/Inf (check it with `check_finite`)"
        )
    return std


def _as_tensor(images: np.ndarray) -> Tensor:
    """float32 tensor owning its memory (stack reads may be read-only memory-map views)."""
    return torch.from_numpy(np.require(images, dtype=np.float32, requirements=["C", "W"]))


def available_memory_bytes() -> int:
    """Memory available to this process now (bytes), from ``/proc/meminfo`` or sysconf."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class ParticleDataset(torch.utils.data.Dataset):
    """Preprocessed particle images with their poses and CTF, served batch by batch.

    Parameters
    ----------
    source:
        The image stack (any :class:`~cryonoo.io.stack.ImageSource`).
    rots:
        ``(N_total, 3, 3)`` rotations for every particle of the stack (cryoDRGN convention).
    trans:
        ``(N_total, 2)`` shifts as **box fractions** (``.pkl`` convention) or ``None``; converted
        to pixels by ``× D = box + 1`` as cryoDRGN does.
    ctf:
        ``(N_total, 8)`` CTF parameters ``[Apix, dfu, dfv, dfang, kV, cs, w, phase]`` (see
        :func:`cryonoo.physics.ctf.ctf_params_for_box`) or ``None``.
    indices:
        Subset of particle numbers to use (default: all), e.g. a train split.
    lazy:
        Read and preprocess per batch (``True``) or preprocess everything once (``False``);
        ``None`` decides from the stack size and the available RAM.
    norm_std:
        Normalization; estimated from the stack (``estimate_norm_std``) when ``None``.
    """

    def __init__(
        self,
        source: ImageSource,
        rots: Tensor | np.ndarray,
        trans: Tensor | np.ndarray | None = None,
        ctf: Tensor | np.ndarray | None = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        lazy: bool | None = None,
        preprocessing: Preprocessing = Preprocessing(),
        norm_std: float | None = None,
        chunk_size: int = 1024,
    ) -> None:
        n_total = len(source)
        self.source = source
        self.box = int(source.box)
        if self.box % 2:
            raise ValueError(f"particle images must have an even box, got {self.box}")
        self.D = self.box + 1
        self.indices = _check_indices(indices, n_total)
        self.rots = _check_array(rots, (n_total, 3, 3), "poses (rotations)", n_total)
        trans_t = (
            None if trans is None else _check_array(trans, (n_total, 2), "poses (shifts)", n_total)
        )
        self.trans_px = None if trans_t is None else trans_t * self.D
        self.ctf = None if ctf is None else _check_array(ctf, (n_total, 8), "CTF", n_total)
        self.preprocessing = preprocessing
        self.window = (
            soft_circular_window(self.box, preprocessing.window_inner, preprocessing.window_outer)
            if preprocessing.window
            else None
        )
        self.norm_std = (  # over the selected particles, as cryoDRGN with --ind
            estimate_norm_std(Subset(source, self.indices), preprocessing.invert)
            if norm_std is None
            else norm_std
        )
        n = len(self.indices)
        if lazy is None:
            lazy = 2 * n * self.D * self.D * 4 > available_memory_bytes()
        self.lazy = lazy
        self._images: Tensor | None = None
        self.dropped = np.zeros(0, np.int64)  # stack indices left out by open_dataset(drop_bad)
        if not lazy:
            chunks = [self._load(self.indices[i : i + chunk_size]) for i in range(0, n, chunk_size)]
            self._images = torch.cat(chunks) if chunks else torch.zeros(0, self.D, self.D)

    def _load(self, particle_ids: np.ndarray) -> Tensor:
        raw = _as_tensor(self.source.images(particle_ids))
        # a NaN/Inf pixel makes its image's sum non-finite: one reduction instead of a mask
        rows = torch.nonzero(~torch.isfinite(raw.sum(dim=(-2, -1)))).flatten()
        if len(rows):  # an overflowing sum of finite pixels is no error
            rows = rows[~torch.isfinite(raw[rows]).flatten(1).all(1)]
        if len(rows):
            bad = np.asarray(particle_ids)[rows.numpy()].tolist()
            raise ParticleFileError(
                f"particles {bad[:20]}{' …' if len(bad) > 20 else ''} contain NaN/Inf pixels; "
                "exclude them with --drop-bad (or an --ind file without them)"
            )
        return preprocess_images(
            raw,
            window=self.window,
            invert=self.preprocessing.invert,
            norm_std=self.norm_std,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, positions: np.ndarray | Sequence[int]) -> Tensor:
        """``(k, D, D)`` preprocessed images at dataset positions."""
        pos = np.asarray(positions, dtype=np.int64)
        if self._images is not None:
            return self._images[torch.from_numpy(pos)]
        return self._load(self.indices[pos])

    def __getitem__(self, positions: Sequence[int] | np.ndarray | int) -> Batch:
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got {pos.min()}…{pos.max()}")
        ids = torch.from_numpy(self.indices[pos])
        return Batch(
            images=self.images(pos),
            rot=self.rots[ids],
            trans=None if self.trans_px is None else self.trans_px[ids],
            ctf=None if self.ctf is None else self.ctf[ids],
            index=torch.from_numpy(pos),
        )


def _check_indices(indices: Sequence[int] | np.ndarray | None, n_total: int) -> np.ndarray:
    if indices is None:
        return np.arange(n_total, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_total):
        raise ValueError(
            f"indices must lie in [0, {n_total}) (the stack has {n_total} particles), "
            f"got min {idx.min()} max {idx.max()}"
        )
    return idx.astype(np.int64)


def _check_array(value: Tensor | np.ndarray, shape: tuple[int, ...], what: str, n: int) -> Tensor:
    if not isinstance(value, Tensor):
        value = np.asarray(value)
        if not value.flags.writeable:  # e.g. a read-only map: torch would warn and share it
            value = value.copy()
    t = torch.as_tensor(value)
    if t.shape[0] != n:
        raise ValueError(
            f"count mismatch: the stack has {n} particles but the {what} have {t.shape[0]} rows"
        )
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t.reshape(n, -1)).all(1)).flatten()[:10].tolist()
        raise ValueError(f"{what} contain NaN/Inf, e.g. at particles {bad}")
    return t


def make_loader(
    dataset: ParticleDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    shard: Callable[[Sampler[list[int]]], Sampler[list[int]]] | None = None,
) -> DataLoader:
    """A DataLoader yielding whole :class:`Batch` es (one ``__getitem__`` call per batch).

    ``pin_memory`` defaults to ``torch.cuda.is_available()``. With ``shuffle`` the order is drawn
    from ``generator`` (seed it for reproducible epochs). ``shard`` wraps the batch sampler
    (e.g. :class:`cryonoo.train.distributed.ShardedBatchSampler` for data-parallel training).
    A lazy dataset is streamed: its batches' buffers are served from one reused heap
    (:func:`cryonoo.io.heap.pipeline_heap`; training keeps it for its epochs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if dataset.lazy:
        pipeline_heap()
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches: Sampler[list[int]] = BatchSampler(sampler, batch_size, drop_last=drop_last)
    if shard is not None:
        batches = shard(batches)
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        # the loader draws its workers' base seed from this, never from the global generator
        generator=generator if generator is not None else torch.Generator(),
        persistent_workers=num_workers > 0,
    )


#: batches between two returns of the heap's free pages in :func:`in_order`
TRIM_EVERY = 16


def in_order(dataset: ParticleDataset, batch_size: int, *, prefetch: int = 2) -> Iterator[Batch]:
    """Every particle of ``dataset`` in dataset order, in :class:`Batch` es of ``batch_size``
    (on the CPU), the next ``prefetch`` of them read and preprocessed on a background thread
    while the caller works on the current one (:func:`cryonoo.io.prefetch.prefetched`; ``0``:
    in turn). What every inference pass over a dataset iterates.

    The batches' buffers come from one reused heap (:func:`cryonoo.io.heap.pipeline_heap`: no
    page faults per batch) whose free pages are returned every :data:`TRIM_EVERY` batches
    (:func:`~cryonoo.io.heap.trim_heap`), so the memory stays bounded whatever the stack size.
    """
    pipeline_heap()
    loader = make_loader(dataset, batch_size, shuffle=False, pin_memory=False)
    for i, batch in enumerate(prefetched(loader, prefetch), start=1):
        if i % TRIM_EVERY == 0:
            trim_heap()
        yield batch


def _ctf_params(ctf9: np.ndarray, box: int, source_path: object, rescale: bool) -> Tensor:
    """Check the ctf.pkl box column against the images, then convert to ``(N, 8)``."""
    boxes = np.unique(ctf9[:, 0])
    if not rescale and (boxes.size != 1 or int(boxes[0]) != box):
        raise ValueError(
            f"the CTF file gives box size(s) {boxes.astype(int).tolist()} but the particles "
            f"({source_path}) are {box} px; if the particles were downsampled from the CTF's box, "
            "pass ctf_rescale=True (--ctf-rescale) to rescale the pixel size as cryoDRGN does, "
            "otherwise regenerate ctf.pkl for these particles"
        )
    return ctf_params_for_box(ctf9, box)


def open_dataset(
    particles: str | os.PathLike[str],
    poses: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    ctf: str | os.PathLike[str] | None = None,
    *,
    ind: str | os.PathLike[str] | np.ndarray | None = None,
    datadir: str | os.PathLike[str] | None = None,
    lazy: bool | None = None,
    preprocessing: Preprocessing = Preprocessing(),
    norm_std: float | None = None,
    ctf_rescale: bool = False,
    require_poses: bool = True,
    drop_bad: bool = False,
) -> ParticleDataset:
    """Build a :class:`ParticleDataset` from files, as ``cryonoo train`` does.

    ``particles`` is a stack (``.mrcs``/``.txt``/``.star``/``.cs``) or a dataset directory
    (``cryonoo simulate``), in which case ``poses``/``ctf`` default to the directory's files and
    ``ind`` may be a split name (``"train"``, ``"test"``). ``ind`` is otherwise an index file
    (``.pkl``/``.npy``/``.txt``), ``split.npz:KEY``, or an integer array.
    """
    root = Path(os.fspath(particles))
    if is_dataset_dir(root):
        data = load_dataset_dir(root)
        particles = data.particles
        poses = data.poses if poses is None else poses
        ctf = (data.ctf if data.ctf.is_file() else None) if ctf is None else ctf
        if isinstance(ind, str) and ind in data.split:
            ind = data.split[ind]
    if poses is None and require_poses:
        raise ValueError(f"poses are required for {particles} (give --poses poses.pkl)")
    source = open_images(particles, datadir=datadir)
    n = len(source)
    if poses is None:
        rots, trans = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)), None
    else:
        rots, trans = load_poses(poses, n=n)
    ctf_params = None
    if ctf is not None:
        ctf_params = _ctf_params(load_ctf_pkl(ctf, n=n), source.box, particles, ctf_rescale)
    if ind is not None and not isinstance(ind, np.ndarray):
        ind = load_indices(ind, n=n)
    dropped = np.zeros(0, np.int64)
    if drop_bad:
        selected = np.arange(n) if ind is None else np.asarray(ind, dtype=np.int64)
        dropped = selected[check_finite(Subset(source, selected))]
        ind = (
            np.setdiff1d(selected, dropped)
            if ind is None
            else selected[~np.isin(selected, dropped)]
        )
    dataset = ParticleDataset(
        source,
        rots,
        trans,
        ctf_params,
        indices=ind,
        lazy=lazy,
        preprocessing=preprocessing,
        norm_std=norm_std,
    )
    dataset.dropped = dropped
    return dataset
