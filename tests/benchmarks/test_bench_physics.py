"""Microbenchmarks of the image-formation kernels (pytest-benchmark; skipped by default).

Run deliberately (see ``docs/benchmarks.md``)::

    .venv/bin/pytest tests/benchmarks --benchmark-enable --benchmark-only -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name

Every benchmark is the forward pass on CPU with the thread count that ``tests/conftest.py`` sets
(``min(2, cpu_count)``) unless its name says ``thr1``/``thr2``. ``extra_info["per_s"]`` holds the
slice (or image) rate at the median. Third-party kernels (``torch_fourier_slice``,
``torch_projectors``) run in the same process when importable and are skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from cryonoo.physics.fft import ht2_center, ht3_center
from cryonoo.physics.lattice import circular_mask, lattice_freqs
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.slice import extract_central_slices, insert_central_slices

DS = (65, 129)
BS = (16, 64, 256)


def _rounds(points: int) -> int:
    """Fewer rounds for the big cases: keeps the whole run at a few minutes."""
    return 20 if points <= 1_200_000 else 7


def _run(benchmark, fn: Callable[[], object], count: int, points: int) -> None:
    benchmark.pedantic(fn, rounds=_rounds(points), warmup_rounds=2, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["per_s"] = round(count / median)
    benchmark.extra_info["threads"] = torch.get_num_threads()


@pytest.fixture(scope="module")
def spectra() -> dict[tuple[int, str], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for D in DS:
        out[(D, "hartley")] = torch.randn(D, D, D, generator=g)
        out[(D, "complex")] = torch.randn(D, D, D, dtype=torch.complex64, generator=g)
    return out


def _rot(B: int) -> torch.Tensor:
    return random_rotations(B, torch.Generator().manual_seed(B))


def _mask(D: int, points: str) -> torch.Tensor | None:
    return circular_mask(D, ignore_dc=False) if points == "circle" else None


@pytest.mark.parametrize("B", BS)
@pytest.mark.parametrize("points", ["full", "circle"])
@pytest.mark.parametrize(
    ("interpolation", "kind"),
    [("trilinear", "hartley"), ("trilinear", "complex"), ("nearest", "hartley")],
)
@pytest.mark.parametrize("D", DS)
def test_extract(benchmark, spectra, D, interpolation, kind, points, B):
    benchmark.group = f"extract-D{D}"
    spectrum, rot, mask = spectra[(D, kind)], _rot(B), _mask(D, points)
    n_pts = D * D if mask is None else int(mask.sum())

    def fn():
        return extract_central_slices(spectrum, rot, interpolation=interpolation, mask=mask)

    _run(benchmark, fn, B, B * n_pts)


@pytest.mark.parametrize("B", BS)
@pytest.mark.parametrize("points", ["full", "circle"])
@pytest.mark.parametrize("D", DS)
def test_insert(benchmark, D, points, B):
    benchmark.group = f"insert-D{D}"
    rot, mask = _rot(B), _mask(D, points)
    n_pts = D * D if mask is None else int(mask.sum())
    shape = (B, D, D) if mask is None else (B, n_pts)
    slices = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(shape, generator=torch.Generator().manual_seed(2))

    def fn():
        return insert_central_slices(slices, rot, D, weights=weights, mask=mask)

    _run(benchmark, fn, B, B * n_pts)


# --- the anchors of the performance notes: complex64, trilinear, 64 rotations, 1 and 2 threads ---


def _with_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    def wrapped():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(previous)

    return wrapped


def _anchor(benchmark, threads: int, fn: Callable[[], object], box: int) -> None:
    if threads > (os.cpu_count() or 1):
        pytest.skip(f"needs {threads} CPU cores")
    benchmark.group = f"anchor-box{box}-B64"
    benchmark.extra_info["threads"] = threads
    benchmark.pedantic(_with_threads(threads, fn), rounds=15, warmup_rounds=2, iterations=1)
    benchmark.extra_info["per_s"] = round(64 / benchmark.stats.stats.median)


@pytest.mark.parametrize("threads", [1, 2], ids=["thr1", "thr2"])
@pytest.mark.parametrize("hermitian", [False, True], ids=["all", "hermitian"])
@pytest.mark.parametrize("box", [64, 128])
def test_anchor_cryonoo_complex_circle(benchmark, spectra, box, hermitian, threads):
    spectrum, rot, mask = spectra[(box + 1, "complex")], _rot(64), _mask(box + 1, "circle")

    def fn():
        return extract_central_slices(spectrum, rot, mask=mask, hermitian=hermitian)

    _anchor(benchmark, threads, fn, box)


@pytest.mark.parametrize("threads", [1, 2], ids=["thr1", "thr2"])
@pytest.mark.parametrize("box", [64, 128])
def test_anchor_cryonoo_hartley_circle(benchmark, spectra, box, threads):
    spectrum, rot, mask = spectra[(box + 1, "hartley")], _rot(64), _mask(box + 1, "circle")
    _anchor(benchmark, threads, lambda: extract_central_slices(spectrum, rot, mask=mask), box)


@pytest.mark.parametrize("threads", [1, 2], ids=["thr1", "thr2"])
@pytest.mark.parametrize("fftfreq_max", [None, 0.5], ids=["halfplane", "circle"])
@pytest.mark.parametrize("box", [64, 128])
def test_anchor_torch_fourier_slice(benchmark, box, fftfreq_max, threads):
    tfs = pytest.importorskip("torch_fourier_slice")
    g = torch.Generator().manual_seed(0)
    volume_rfft = torch.randn(box, box, box // 2 + 1, dtype=torch.complex64, generator=g)
    rot = _rot(64)

    def fn():
        return tfs.extract_central_slices_rfft_3d(volume_rfft, rot, fftfreq_max=fftfreq_max)

    _anchor(benchmark, threads, fn, box)


@pytest.mark.parametrize("threads", [1, 2], ids=["thr1", "thr2"])
@pytest.mark.parametrize("box", [64, 128])
def test_anchor_torch_projectors(benchmark, box, threads):
    try:
        import torch_projectors
    except Exception as err:  # ImportError, or OSError when built for another libtorch
        pytest.skip(f"torch_projectors not usable: {type(err).__name__}")
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(1, box, box, box // 2 + 1, dtype=torch.complex64, generator=g)
    rot = _rot(64)[None]

    def fn():
        return torch_projectors.project_3d_to_2d_forw(volume, rot, fourier_radius_cutoff=box / 2)

    _anchor(benchmark, threads, fn, box)


# --- transforms and CTF ------------------------------------------------------------------------


def test_ht2_center(benchmark):
    benchmark.group = "transforms"
    images = torch.randn(256, 128, 128, generator=torch.Generator().manual_seed(0))
    _run(benchmark, lambda: ht2_center(images), 256, 256 * 128 * 128)


def test_ht3_center(benchmark):
    benchmark.group = "transforms"
    volume = torch.randn(128, 128, 128, generator=torch.Generator().manual_seed(0))
    _run(benchmark, lambda: ht3_center(volume), 1, 128**3)


@pytest.mark.parametrize("B", [64, 256])
def test_ctf(benchmark, B):
    ctf = pytest.importorskip("cryonoo.physics.ctf")
    benchmark.group = "ctf-D129"
    D = 129
    freqs = lattice_freqs(D)
    g = torch.Generator().manual_seed(0)
    params = torch.tensor([1.5, 15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 0.0]).repeat(B, 1)
    params[:, 1:3] += 5000 * torch.rand(B, 2, generator=g)
    _run(benchmark, lambda: ctf.ctf_from_params(freqs, params), B, B * D * D)
