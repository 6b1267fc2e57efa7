"""Physical identities of central-slice extraction, insertion, projection and backprojection."""

import math

import pytest
import torch

from cryonoo.eval.fsc import fsc_curve
from cryonoo.physics import slice as slice_module
from cryonoo.physics.fft import (
    fft3_center,
    ht2_center,
    ht3_center,
    iht2_center,
    symmetrize_ht,
    symmetrize_ht3,
)
from cryonoo.physics.lattice import circular_mask
from cryonoo.physics.rotations import axis_angle_to_matrix, random_rotations
from cryonoo.physics.slice import (
    PROJECTORS,
    backproject,
    extract_central_slices,
    insert_central_slices,
    project,
)

F64 = torch.float64
M = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))  # mirror z


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel coordinates (z, y, x) in pixels relative to the centre voxel n // 2."""
    ax = torch.arange(n, dtype=F64) - n // 2
    return torch.meshgrid(ax, ax, ax, indexing="ij")


def _gaussians(n: int, centres: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Sum of isotropic Gaussians; ``centres`` (K, 3) as (x, y, z) pixels from the centre."""
    z, y, x = _grid(n)
    vol = torch.zeros(n, n, n, dtype=F64)
    for (cx, cy, cz), s in zip(centres.tolist(), sigmas.tolist(), strict=True):
        vol += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol


def _blobs(n: int, count: int = 20, seed: int = 0) -> torch.Tensor:
    """``count`` random Gaussian blobs (σ 1.5–3 px) centred inside the sphere of radius n/4."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(count, 3, generator=g, dtype=F64)
    radius = n / 4 * torch.rand(count, 1, generator=g, dtype=F64) ** (1 / 3)
    centres = direction / direction.norm(dim=1, keepdim=True) * radius
    return _gaussians(n, centres, 1.5 + 1.5 * torch.rand(count, generator=g, dtype=F64))


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the trailing two axes."""
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / (a.norm(dim=(-1, -2)) * b.norm(dim=(-1, -2)))


def _centroid(img: torch.Tensor, half: int = 3) -> torch.Tensor:
    """``(B, n, n)`` → ``(B, 2)`` centroid (x = column, y = row) of the ``2·half + 1`` square
    around each image's maximum (Fourier-space interpolation spreads a faint halo elsewhere)."""
    n = img.shape[-1]
    peak = img.reshape(img.shape[0], -1).argmax(1)
    ax = torch.arange(n, dtype=img.dtype)
    near_y = ((ax[None] - (peak // n)[:, None]).abs() <= half)[:, :, None]
    near_x = ((ax[None] - (peak % n)[:, None]).abs() <= half)[:, None, :]
    w = img.clamp_min(0) * near_y * near_x
    total = w.sum((-1, -2))
    return torch.stack(
        [(w * ax).sum((-1, -2)) / total, (w * ax[:, None]).sum((-1, -2)) / total], -1
    )


@pytest.fixture(scope="module")
def blob_volume() -> torch.Tensor:
    return _blobs(64)


@pytest.fixture(scope="module")
def rotations() -> torch.Tensor:
    return random_rotations(6, torch.Generator().manual_seed(3), dtype=F64)


@pytest.fixture(scope="module")
def real_space_images(blob_volume, rotations) -> torch.Tensor:
    return project(blob_volume, rotations, "real-space")


# --- Fourier slice theorem and agreement of the projectors ------------------------------------


def test_fourier_slice_theorem(blob_volume, rotations, real_space_images):
    spectrum = symmetrize_ht3(ht3_center(blob_volume))  # (65, 65, 65)
    slices = extract_central_slices(spectrum, rotations)  # (B, 65, 65)
    expected = symmetrize_ht(ht2_center(real_space_images))
    inside = circular_mask(65, ignore_dc=False)
    a, b = slices.reshape(6, -1)[:, inside], expected.reshape(6, -1)[:, inside]
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert corr.min() > 0.99, corr
    # the DC term is the integral of the volume whatever the rotation
    assert torch.allclose(slices[:, 32, 32], blob_volume.sum().expand(6))


@pytest.mark.parametrize(
    ("name", "min_corr"),
    # nearest-voxel sampling in Fourier space is a phase error growing with the object's radius
    # (0.94–0.97 here for blobs within n/4): it is the fast, approximate projector.
    [("fourier-trilinear", 0.99), ("fourier-nearest", 0.9), ("real-space", 1 - 1e-12)],
)
def test_projectors_agree_with_real_space(
    name, min_corr, blob_volume, rotations, real_space_images
):
    images = PROJECTORS.get(name)(blob_volume, rotations)
    assert images.shape == (6, 64, 64) and images.dtype == F64
    assert _corr(images, real_space_images).min() > min_corr


def test_projector_registry_contract():
    assert {"fourier-trilinear", "fourier-nearest", "real-space"} <= set(PROJECTORS.names())
    vol = _blobs(16, count=3).float()
    rot = random_rotations(3, torch.Generator().manual_seed(0))
    for name in PROJECTORS:
        assert PROJECTORS.describe(name)
        out = project(vol, rot, name)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert torch.allclose(out.sum((-1, -2)), vol.sum().expand(3), rtol=0.02)


# --- geometry: where points project, handedness ----------------------------------------------


@pytest.mark.parametrize("name", ["fourier-trilinear", "fourier-nearest", "real-space"])
def test_centre_point_stays_at_centre(name, rotations):
    vol = _gaussians(32, torch.zeros(1, 3, dtype=F64), torch.tensor([1.0], dtype=F64))
    images = project(vol, rotations, name)
    flat_argmax = images.reshape(6, -1).argmax(1)
    assert (flat_argmax == 16 * 32 + 16).all()
    tol = 0.1 if name == "fourier-nearest" else 0.01
    assert torch.allclose(_centroid(images), torch.full((6, 2), 16.0, dtype=F64), atol=tol)


@pytest.mark.parametrize("name", ["fourier-trilinear", "real-space"])
def test_off_centre_point_projects_to_R_p0(name, rotations):
    # img(r) = Σ_z V(Rᵀ r) and V peaks at p0, so the image peaks where Rᵀ r = p0: r = R p0.
    n, p0 = 48, torch.tensor([7.0, -4.0, 9.0], dtype=F64)  # (x0, y0, z0) pixels from the centre
    vol = _gaussians(n, p0[None], torch.tensor([1.0], dtype=F64))
    images = project(vol, rotations, name)
    expected = (rotations @ p0)[:, :2] + n // 2  # (column, row)
    wrong = (rotations.transpose(1, 2) @ p0)[:, :2] + n // 2
    assert ((expected - wrong).norm(dim=1) > 3).all()  # the check below tells R from Rᵀ
    assert (_centroid(images) - expected).norm(dim=1).max() < 0.25


def _chiral(n: int) -> torch.Tensor:
    """Four blobs of different sizes at the corners of a non-planar, irregular tetrahedron."""
    centres = torch.tensor([[0, 0, 0], [8, 0, 0], [0, 5, 0], [2, 1, 7]], dtype=F64)
    return _gaussians(n, centres - centres.mean(0), torch.tensor([2.5, 1.5, 2.0, 1.2], dtype=F64))


@pytest.mark.parametrize("name", ["fourier-trilinear", "fourier-nearest", "real-space"])
def test_handedness(name, rotations):
    n = 32
    vol = _chiral(n)
    # exact mirror through z = 0: V'[z] = V[−z]. (V.flip(0), cryoDRGN's --flip, mirrors through
    # z = −1/2, i.e. this plus a one-voxel shift.)
    mirror = torch.roll(vol.flip(0), 1, dims=0)
    assert torch.allclose(mirror, _gaussians(n, *_mirror_args()), atol=1e-6)
    ref = project(vol, rotations, name)
    # a chiral object and its mirror image look different from a generic direction ...
    assert _corr(project(mirror, rotations, name), ref).max() < 0.95
    # ... but img'(r) = Σ_z V(M Rᵀ r) = Σ_z V((M R M)ᵀ M r), and M r = (x, y, −z) runs over the
    # same line: the mirror at M R M gives exactly the same image as V at R.
    same = project(mirror, M @ rotations @ M, name)
    # (exact up to round-off in Fourier space; in real space the sum over z covers −n/2 … n/2 − 1,
    # which the mirror maps to −n/2 + 1 … n/2: one slab where the volume is ~0)
    assert torch.allclose(same, ref, atol=1e-6 * ref.abs().max())


def _mirror_args() -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[0, 0, 0], [8, 0, 0], [0, 5, 0], [2, 1, 7]], dtype=F64)
    centres = (centres - centres.mean(0)) * torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    return centres, torch.tensor([2.5, 1.5, 2.0, 1.2], dtype=F64)


# --- extraction details ----------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
def test_identity_slice_is_central_plane(interpolation):
    spectrum = torch.randn(9, 9, 9, dtype=F64)
    eye = torch.eye(3, dtype=F64)[None]
    out = extract_central_slices(spectrum, eye, interpolation=interpolation)
    assert torch.allclose(out[0], spectrum[4])
    # rotation by +90° about z: the slice at (x, y) reads the spectrum at (x, y) @ R = (y, −x, 0)
    rz = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=F64))
    out = extract_central_slices(spectrum, rz, interpolation=interpolation)
    assert torch.allclose(out[0], spectrum[4].flip(-2).transpose(-1, -2))


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
def test_mask_batch_complex_and_outside(interpolation):
    g = torch.Generator().manual_seed(1)
    D, B = 11, 4
    spectra = torch.randn(B, D, D, D, dtype=torch.complex128, generator=g)
    rot = random_rotations(B, g, dtype=F64)
    full = extract_central_slices(spectra[0], rot, interpolation=interpolation)
    assert full.shape == (B, D, D) and full.dtype == torch.complex128
    real_imag = [
        extract_central_slices(part, rot, interpolation=interpolation)
        for part in (spectra[0].real, spectra[0].imag)
    ]
    assert torch.allclose(full, torch.complex(*real_imag))
    mask = circular_mask(D)
    masked = extract_central_slices(spectra[0], rot, interpolation=interpolation, mask=mask)
    assert torch.allclose(masked, full.reshape(B, -1)[:, mask])
    batched = extract_central_slices(spectra, rot, interpolation=interpolation)
    single = [
        extract_central_slices(s, r[None], interpolation=interpolation)
        for s, r in zip(spectra, rot, strict=True)
    ]
    assert torch.allclose(batched, torch.cat(single))
    # 45° about z sends the lattice corner (0.5, 0.5) to (0, 0.707): outside the grid → 0
    rz = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 4]], dtype=F64))
    out = extract_central_slices(spectra[0], rz, interpolation=interpolation)
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 0


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
@pytest.mark.parametrize("mask", [None, circular_mask(17), circular_mask(17, ignore_dc=False)])
def test_hermitian_shortcut(interpolation, mask):
    g = torch.Generator().manual_seed(12)
    volume = torch.randn(16, 16, 16, dtype=F64, generator=g)
    spectrum = symmetrize_ht3(fft3_center(volume))  # (17, 17, 17), F(−k) = conj F(k)
    rot = random_rotations(5, g, dtype=F64)
    kw = {"interpolation": interpolation, "mask": mask}
    full = extract_central_slices(spectrum, rot, **kw)
    assert torch.allclose(extract_central_slices(spectrum, rot, hermitian=True, **kw), full)


