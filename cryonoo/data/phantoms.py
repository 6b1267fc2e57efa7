"""Built-in heterogeneous phantoms made from coarse pseudo-atomic models.

Each phantom is a list of *conformations*; a conformation is a set of pseudo-atoms (positions in
Å, centred on the molecule's fixed core) rendered into a density map as a sum of isotropic 3-D
Gaussians. The molecules are written in code from a fixed seed, so every phantom is identical on
every machine.

Registered phantoms (``PHANTOMS``; see ``cryonoo list``):

``igg-1d``
    A Y-shaped, antibody-like molecule of twelve immunoglobulin-sized domains (two Fab arms of
    four domains, an Fc stem of four) joined at a hinge. One Fab arm swings about the hinge along a
    circular arc: conformation ``i`` of ``K`` has the arm rotated by ``−70° + 110°·i/(K−1)``
    about the axis normal to the molecule's plane. Labels are ordered along the arc.
``igg-rl``
    The same molecule with random bends (up to 45°) and twists (up to 90°) of both arms about the
    hinge, drawn independently per conformation from a seeded generator.
``igg-states``
    Four discrete states: arm A closed/open × arm B closed/open (each arm swings 50° about the
    hinge, away from the other; each arm holds a third of the mass).
``igg-bound``
    Four discrete states: arm A closed/open × a small extra domain (~5 % of the mass) bound to
    the Fc or not — a harder discrete case: small models resolve the arm but not the domain.

Volumes are indexed ``[z, y, x]`` with the molecule's origin at voxel ``box // 2`` on every axis,
so they follow the projection and Hartley conventions of :mod:`cryonoo.physics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cryonoo.registry import Registry

__all__ = ["PHANTOMS", "Phantom", "render_atoms"]

PHANTOMS: Registry[Callable[..., Phantom]] = Registry("phantom")

#: field of view of the built-in phantoms (Å): the box edge is ``box × apix = FOV_A``.
FOV_A = 256.0
_MOLECULE_SEED = 20240917
_ATOM_SPACING_A3 = 130.0  # volume per pseudo-atom, ≈ one residue


def render_atoms(
    atoms_A: np.ndarray | torch.Tensor,
    box: int,
    apix: float,
    sigma_A: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render pseudo-atoms into a ``(box, box, box)`` density map indexed ``[z, y, x]``.

    Parameters
    ----------
    atoms_A:
        ``(M, 3)`` positions ``(x, y, z)`` in Å; the origin maps to voxel ``box // 2``.
    box:
        Edge of the map in voxels.
    apix:
        Voxel size in Å.
    sigma_A:
        Gaussian width in Å; default ``max(1.5, 0.5·apix)`` (band-limited near Nyquist).

    The sum of Gaussians is separable, so the map is one ``einsum`` over atoms (no voxel loop).
    Each atom contributes unit mass (the map integrates to ``M`` in voxel units).
    """
    if box < 4:
        raise ValueError(f"box must be ≥ 4, got {box}")
    if apix <= 0:
        raise ValueError(f"apix must be > 0 Å, got {apix}")
    sigma = max(1.5, 0.5 * apix) if sigma_A is None else float(sigma_A)
    if sigma <= 0:
        raise ValueError(f"sigma_A must be > 0, got {sigma}")
    atoms = torch.as_tensor(atoms_A, dtype=torch.float64)  # exp arguments in float64
    if atoms.ndim != 2 or atoms.shape[1] != 3:
        raise ValueError(f"atoms_A must be (M, 3), got {tuple(atoms.shape)}")
    grid = (torch.arange(box, dtype=torch.float64) - box // 2) * apix  # (box,) Å
    s2 = 2 * (sigma**2)
    norm = (apix / (sigma * math.sqrt(2 * math.pi))) ** 3
    gx, gy, gz = (torch.exp(-((grid[None, :] - atoms[:, i : i + 1]) ** 2) / s2) for i in range(3))
    # the separable factors in the output precision: the sum over atoms is the costly part
    gz, gy, gx = gz.to(dtype), gy.to(dtype), gx.to(dtype)
    return torch.einsum("az,ay,ax->zyx", gz, gy, gx) * norm


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` active rotation by ``angle_rad`` about ``axis`` (Rodrigues)."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def _ellipsoid_atoms(
    rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, axis: np.ndarray
) -> np.ndarray:
    """Pseudo-atoms uniformly filling an ellipsoid whose first radius lies along ``axis``."""
    n = max(8, round(4 / 3 * math.pi * float(np.prod(radii)) / _ATOM_SPACING_A3))
    pts = rng.normal(size=(n, 3))
    pts *= (rng.uniform(size=(n, 1)) ** (1 / 3)) / np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= radii
    u = axis / np.linalg.norm(axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    v = np.cross(u, helper)
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    return center + pts @ np.stack([u, v, w])


@dataclass(frozen=True)
class _Igg:
    """The antibody-like model: atoms of the core (Fc + hinge) and of each Fab arm."""

    core: np.ndarray  # (Mc, 3) Å
    arm_a: np.ndarray  # (Ma, 3) Å, left arm
    arm_b: np.ndarray  # (Mb, 3) Å, right arm
    extra: np.ndarray  # (Me, 3) Å, optional bound domain (discrete states)
    hinge: np.ndarray  # (3,) Å


def _build_igg() -> _Igg:
    rng = np.random.default_rng(_MOLECULE_SEED)
    domain = np.array([20.0, 12.5, 12.5])  # Ig-domain half-axes, Å
    hinge = np.zeros(3)

    def arm(direction_deg: float) -> np.ndarray:
        d = np.array(
            [math.cos(math.radians(direction_deg)), math.sin(math.radians(direction_deg)), 0.0]
        )
        parts = [hinge + d * 6.0 * s + rng.normal(scale=1.0, size=3) for s in range(1, 4)]
        for dist in (30.0, 68.0):  # constant then variable domain pairs
            for side in (-1.0, 1.0):
                center = hinge + d * dist + np.array([0.0, 0.0, 12.0 * side])
                parts.append(_ellipsoid_atoms(rng, center, domain, d))
        return np.vstack([np.atleast_2d(p) for p in parts])

    fc_parts = []
    for dist in (-30.0, -66.0):
        for side in (-1.0, 1.0):
            center = np.array([13.0 * side, dist, 0.0])
            fc_parts.append(_ellipsoid_atoms(rng, center, domain, np.array([0.0, 1.0, 0.0])))
    core = np.vstack(fc_parts)
    extra = _ellipsoid_atoms(
        rng, np.array([34.0, -48.0, 0.0]), np.array([14.0, 11.0, 11.0]), np.array([1.0, 0.0, 0.0])
    )
    return _Igg(core=core, arm_a=arm(150.0), arm_b=arm(30.0), extra=extra, hinge=hinge)


@dataclass(frozen=True)
class Phantom:
    """A heterogeneous phantom: one pseudo-atomic model per conformation.

    Attributes
    ----------
    name:
        Registry name.
    conformations:
        Tuple of ``(M_k, 3)`` atom positions in Å, one per conformation (label ``k``).
    description:
        What varies between conformations.
    """

    name: str
    conformations: tuple[np.ndarray, ...]
    description: str = ""

    def __len__(self) -> int:
        return len(self.conformations)

    @staticmethod
    def default_apix(box: int) -> float:
        """Voxel size (Å) giving the built-in field of view ``FOV_A`` at this box size."""
        return FOV_A / box

    def volume(
        self, label: int, box: int, apix: float | None = None, sigma_A: float | None = None
    ) -> torch.Tensor:
        """``(box, box, box)`` density map of conformation ``label``."""
        if not 0 <= label < len(self):
            raise IndexError(f"{self.name} has {len(self)} conformations; got label {label}")
        apix = self.default_apix(box) if apix is None else apix
        return render_atoms(self.conformations[label], box, apix, sigma_A)

    def volumes(
        self, box: int, apix: float | None = None, sigma_A: float | None = None
    ) -> torch.Tensor:
        """``(K, box, box, box)`` density maps of every conformation."""
        return torch.stack([self.volume(k, box, apix, sigma_A) for k in range(len(self))])


def _rotate_about(points: np.ndarray, pivot: np.ndarray, rot: np.ndarray) -> np.ndarray:
    return (points - pivot) @ rot.T + pivot


def _check_count(n_conformations: int) -> int:
    if n_conformations < 1:
        raise ValueError(f"n_conformations must be ≥ 1, got {n_conformations}")
    return n_conformations


@PHANTOMS.register("igg-1d")
def igg_1d(n_conformations: int = 100) -> Phantom:
    """Antibody-like Y; one Fab arm swings along a 110° circular arc (1-D continuous motion)."""
    mol = _build_igg()
    n = _check_count(n_conformations)
    angles = np.linspace(-70.0, 40.0, n) if n > 1 else np.zeros(1)
    normal = np.array([0.0, 0.0, 1.0])
    confs = tuple(
        np.vstack(
            [
                mol.core,
                mol.arm_b,
                _rotate_about(mol.arm_a, mol.hinge, _rotation(normal, math.radians(a))),
            ]
        )
        for a in angles
    )
    return Phantom("igg-1d", confs, "arm A rotated by −70°…+40° about the hinge")


@PHANTOMS.register("igg-rl")
def igg_rl(n_conformations: int = 100, seed: int = 0) -> Phantom:
    """Antibody-like Y with random bends and twists of both Fab arms (rich continuous motion)."""
    mol = _build_igg()
    rng = np.random.default_rng(seed)
    confs = []
    for _ in range(_check_count(n_conformations)):
        arms = []
        for arm in (mol.arm_a, mol.arm_b):
            bend_axis = rng.normal(size=3)
            bend = _rotation(bend_axis, math.radians(rng.uniform(-45.0, 45.0)))
            arm_dir = arm.mean(axis=0) - mol.hinge
            twist = _rotation(arm_dir, math.radians(rng.uniform(-90.0, 90.0)))
            arms.append(_rotate_about(arm, mol.hinge, bend @ twist))
        confs.append(np.vstack([mol.core, *arms]))
    return Phantom("igg-rl", tuple(confs), "both arms bent ≤45° and twisted ≤90° at random")


@PHANTOMS.register("igg-states")
def igg_states(n_conformations: int | None = None) -> Phantom:
    """Four discrete states: arm A closed/open × arm B closed/open (two independent hinges)."""
    _check_four("igg-states", n_conformations)
    mol = _build_igg()
    normal = np.array([0.0, 0.0, 1.0])
    open_a = _rotate_about(mol.arm_a, mol.hinge, _rotation(normal, math.radians(-50.0)))
    open_b = _rotate_about(mol.arm_b, mol.hinge, _rotation(normal, math.radians(-50.0)))
    confs = tuple(
        np.vstack([mol.core, arm_a, arm_b])
        for arm_a in (mol.arm_a, open_a)
        for arm_b in (mol.arm_b, open_b)
    )
    return Phantom(
        "igg-states", confs, "0: both closed, 1: B open, 2: A open, 3: both open (arm A × arm B)"
    )


@PHANTOMS.register("igg-bound")
def igg_bound(n_conformations: int | None = None) -> Phantom:
    """Four discrete states: arm A closed/open × an extra Fc-bound domain absent/present."""
    _check_four("igg-bound", n_conformations)
    mol = _build_igg()
    normal = np.array([0.0, 0.0, 1.0])
    open_a = _rotate_about(mol.arm_a, mol.hinge, _rotation(normal, math.radians(-50.0)))
    confs = tuple(
        np.vstack([mol.core, mol.arm_b, arm] + ([mol.extra] if bound else []))
        for arm in (mol.arm_a, open_a)
        for bound in (False, True)
    )
    return Phantom("igg-bound", confs, "0: closed, 1: closed+bound, 2: open, 3: open+bound")


def _check_four(name: str, n_conformations: int | None) -> None:
    if n_conformations not in (None, 4):
        raise ValueError(f"{name} has exactly 4 states; got n_conformations={n_conformations}")


def _build_clamshell() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two equal lobes joined at a hinge: ``(fixed atoms, moving atoms, hinge, axis)``.

    Each lobe is a large body (half-axes 32 × 22 × 18 Å) with a small knob, so neither lobe is
    symmetric and an image fixes both its orientation and the opening angle. The hinge sits
    where the lobes meet, 18 Å below the long axis; the moving lobe turns about ``z``.
    """
    rng = np.random.default_rng(_MOLECULE_SEED + 1)
    x_axis, y_axis = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    body = np.array([32.0, 22.0, 18.0])
    knob = np.array([14.0, 11.0, 11.0])
    fixed = np.vstack(
        [
            _ellipsoid_atoms(rng, np.array([-36.0, 0.0, 0.0]), body, x_axis),
            _ellipsoid_atoms(rng, np.array([-48.0, 26.0, 6.0]), knob, y_axis),
        ]
    )
    moving = np.vstack(
        [
            _ellipsoid_atoms(rng, np.array([36.0, 0.0, 0.0]), body, x_axis),
            _ellipsoid_atoms(rng, np.array([56.0, 20.0, -8.0]), knob, x_axis),
        ]
    )
    return fixed, moving, np.array([0.0, -18.0, 0.0]), np.array([0.0, 0.0, 1.0])


@PHANTOMS.register("hinge")
def hinge(n_conformations: int = 100, max_angle_deg: float = 45.0) -> Phantom:
    """Two-domain hinge closing: one lobe (half the mass) turns 0°…``max_angle_deg`` (1-D)."""
    fixed, moving, pivot, axis = _build_clamshell()
    n = _check_count(n_conformations)
    angles = np.linspace(0.0, max_angle_deg, n) if n > 1 else np.zeros(1)
    confs = tuple(
        np.vstack([fixed, _rotate_about(moving, pivot, _rotation(axis, math.radians(a)))])
        for a in angles
    )
    return Phantom(
        "hinge", confs, f"lobe B (half the mass) closed by 0°…{max_angle_deg:g}° about the hinge"
    )
