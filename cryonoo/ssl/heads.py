"""SSL heads: the small MLPs that map a latent to the space where an SSL loss is computed.

In SSL papers these are called "projectors" (VICReg: "expander"); cryonoo calls them *heads*
to avoid a clash with cryo-EM projection. Every factory in :data:`HEADS` takes ``in_dim`` (the
latent width) and ``spec`` and returns an ``nn.Module`` with an ``out_dim`` attribute mapping
``(B, in_dim)`` → ``(B, out_dim)``.

A *spec* is a string of layer widths, ``"1024-1024-1024"`` (three Linear layers), or a sequence
of ints. :func:`build_head` also accepts a registered head name or a ready ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryonoo.registry import Registry

__all__ = ["HEADS", "IdentityHead", "MLPHead", "apply_per_group", "build_head", "parse_spec"]

HEADS: Registry = Registry("head")

HeadSpec = str | int | Sequence[int]


def parse_spec(spec: HeadSpec) -> list[int]:
    """``"1024-1024-1024"`` / ``1024`` / ``[1024, 1024]`` → list of positive widths."""
    if isinstance(spec, int):
        widths = [spec]
    elif isinstance(spec, str):
        try:
            widths = [int(w) for w in spec.strip().split("-")]
        except ValueError:
            raise ValueError(f"head spec must look like '1024-1024-1024', got {spec!r}") from None
    else:
        widths = [int(w) for w in spec]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"head spec needs at least one positive width, got {spec!r}")
    return widths


class MLPHead(nn.Module):
    """``Linear → BatchNorm1d → ReLU`` between layers; the last layer is a plain ``Linear``.

    ``last_norm=True`` adds a ``BatchNorm1d(affine=False)`` after the last Linear (SimSiam's
    projector). Linear layers followed by BatchNorm have no bias (it would be cancelled).
    Input ``(B, in_dim)`` → output ``(B, widths[-1])``; needs ``B ≥ 2`` in training mode.
    """

    def __init__(
        self,
        in_dim: int,
        widths: Sequence[int],
        *,
        last_bias: bool = False,
        last_norm: bool = False,
    ) -> None:
        super().__init__()
        dims = [int(in_dim), *map(int, widths)]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            layers += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1])]
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias and not last_norm))
        if last_norm:
            layers.append(nn.BatchNorm1d(dims[-1], affine=False))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = dims[0], dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_groups(self, x: Tensor) -> Tensor:
        """``(G, B, in_dim)`` → ``(G, B, out_dim)``: the head applied to each group ``x[g]`` on
        its own — every BatchNorm normalizes a group with that group's batch statistics and
        updates its running statistics as ``G`` calls in turn would — with one matrix product
        per layer over all ``G·B`` rows (one weight gradient instead of ``G`` summed ones)."""
        groups, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n * groups, -1)  # row i·G + g: sample i of group g
        for layer in self.net:
            if isinstance(layer, nn.BatchNorm1d):
                h = _batch_norm_per_group(layer, h.reshape(n, -1), groups).reshape(n * groups, -1)
            else:
                h = layer(h)
        return h.reshape(n, groups, -1).transpose(0, 1)


def _batch_norm_per_group(bn: nn.BatchNorm1d, x: Tensor, groups: int) -> Tensor:
    """``bn`` on ``x`` ``(B, G·C)`` (group ``g``'s features in columns ``g·C … g·C + C − 1``),
    each group with its own statistics; the running statistics are updated group after group,
    as ``G`` calls of ``bn`` would."""
    weight = None if bn.weight is None else bn.weight.repeat(groups)
    bias = None if bn.bias is None else bn.bias.repeat(groups)
    if not bn.track_running_stats:  # batch statistics in training and eval alike, as bn does
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
    if not bn.training:  # the running statistics, the same for every group
        mean, var = bn.running_mean.repeat(groups), bn.running_var.repeat(groups)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)
    # momentum 1: the kernel leaves each group's batch mean and unbiased variance in the buffers
    means = torch.zeros(x.shape[1], dtype=bn.running_mean.dtype, device=x.device)
    variances = torch.ones_like(means)
    out = F.batch_norm(x, means, variances, weight, bias, True, 1.0, bn.eps)
    with torch.no_grad():
        for mean, var in zip(means.view(groups, -1), variances.view(groups, -1), strict=True):
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum
            if factor is None:  # a cumulative average, as bn keeps it
                factor = 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean, factor)
            bn.running_var.lerp_(var, factor)
    return out


def apply_per_group(head: nn.Module, z: Tensor) -> Tensor:
    """``(G, B, in_dim)`` → ``(G, B, out_dim)``, equal to ``stack([head(z[g]) for g …])``: in
    one pass for an :class:`MLPHead` (BatchNorm statistics per group) or the identity, one
    call per group for any other module."""
    if isinstance(head, MLPHead):
        return head.forward_groups(z)
    if isinstance(head, nn.Identity):
        return z
    return torch.stack([head(z_g) for z_g in z])


class IdentityHead(nn.Identity):
    """No head: the SSL loss sees the latent itself (``out_dim = in_dim``)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = int(in_dim)


@HEADS.register("mlp")
def mlp_head(in_dim: int, spec: HeadSpec = "1024-1024-1024") -> nn.Module:
    """VICReg expander: Linear-BN-ReLU blocks, plain Linear last (spec '1024-1024-1024')."""
    return MLPHead(in_dim, parse_spec(spec))


@HEADS.register("none")
def identity_head(in_dim: int, spec: HeadSpec | None = None) -> nn.Module:
    """No expander: identity on the latent (the 'no expander' ablation)."""
    return IdentityHead(in_dim)


@HEADS.register("simsiam-projector")
def simsiam_projector(in_dim: int, spec: HeadSpec = "1024-1024-1024") -> nn.Module:
    """SimSiam projector: like 'mlp' plus a BatchNorm (no affine) after the last Linear."""
    return MLPHead(in_dim, parse_spec(spec), last_norm=True)


@HEADS.register("simsiam-predictor")
def simsiam_predictor(in_dim: int, spec: HeadSpec | None = None) -> nn.Module:
    """SimSiam bottleneck predictor: Linear(d→h)-BN-ReLU-Linear(h→d), h = spec or d/4."""
    hidden = max(in_dim // 4, 1) if spec is None else parse_spec(spec)[0]
    return MLPHead(in_dim, [hidden, in_dim], last_bias=True)


def build_head(head: HeadSpec | nn.Module, in_dim: int) -> nn.Module:
    """A head from a registered name (``"none"``, ``"mlp"``), a width spec or a module.

    A module passes through unchanged; it should map ``(B, in_dim)`` → ``(B, out_dim)`` and
    preferably carry an ``out_dim`` attribute.
    """
    if isinstance(head, nn.Module):
        return head
    if isinstance(head, str) and head in HEADS:
        return HEADS.build(head, in_dim=in_dim)
    return mlp_head(in_dim, head)


def head_out_dim(head: nn.Module, in_dim: int) -> int:
    """``head.out_dim`` if present, else measured with a dummy eval-mode forward pass."""
    out_dim = getattr(head, "out_dim", None)
    if out_dim is not None:
        return int(out_dim)
    was_training = head.training
    try:
        head.eval()
        with torch.no_grad():
            return int(head(torch.zeros(2, in_dim)).shape[-1])
    finally:
        head.train(was_training)
