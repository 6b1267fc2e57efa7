"""Encoders (images → posterior mean and log-variance) and the MLP building blocks they share.

Every entry of :data:`ENCODERS` is a factory taking keyword arguments ``in_dim`` (number of
encoder-mask points), ``zdim``, ``layers``, ``dim`` (hidden width), ``activation`` and, for image
encoders, ``D`` (odd lattice size, ``box + 1``); every factory accepts all of them and ignores
those it does not need (``D`` for the MLPs, ``in_dim`` for the CNN). The built module has
attributes ``zdim`` and ``input_kind``:

* ``"points"``: ``forward(x (B, in_dim)) → (mu, logvar)``, each ``(B, zdim)``; ``x`` holds the
  (translated, phase-flipped) Hartley values at the encoder-mask points in raster order.
* ``"image"``: ``forward(x (B, D, D)) → (mu, logvar)``; ``x`` is the same image on the full lattice,
  zero outside the encoder mask.

``resid-mlp`` is cryoDRGN's ``ResidLinearMLP(in_dim → 2·zdim)``; the module layout (``main`` =
``Sequential`` of ``[Linear|ResidLinear, act, (ResidLinear, act)×layers, Linear]``, a
``ResidLinear`` wrapping ``.linear``) gives the same ``state_dict`` keys as cryoDRGN's encoder.

Pose-conditioned encoders (``pose-mlp``) also have the class attribute ``needs_pose = True``:
they are called as ``forward(x, rot)`` with ``rot`` the ``(B, 3, 3)`` poses of the images
(cryoDRGN convention, lattice ``coords @ rot``), and the model
(:class:`~cryonoo.models.vae.HetVAE`) raises ``ValueError`` when it has no poses to give.
Encoders without the attribute are called as ``forward(x)`` and never see the pose.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.physics.lattice import check_odd_lattice
from cryonoo.registry import Registry

__all__ = [
    "ACTIVATIONS",
    "ENCODERS",
    "MLP",
    "POSE_DIM",
    "ConvEncoder",
    "MLPEncoder",
    "PoseMLPEncoder",
    "ResidLinear",
    "ResidLinearMLP",
    "make_activation",
    "pose_code",
]

ENCODERS: Registry = Registry("encoder")

#: Activation names accepted by every encoder and decoder.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: str, *, inplace: bool = False) -> nn.Module:
    """A fresh activation module by name (see :data:`ACTIVATIONS`); ``inplace=True`` makes
    ReLU and leaky ReLU overwrite their input (their backward needs only the output), the
    others ignore it."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    module = ACTIVATIONS[name]()
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        module.inplace = inplace
    return module


def check_int(value: int, name: str, minimum: int) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) ≥ ``minimum``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


#: Weight dtypes in which :class:`ResidLinear` folds its skip connection into the weight.
_FOLD_DTYPES = (torch.float32, torch.float64)


class ResidLinear(nn.Module):
    """``y = W x + b + x`` (square linear layer with a skip connection).

    In float32 and float64 outside autocast the skip is folded into the weight,
    ``y = (W + I) x + b``: one matrix product gives the layer and its skip connection in the
    forward pass and in the backward pass (``∂L/∂x = (W + I)ᵀ ∂L/∂y``), which saves an
    element-wise pass over the activations each way; the bias is added in place after the
    product, not copied into the output before it. Under autocast (or in a half-precision
    module) the sum stays apart, since ``1 + W_ii`` rounded to 8 significant bits would lose
    the diagonal of ``W``.
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        if n_in != n_out:
            raise ValueError(f"ResidLinear needs n_in == n_out, got {n_in} and {n_out}")
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        if weight.dtype not in _FOLD_DTYPES or torch.is_autocast_enabled(x.device.type):
            return self.linear(x) + x
        eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return torch.matmul(x, (weight + eye).t()).add_(bias)  # no bias copy before the product


class _Stack(nn.Module):
    """``main = Sequential(first, act, (hidden, act)×nlayers, last)``; acts on the last axis.

    Every activation follows a linear layer whose fresh output nothing else keeps, so ReLU
    and leaky ReLU act in place (one buffer fewer per layer)."""

    residual: bool = False

    def __init__(
        self, in_dim: int, nlayers: int, hidden_dim: int, out_dim: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim", 1)
        check_int(nlayers, "layers", 0)
        check_int(hidden_dim, "dim", 1)
        check_int(out_dim, "out_dim", 1)

        def lin(a: int, b: int) -> nn.Module:
            return ResidLinear(a, b) if self.residual and a == b else nn.Linear(a, b)

        mods: list[nn.Module] = [lin(in_dim, hidden_dim), make_activation(activation, inplace=True)]
        for _ in range(nlayers):
            mods += [lin(hidden_dim, hidden_dim), make_activation(activation, inplace=True)]
        mods.append(lin(hidden_dim, out_dim))
        self.main = nn.Sequential(*mods)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)

    def forward_concat(self, x: Tensor, z: Tensor) -> Tensor:
        """``self(cat([x, z], -1))`` with ``z`` ``(…, b)`` broadcast over ``x``'s point axis:
        ``x`` ``(…, N, a)`` → ``(…, N, out_dim)``, ``a + b = in_dim``.

        A plain first layer is applied as ``x W_xᵀ + (z W_zᵀ + bias)``: the ``z`` part once
        per leading index instead of once per point, and no concatenated copy; a residual
        first layer (``in_dim == hidden_dim``) needs the concatenation and gets it."""
        first = self.main[0]
        if type(first) is not nn.Linear:
            zz = z[..., None, :].expand(*x.shape[:-1], z.shape[-1]).to(x.dtype)
            return self(torch.cat([x, zz], dim=-1))
        n = x.shape[-1]
        h = F.linear(x, first.weight[:, :n])
        h = h.add_(F.linear(z.to(x.dtype), first.weight[:, n:], first.bias)[..., None, :])
        for layer in itertools.islice(self.main, 1, None):
            h = layer(h)
        return h


class ResidLinearMLP(_Stack):
    """cryoDRGN's residual MLP: ``(…, in_dim) → (…, out_dim)``, ``nlayers + 2`` linear layers."""

    residual = True