@pytest.fixture
def always_split(monkeypatch):
    """Split even tiny point sets over the threads (the path taken by large problems)."""
    monkeypatch.setattr(slice_module, "_SPLIT_MIN_POINTS", 0)


def test_thread_split_is_exact(always_split):
    g = torch.Generator().manual_seed(2)
    spectrum = torch.randn(17, 17, 17, generator=g)
    rot = random_rotations(6, g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = extract_central_slices(spectrum, rot)
        torch.set_num_threads(2)
        two = extract_central_slices(spectrum, rot)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


# --- insertion is the adjoint; gradients ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("use_mask", [False, True])
def test_insert_is_adjoint_of_extract(dtype, use_mask):
    g = torch.Generator().manual_seed(4)
    D, B = 13, 7
    mask = circular_mask(D, ignore_dc=False) if use_mask else None
    rot = random_rotations(B, g, dtype=F64)
    x = torch.randn(D, D, D, dtype=dtype, generator=g)
    y_shape = (B, int(mask.sum())) if use_mask else (B, D, D)
    y = torch.randn(y_shape, dtype=dtype, generator=g)
    lhs = torch.vdot(extract_central_slices(x, rot, mask=mask).reshape(-1), y.reshape(-1))
    inserted, _ = insert_central_slices(y, rot, D, mask=mask)
    rhs = torch.vdot(x.reshape(-1), inserted.reshape(-1))
    assert abs(lhs - rhs) / abs(lhs) < 1e-10


def test_insert_weights():
    g = torch.Generator().manual_seed(5)
    D, B = 9, 5
    rot = random_rotations(B, g, dtype=F64)
    y, w = torch.randn(B, D, D, dtype=F64, generator=g), torch.rand(B, D, D, dtype=F64, generator=g)
    _, weight_sum = insert_central_slices(y, rot, D, weights=w)
    assert torch.allclose(weight_sum, insert_central_slices(w, rot, D)[0])
    # trilinear weights of a point sum to 1 when all 8 neighbours are inside the grid
    mask = circular_mask(D, radius_px=3)
    _, counts = insert_central_slices(y.reshape(B, -1)[:, mask], rot, D, mask=mask)
    assert torch.allclose(counts.sum(), B * mask.sum().to(F64))


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
@pytest.mark.parametrize("batch", [3, 4])  # 4·25 points split over 2 threads; 75 do not
def test_gradcheck_extract(interpolation, batch, always_split):
    g = torch.Generator().manual_seed(6)
    spectrum = torch.randn(5, 5, 5, dtype=F64, generator=g, requires_grad=True)
    rot = random_rotations(batch, g, dtype=F64)
    fast = batch % 2 == 0  # thread forks are slow on a busy machine: random projections only
    assert torch.autograd.gradcheck(
        lambda s: extract_central_slices(s, rot, interpolation=interpolation),
        (spectrum,),
        fast_mode=fast,
    )
    complex_spectrum = torch.randn(5, 5, 5, dtype=torch.complex128, generator=g)
    assert torch.autograd.gradcheck(
        lambda s: extract_central_slices(s, rot),
        (complex_spectrum.requires_grad_(),),
        fast_mode=fast,
    )


def test_gradcheck_insert():
    g = torch.Generator().manual_seed(7)
    rot = random_rotations(2, g, dtype=F64)
    slices = torch.randn(2, 5, 5, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: insert_central_slices(s, rot, 5)[0], (slices,))


# --- backprojection --------------------------------------------------------------------------


def _smooth_noise(n: int, seed: int) -> torch.Tensor:
    """Gaussian-filtered noise (σ_k = 0.2 cycles/px) inside a soft sphere of radius n/4."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(n, dtype=F64)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    noise = torch.fft.ifftn(
        torch.fft.fftn(torch.randn(n, n, n, dtype=F64, generator=g)) * torch.exp(-k2 / (2 * 0.2**2))
    ).real
    z, y, x = _grid(n)
    r = torch.sqrt(x**2 + y**2 + z**2)
    return noise * torch.sigmoid((n / 4 - r) / 1.5)


def test_backprojection_reconstructs_volume():
    n = 32
    vol = _smooth_noise(n, seed=8).float()
    rot = random_rotations(1500, torch.Generator().manual_seed(9))
    images = project(vol, rot, "real-space")  # independent of the Fourier-space insertion
    rec = backproject(images, rot, batch_size=500)
    assert rec.shape == (n, n, n)
    fsc = fsc_curve(rec, vol).fsc  # shells up to 0.5 − 1/n cycles/px (0.98–0.99 measured)
    assert fsc.min() > 0.9, fsc
    wrong = backproject(images, rot.transpose(1, 2), batch_size=500)  # V(R r) instead
    assert fsc_curve(wrong, vol).fsc[2:].mean() < 0.8  # (≈ 0.55 measured)


def test_backprojection_with_ctf():
    n = 24
    vol = _smooth_noise(n, seed=10)
    g = torch.Generator().manual_seed(11)
    rot = random_rotations(1500, g, dtype=F64)
    D = n + 1
    k = torch.linspace(-0.5, 0.5, D, dtype=F64)
    k2 = k[None, :, None] ** 2 + k[None, None, :] ** 2
    defocus = 80 + 60 * torch.rand(1500, 1, 1, generator=g, dtype=F64)  # varied zeros
    ctf = -torch.sin(defocus * k2 + 0.1)
    spectrum = symmetrize_ht3(ht3_center(vol))
    slices = extract_central_slices(spectrum, rot) * ctf
    images = iht2_center(slices[:, :-1, :-1])
    rec = backproject(images, rot, ctf=ctf)
    assert fsc_curve(rec, vol).fsc[: n // 2 - 1].min() > 0.5
    plain = backproject(images, rot)  # ignoring the CTF gives a poor map
    assert fsc_curve(plain, vol).fsc[2 : n // 2 - 1].min() < 0.5
    ones = torch.ones(1500, D, D, dtype=F64)
    assert torch.allclose(backproject(images, rot, ctf=ones), plain)


def test_devices_agree(device):
    g = torch.Generator().manual_seed(13)
    spectrum = torch.randn(17, 17, 17, generator=g)
    rot = random_rotations(6, g)
    mask = circular_mask(17)
    for interpolation in ("trilinear", "nearest"):
        ref = extract_central_slices(spectrum, rot, interpolation=interpolation, mask=mask)
        out = extract_central_slices(
            spectrum.to(device), rot, interpolation=interpolation, mask=mask
        )
        assert out.device.type == device.type
        assert torch.allclose(out.cpu(), ref, atol=1e-5)
    slices = torch.randn(6, 17, 17, generator=g)
    ref_sum, ref_w = insert_central_slices(slices, rot, 17)
    out_sum, out_w = insert_central_slices(slices.to(device), rot.to(device), 17)
    assert torch.allclose(out_sum.cpu(), ref_sum, atol=1e-5)
    assert torch.allclose(out_w.cpu(), ref_w, atol=1e-5)
    vol = _blobs(16, count=4).float()
    for name in PROJECTORS:
        out = project(vol.to(device), rot.to(device), name)
        assert torch.allclose(out.cpu(), project(vol, rot, name), atol=1e-4)
    images = project(vol, rot, "real-space")
    rec = backproject(images.to(device), rot.to(device))
    assert torch.allclose(rec.cpu(), backproject(images, rot), atol=1e-4)


# --- validation ------------------------------------------------------------------------------


def test_bad_inputs_raise():
    vol = torch.zeros(8, 8, 8)
    rot = torch.eye(3)[None].repeat(2, 1, 1)
    spectrum = torch.zeros(9, 9, 9)
    with pytest.raises(ValueError, match=r"rot must be a real \(B, 3, 3\)"):
        project(vol, torch.eye(3))
    with pytest.raises(ValueError, match=r"rot must be a real \(B, 3, 3\)"):
        extract_central_slices(spectrum, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"volume must be a real \(n, n, n\)"):
        project(torch.zeros(8, 8, 6), rot, "real-space")
    with pytest.raises(ValueError, match="n even"):
        project(torch.zeros(9, 9, 9), rot)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        extract_central_slices(spectrum, rot, interpolation="cubic")
    with pytest.raises(ValueError, match="D odd"):
        extract_central_slices(torch.zeros(8, 8, 8), rot)
    with pytest.raises(ValueError, match=r"rot must have shape \(3, 3, 3\)"):
        extract_central_slices(torch.zeros(3, 9, 9, 9), rot)
    with pytest.raises(ValueError, match="hermitian=True needs a complex spectrum"):
        extract_central_slices(spectrum, rot, hermitian=True)
    with pytest.raises(ValueError, match="point-symmetric mask"):
        asymmetric = torch.zeros(81, dtype=torch.bool)
        extract_central_slices(
            spectrum.to(torch.complex64),
            rot,
            mask=asymmetric.index_fill(0, torch.tensor([3]), True),
            hermitian=True,
        )
    with pytest.raises(ValueError, match="mask must be a boolean"):
        extract_central_slices(spectrum, rot, mask=torch.ones(81))
    with pytest.raises(ValueError, match=r"slices must have shape \(2, 9, 9\)"):
        insert_central_slices(torch.zeros(2, 8, 8), rot, 9)
    with pytest.raises(ValueError, match="D must be an odd integer"):
        insert_central_slices(torch.zeros(2, 8, 8), rot, 8)
    with pytest.raises(ValueError, match=r"images must be \(B, n, n\)"):
        backproject(torch.zeros(2, 9, 9), rot)
    with pytest.raises(ValueError, match=r"ctf must have shape \(2, 9, 9\)"):
        backproject(torch.zeros(2, 8, 8), rot, ctf=torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"rot must have shape \(3, 3, 3\)"):
        backproject(torch.zeros(3, 8, 8), rot)
    with pytest.raises(KeyError, match="unknown projector 'bogus'"):
        project(vol, rot, "bogus")
