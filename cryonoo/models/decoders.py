"""Implicit decoders: a coordinate network giving a volume's spectrum at any 3-D frequency.

Conventions (cryoDRGN's; pinned by ``tests/unit/test_models_*.py``):

* Coordinates are ``(…, N, 3)`` frequencies ``[kx, ky, kz]`` in **cycles/pixel** with
  ``|k_i| ≤ 0.5`` (checked, 1e-4 slack); the latent ``z`` is ``(…, zdim)``.
* ``forward(coords, z) → (…, N)`` are **Hartley** values ``H = Re F − Im F`` in the data domain
  (normalized units). Central slices use ``lattice coords @ R``.
* ``fourier`` (cryoDRGN's ``FTPositionalDecoder``): the network ``[PE(k), z] → (Re F, Im F)``.
  Hermitian symmetry is exact: points with ``kz > 0`` are evaluated at ``−k`` and ``Im`` negated,
  so ``F(−k) = conj F(k)``. ``forward`` assumes a point-symmetric set in raster order (entry
  ``N − 1 − i`` is ``−k_i``, e.g. a rotated circular lattice mask) and evaluates only the first
  ``N // 2`` points (+1 when ``N`` is odd), filling the rest with ``H(−k) = Re F(k) + Im F(k)``.
* ``hartley`` (cryoDRGN's ``PositionalDecoder``): ``[PE(k), z] → H`` directly, every point
  evaluated, no symmetry enforced.
* ``volume(z, D, norm_std)`` evaluates the spectrum on the ``D³`` lattice inside the sphere
  ``|k| ≤ 0.5`` (tested in float32 as cryoDRGN does; zero outside; the ``kz = 0`` plane through
  ``forward``, as in training and in cryoDRGN's ``eval_volume``), multiplies by ``norm_std``,
  drops the last slab of every axis and applies the inverse centered 3-D Hartley transform: a
  real ``(box, box, box)`` map indexed ``[z, y, x]`` with cryoDRGN's handedness (no flip needed).
  For the ``fourier`` decoder the map equals cryoDRGN's ``eval_vol`` (``docs/interop.md``).

Checkpoint mapping from cryoDRGN: ``decoder.decoder.*`` → ``decoder.mlp.*`` and
``decoder.rand_freqs`` → ``decoder.pe.rand_freqs``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cryonoo.models.encoders import ResidLinearMLP, check_int
from cryonoo.models.positional import POSITIONAL
from cryonoo.physics.fft import iht3_center
from cryonoo.physics.lattice import check_odd_lattice, half_count
from cryonoo.registry import Registry

__all__ = ["DECODERS", "FourierDecoder", "HartleyDecoder"]

DECODERS: Registry = Registry("decoder")

_COORD_SLACK = 1e-4
_VOLUME_CHUNK = 1 << 17  # decoder points per chunk in volume()


def check_coords(coords: Tensor, name: str = "coords") -> None:
    """Raise ``ValueError`` unless ``coords`` is ``(…, 3)`` with every ``|k_i| ≤ 0.5``."""
    if not isinstance(coords, Tensor) or coords.ndim < 2 or coords.shape[-1] != 3:
        shape = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
        raise ValueError(f"{name} must have shape (…, N, 3) in cycles/pixel, got {shape}")
    if coords.numel() and bool((coords.detach().abs() > 0.5 + _COORD_SLACK).any()):
        raise ValueError(f"{name} must satisfy |k| ≤ 0.5 cycles/pixel on every axis")


class _ImplicitDecoder(nn.Module):
    """Shared parts: positional encoding, MLP on ``[PE(k), z]``, latent checks, ``volume``."""

    n_out: int = 1

    def __init__(
        self,
        D: int,
        zdim: int,
        layers: int = 3,
        dim: int = 1024,
        activation: str = "relu",
        pe_type: str = "gaussian",
        pe_dim: int | None = None,
        feat_sigma: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.D = check_odd_lattice(D)
        self.zdim = check_int(zdim, "zdim", 0)
        self.pe = POSITIONAL.build(pe_type, D=D, enc_dim=pe_dim, feat_sigma=feat_sigma, seed=seed)
        self.mlp = ResidLinearMLP(self.pe.out_dim + zdim, layers, dim, self.n_out, activation)

    def _check_z(self, z: Tensor | None, lead: torch.Size) -> Tensor | None:
        if self.zdim == 0:
            return None
        if not isinstance(z, Tensor) or z.shape[-1] != self.zdim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else None
            raise ValueError(f"z must have shape (…, {self.zdim}) (zdim), got {shape}")
        if tuple(z.shape[:-1]) != tuple(lead):
            raise ValueError(
                f"z must have shape {(*lead, self.zdim)} to match coords {(*lead, 'N', 3)}, "
                f"got {tuple(z.shape)}"
            )
        return z

    def _net(self, coords: Tensor, z: Tensor | None) -> Tensor:
        """``(…, N, 3)``, ``(…, zdim)`` → ``(…, N, n_out)`` float32 network output."""
        feats = self.pe(coords)
        out = self.mlp(feats) if z is None else self.mlp.forward_concat(feats, z)
        return out.float()

    def hartley(self, coords: Tensor, z: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        """Hartley values at arbitrary points (no point-symmetry assumption)."""
        raise NotImplementedError

    @torch.no_grad()
    def volume(self, z: Tensor | None, D: int | None = None, norm_std: float = 1.0) -> Tensor:
        """Real-space ``(box, box, box)`` map (``[z, y, x]``, un-normalized) for one latent.

        ``z`` is ``(zdim,)`` or ``(1, zdim)`` (``None`` when ``zdim == 0``); ``D`` defaults to
        the decoder's lattice size. The spectrum is evaluated in chunks of points, vectorized.
        """
        D = self.D if D is None else check_odd_lattice(D)
        if z is not None:
            z = z.reshape(1, -1) if z.ndim == 1 else z
            if z.ndim != 2 or z.shape[0] != 1:
                raise ValueError(f"z must be (zdim,) or (1, zdim) for one volume, got {z.shape}")
        device = next(self.parameters()).device
        # (i − D//2)/(D − 1): the centre is exactly 0 (torch.linspace gives ~7e-16 there, which
        # would send the kz = 0 plane through the kz > 0 branch) and ±k are exact negatives
        axis = (torch.arange(D, dtype=torch.float64, device=device) - D // 2) / (D - 1)
        kz, ky, kx = torch.meshgrid(axis, axis, axis, indexing="ij")
        grid = torch.stack([kx, ky, kz], dim=-1).reshape(-1, 3)  # (D³, 3), x fastest
        # the sphere test in float32, as cryoDRGN's eval_volume: the points lying exactly on
        # |k| = 0.5 are kept or dropped by the same rounding (e.g. (8, 8, 4)/24 are dropped)
        keep = grid.to(torch.float32).pow(2).sum(-1) <= 0.25
        on_plane = torch.arange(D**3, device=device) // (D * D) == D // 2
        plane = keep & on_plane  # kz = 0: point symmetric, evaluated like training
        rest = keep & ~plane
        z_one = None if z is None else z.to(device=device, dtype=torch.float32)
        spec = torch.zeros(D**3, device=device, dtype=torch.float32)
        spec[plane] = self(grid[plane].to(torch.float32)[None], z_one)[0]
        self._fill_off_plane(spec, grid.to(torch.float32), rest, z_one)
        spec = spec * float(norm_std)
        return iht3_center(spec.reshape(D, D, D)[:-1, :-1, :-1])

    def _fill_off_plane(self, spec: Tensor, grid: Tensor, rest: Tensor, z: Tensor | None) -> None:
        """Write the Hartley values at the ``rest`` points of the ``(D³, 3)`` ``grid`` into
        ``spec`` ``(D³,)``: every point evaluated, in chunks."""
        pts = grid[rest]
        values = [self.hartley(p[None], z)[0] for p in pts.split(_VOLUME_CHUNK)]
        spec[rest] = torch.cat(values)


class FourierDecoder(_ImplicitDecoder):
    """cryoDRGN's FTPositionalDecoder: ``[PE(k), z] → (Re F, Im F)``, Hermitian by construction.

    Parameters
    ----------
    D:
        Odd lattice size (``box + 1``); sets the positional-encoding frequencies.
    zdim:
        Latent width (0 for a homogeneous decoder).
    layers, dim, activation:
        Hidden residual layers, their width and activation of the ``ResidLinearMLP``.
    pe_type, pe_dim, feat_sigma, seed:
        Positional encoding name in ``POSITIONAL``, its ``enc_dim`` (default ``D // 2``), the
        Gaussian feature scale and the seed of its random frequencies.
    """

    n_out = 2

    def decode(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(…, N, 3)``, ``(…, zdim)`` → ``(…, N, 2)`` float32 ``(Re F, Im F)`` at every point."""
        if validate:
            check_coords(coords)
        z = self._check_z(z, coords.shape[:-2])
        flip = coords[..., 2:3] > 0
        out = self._net(torch.where(flip, -coords, coords), z)
        sign = torch.where(flip, -1.0, 1.0)
        return torch.cat([out[..., :1], out[..., 1:] * sign], dim=-1)

    def hartley(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(…, N)`` Hartley values ``Re − Im`` evaluated at every point."""
        out = self.decode(coords, z, validate=validate)
        return out[..., 0] - out[..., 1]

    def _fill_off_plane(self, spec: Tensor, grid: Tensor, rest: Tensor, z: Tensor | None) -> None:
        """As the base class, evaluating the network once per ``±k`` pair: ``decode`` sends
        ``kz > 0`` to ``−k`` anyway, so the ``kz < 0`` half gives ``H(k) = Re − Im`` there and
        ``H(−k) = Re + Im`` at the mirror point (flat index ``D³ − 1 − i`` of the centred odd
        lattice). Same values as evaluating every point, half the work."""
        lower = torch.nonzero(rest & (grid[:, 2] < 0)).squeeze(1)
        parts = [self.decode(grid[i][None], z)[0] for i in lower.split(_VOLUME_CHUNK)]
        out = torch.cat(parts)
        spec[lower] = out[:, 0] - out[:, 1]
        spec[spec.shape[0] - 1 - lower] = out[:, 0] + out[:, 1]

    def forward(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(…, N, 3)`` point-symmetric raster-ordered points → ``(…, N)`` Hartley values.

        Only the first ``half_count(N)`` points are evaluated; ``validate`` checks the range
        (one device synchronization; the point symmetry itself is the caller's contract).
        """
        n = coords.shape[-2]
        c = half_count(n)
        out = self.decode(coords[..., :c, :], z, validate=validate)
        re, im = out[..., 0], out[..., 1]
        return torch.cat([re - im, (re + im)[..., : n - c].flip(-1)], dim=-1)


class HartleyDecoder(_ImplicitDecoder):
    """cryoDRGN's PositionalDecoder: ``[PE(k), z] → H`` (every point, no symmetry enforced)."""

    n_out = 1

    def hartley(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(…, N)`` Hartley values at every point."""
        if validate:
            check_coords(coords)
        return self._net(coords, self._check_z(z, coords.shape[:-2]))[..., 0]

    def forward(self, coords: Tensor, z: Tensor | None, *, validate: bool = True) -> Tensor:
        """``(…, N, 3)`` → ``(…, N)`` Hartley values."""
        return self.hartley(coords, z, validate=validate)


@DECODERS.register("fourier")
def fourier(
    D: int,
    zdim: int,
    layers: int = 3,
    dim: int = 1024,
    activation: str = "relu",
    pe_type: str = "gaussian",
    pe_dim: int | None = None,
    feat_sigma: float = 0.5,
    seed: int = 0,
) -> FourierDecoder:
    """Positional-encoding MLP predicting (Re, Im) with exact Hermitian symmetry (cryoDRGN)."""
    return FourierDecoder(D, zdim, layers, dim, activation, pe_type, pe_dim, feat_sigma, seed)


@DECODERS.register("hartley")
def hartley(
    D: int,
    zdim: int,
    layers: int = 3,
    dim: int = 1024,
    activation: str = "relu",
    pe_type: str = "gaussian",
    pe_dim: int | None = None,
    feat_sigma: float = 0.5,
    seed: int = 0,
) -> HartleyDecoder:
    """Positional-encoding MLP predicting Hartley values directly (no symmetry enforced)."""
    return HartleyDecoder(D, zdim, layers, dim, activation, pe_type, pe_dim, feat_sigma, seed)