class MLP(_Stack):
    """The same stack as :class:`ResidLinearMLP` without skip connections."""

    residual = False


class MLPEncoder(nn.Module):
    """An MLP on the encoder-mask points: ``(B, in_dim) → ((B, zdim), (B, zdim))``."""

    input_kind = "points"

    def __init__(
        self,
        in_dim: int,
        zdim: int,
        layers: int = 3,
        dim: int = 1024,
        activation: str = "relu",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.zdim = check_int(zdim, "zdim", 1)
        self.in_dim = check_int(in_dim, "in_dim", 1)
        cls = ResidLinearMLP if residual else MLP
        self.main = cls(in_dim + self.extra_inputs, layers, dim, 2 * zdim, activation).main

    #: inputs the network takes beside the ``in_dim`` points (a subclass's conditioning code)
    extra_inputs = 0

    def _check_points(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"x must have shape (B, {self.in_dim}) (encoder-mask points), got {tuple(x.shape)}"
            )

    def _split(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        out = self.main(inputs)
        return out[:, : self.zdim], out[:, self.zdim :]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_points(x)
        return self._split(x)


#: width of :func:`pose_code`
POSE_DIM = 6


def pose_code(rot: Tensor) -> Tensor:
    """``(B, 3, 3)`` rotations → ``(B, 6)`` pose code: the first two rows, row-major.

    In the cryoDRGN convention an image at pose ``R`` is the slice of the volume's spectrum at
    ``[kx, ky, 0] @ R = kx·R[0] + ky·R[1]``: the first two rows are the 3-D directions of the
    image's frequency axes ``kx`` and ``ky``, so they are exactly what the image depends on
    (the third row, the viewing direction, is their cross product and adds nothing). As a code
    this is the continuous 6-D representation of Zhou et al. (CVPR 2019): unlike Euler angles
    or quaternions it has no discontinuity or double cover, and unlike the 9 entries it has no
    redundant block. Entries are in ``[-1, 1]``, the scale of the normalized image points.
    """
    if rot.ndim != 3 or tuple(rot.shape[1:]) != (3, 3):
        raise ValueError(
            f"rot must have shape (B, 3, 3) (rotation matrices), got {tuple(rot.shape)}"
        )
    return rot[:, :2, :].reshape(rot.shape[0], POSE_DIM)


class PoseMLPEncoder(MLPEncoder):
    """``resid-mlp`` on the encoder-mask points concatenated with the image's pose code.

    ``forward(x (B, in_dim), rot (B, 3, 3)) → ((B, zdim), (B, zdim))``: the residual MLP of
    :class:`MLPEncoder` (same ``main`` layout, ``layers`` hidden residual layers of width
    ``dim``) on ``[x, pose_code(rot)]``, ``in_dim + 6`` inputs (:func:`pose_code`: the first
    two rows of the rotation, the 3-D directions of the image's ``kx`` and ``ky`` axes). Only
    the first layer differs from ``resid-mlp``'s (6 more inputs). ``rot`` is the pose the image
    is at (the cryoDRGN convention, lattice ``coords @ rot``), the same the decoder renders it
    with; it is detached (a pose is an input, not a parameter).
    """

    input_kind = "points"
    #: the model calls ``forward(x, rot)`` (see the module docstring)
    needs_pose = True

    extra_inputs = POSE_DIM

    def forward(self, x: Tensor, rot: Tensor) -> tuple[Tensor, Tensor]:
        self._check_points(x)
        if not isinstance(rot, Tensor) or tuple(rot.shape) != (x.shape[0], 3, 3):
            got = tuple(rot.shape) if isinstance(rot, Tensor) else type(rot).__name__
            raise ValueError(f"rot must have shape ({x.shape[0]}, 3, 3) (poses), got {got}")
        code = pose_code(rot.detach()).to(device=x.device, dtype=x.dtype)
        return self._split(torch.cat([x, code], dim=-1))


def _conv_out(size: int) -> int:
    """Output size of a 3×3 convolution with stride 2 and padding 1."""
    return (size + 2 * 1 - 3) // 2 + 1


class ConvEncoder(nn.Module):
    """A small strided CNN on the ``(B, D, D)`` lattice image.

    ``max(layers, s)`` stages ``Conv3×3(stride 2) → act`` with 16, 32, … (≤ 256) channels, where
    ``s`` is the number of stages needed to bring the side below 9 pixels; then
    ``Linear(flat, dim) → act → Linear(dim, 2·zdim)``. All sizes follow from ``D``.
    """

    input_kind = "image"

    def __init__(
        self, D: int, zdim: int, layers: int = 3, dim: int = 256, activation: str = "relu"
    ) -> None:
        super().__init__()
        check_odd_lattice(D)
        self.zdim = check_int(zdim, "zdim", 1)
        check_int(layers, "layers", 1)
        check_int(dim, "dim", 1)
        mods: list[nn.Module] = []
        size, ch_in, stage = D, 1, 0
        while (stage < layers or size > 8) and size > 1:
            ch_out = min(16 * 2**stage, 256)
            mods += [nn.Conv2d(ch_in, ch_out, 3, stride=2, padding=1), make_activation(activation)]
            size, ch_in, stage = _conv_out(size), ch_out, stage + 1
        self.conv = nn.Sequential(*mods)
        flat = ch_in * size * size
        self.head = nn.Sequential(
            nn.Linear(flat, dim), make_activation(activation), nn.Linear(dim, 2 * zdim)
        )
        self.D = D

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.D, self.D):
            raise ValueError(
                f"x must have shape (B, {self.D}, {self.D}) (lattice images), got {tuple(x.shape)}"
            )
        out = self.head(torch.flatten(self.conv(x[:, None]), 1))
        return out[:, : self.zdim], out[:, self.zdim :]


@ENCODERS.register("resid-mlp")
def resid_mlp(
    in_dim: int,
    zdim: int,
    layers: int = 3,
    dim: int = 1024,
    activation: str = "relu",
    D: int | None = None,
) -> MLPEncoder:
    """Residual MLP on the encoder-mask pixels (cryoDRGN's default encoder)."""
    return MLPEncoder(in_dim, zdim, layers, dim, activation, residual=True)


@ENCODERS.register("pose-mlp")
def pose_mlp(
    in_dim: int,
    zdim: int,
    layers: int = 3,
    dim: int = 1024,
    activation: str = "relu",
    D: int | None = None,
) -> PoseMLPEncoder:
    """Residual MLP on the encoder-mask pixels and the pose (6-D: the rotation's first rows)."""
    return PoseMLPEncoder(in_dim, zdim, layers, dim, activation, residual=True)


@ENCODERS.register("mlp")
def mlp(
    in_dim: int,
    zdim: int,
    layers: int = 3,
    dim: int = 1024,
    activation: str = "relu",
    D: int | None = None,
) -> MLPEncoder:
    """Plain MLP (no skip connections) on the encoder-mask pixels."""
    return MLPEncoder(in_dim, zdim, layers, dim, activation, residual=False)


@ENCODERS.register("cnn")
def cnn(
    D: int,
    zdim: int,
    layers: int = 3,
    dim: int = 256,
    activation: str = "relu",
    in_dim: int | None = None,
) -> ConvEncoder:
    """Small strided CNN on the masked lattice image (shapes derived from D)."""
    return ConvEncoder(D, zdim, layers, dim, activation)
