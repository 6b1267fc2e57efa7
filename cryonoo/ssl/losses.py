"""Self-supervised losses between two batches of embeddings, as plain functions.

All functions take ``(B, d)`` tensors (``B`` samples, ``d`` features), compute in float32 (or
float64 when given float64) with autocast disabled, and return float32/float64 scalars.
Half-precision inputs are promoted first, so the result does not depend on an enclosing
``torch.autocast`` region. Every function needs ``B ≥ 2`` where batch statistics are used.

References
----------
* VICReg: Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
  Self-Supervised Learning", ICLR 2022, arXiv:2105.04906.
* SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
  arXiv:2011.10566.
* Barlow Twins: Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
  Redundancy Reduction", ICML 2021, arXiv:2103.03230.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "VICREG_CONVENTION",
    "barlow_twins_loss",
    "collapse_std",
    "combine_vicreg_terms",
    "full_precision",
    "invariance_loss",
    "simsiam_loss",
    "vicreg_branch_terms",
    "vicreg_loss",
    "vicreg_terms",
]

#: Name of the VICReg normalization convention implemented by :func:`vicreg_terms`.
VICREG_CONVENTION = "official"


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Context in which autocast is disabled for ``device``'s type (no-op where unsupported)."""
    try:
        ctx = torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _promote(x: Tensor) -> Tensor:
    """Half / bfloat16 / integer → float32; float32 and float64 pass through."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_pair(a: Tensor, b: Tensor, min_batch: int = 1) -> tuple[Tensor, Tensor]:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"expected two (B, d) tensors of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if a.shape[0] < min_batch:
        raise ValueError(f"this loss needs a batch of at least {min_batch}, got {a.shape[0]}")
    a, b = _promote(a), _promote(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _off_diagonal_sq_sum(m: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of a square ``(d, d)`` matrix."""
    return (m**2).sum() - (torch.diagonal(m) ** 2).sum()


def _hinge_of_variances(var: Tensor, gamma: float, eps: float) -> Tensor:
    """``mean_j relu(γ − sqrt(var_j + ε))`` of the ``(d,)`` per-feature variances."""
    return F.relu(gamma - torch.sqrt(var + eps)).mean()


def _variance_and_covariance(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(Var_unbiased(x[:, j]) (d,), Σ_{i≠j} C_ij² / d)`` with ``C = X̃ᵀX̃ / (n − 1)`` over the
    centered batch ``X̃``: one centering serves both, the variances being ``diag C``.

    ``‖X̃ᵀX̃‖²_F = ‖X̃X̃ᵀ‖²_F``, so for a batch smaller than the width (``n < d``, the usual case
    with a 1024-wide expander) the ``(n, n)`` Gram matrix gives the same value at ``n/d`` of
    the cost of the ``(d, d)`` covariance.
    """
    n, d = x.shape
    xc = x - x.mean(dim=0)
    gram = xc @ xc.T if n < d else xc.T @ xc
    diag = (xc**2).sum(dim=0)  # (n − 1) · C_jj
    cov = ((gram**2).sum() - (diag**2).sum()) / ((n - 1) ** 2 * d)
    return diag / (n - 1), cov


def vicreg_branch_terms(x: Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> dict[str, Tensor]:
    """The per-branch VICReg regularizers of one ``(B, d)`` embedding batch (``B ≥ 2``).

    ``{"var": v(x), "cov": c(x)}`` as in :func:`vicreg_terms`, which combines two branches as
    ``var = ½ [v(a) + v(b)]`` and ``cov = c(a) + c(b)``; computing them once per branch lets one
    anchor be scored against several views without recomputing its statistics.
    """
    x = _promote(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected a (B ≥ 2, d) embedding batch, got {tuple(x.shape)}")
    with full_precision(x.device):
        var, cov = _variance_and_covariance(x)
        return {"var": _hinge_of_variances(var, gamma, eps), "cov": cov}


def vicreg_terms(
    a: Tensor, b: Tensor, *, gamma: float = 1.0, eps: float = 1e-4
) -> dict[str, Tensor]:
    """The three VICReg terms between two ``(B, d)`` embedding batches (``B ≥ 2``).

    Normalization convention (``"official"``, that of the authors' released ``main_vicreg.py``,
    which the published default weights were tuned with)::

        inv = (1/(B·d)) Σ_i ‖a_i − b_i‖²          # F.mse_loss: mean over all B·d elements
        var = ½ [v(a) + v(b)],   v(x) = (1/d) Σ_j relu(γ − sqrt(Var(x_j) + ε))   # unbiased Var
        cov = c(a) + c(b),       c(x) = (1/d) Σ_{i≠j} C(x)_ij²,  C(x) = X̃ᵀX̃ / (B − 1)

    Compared with the paper's eq. (1)–(5), the invariance term is ``d×`` smaller and the
    variance term is halved (averaged over the two branches); the covariance term is the same.
    Unlike the released code, ``C`` is divided by the *actual* batch size minus one.

    Returns ``{"inv", "var", "cov"}`` scalars (float32, or float64 for float64 inputs).
    """
    a, b = _check_pair(a, b, min_batch=2)
    with full_precision(a.device):
        inv = F.mse_loss(a, b)
    return combine_vicreg_terms(
        inv,
        vicreg_branch_terms(a, gamma=gamma, eps=eps),
        vicreg_branch_terms(b, gamma=gamma, eps=eps),
    )


def combine_vicreg_terms(
    inv: Tensor, branch_a: dict[str, Tensor], branch_b: dict[str, Tensor]
) -> dict[str, Tensor]:
    """``{"inv", "var", "cov"}`` from the invariance term and two branches' regularizers."""
    var = 0.5 * (branch_a["var"] + branch_b["var"])
    return {"inv": inv, "var": var, "cov": branch_a["cov"] + branch_b["cov"]}


def vicreg_loss(
    a: Tensor,
    b: Tensor,
    inv: float = 1.0,
    var: float = 1.0,
    cov: float = 1.0,
    *,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """Weighted VICReg loss ``inv·s + var·v + cov·c`` (terms of :func:`vicreg_terms`).

    The CryoNOO default weights are ``inv = var = cov = 1``; the VICReg paper's are 25/25/1.
    """
    t = vicreg_terms(a, b, gamma=gamma, eps=eps)
    return inv * t["inv"] + var * t["var"] + cov * t["cov"]


def invariance_loss(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over all ``B·d`` elements (the VICReg invariance term alone)."""
    a, b = _check_pair(a, b)
    with full_precision(a.device):
        return F.mse_loss(a, b)


def _neg_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``−mean_i cos(p_i, z_i)`` with ``z`` treated as a constant (stop-gradient)."""
    z = z.detach()
    return -(F.normalize(p, dim=-1, eps=1e-8) * F.normalize(z, dim=-1, eps=1e-8)).sum(-1).mean()


def simsiam_loss(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
    """Symmetrized SimSiam loss ``½ D(p_a, sg(z_b)) + ½ D(p_b, sg(z_a))``.

    ``D(p, z) = −mean_i p_i·z_i / (‖p_i‖ ‖z_i‖)``; ``sg`` is stop-gradient, so no gradient flows
    into ``z_a`` or ``z_b``. ``p_*`` are predictor outputs, ``z_*`` projector outputs, all
    ``(B, d)``. The minimum is −1.
    """
    p_a, z_b = _check_pair(p_a, z_b)
    p_b, z_a = _check_pair(p_b, z_a)
    with full_precision(p_a.device):
        return 0.5 * _neg_cosine(p_a, z_b) + 0.5 * _neg_cosine(p_b, z_a)


def _standardize(x: Tensor, eps: float) -> Tensor:
    """Batch standardization with the biased variance (``BatchNorm1d(affine=False)``, train)."""
    mean = x.mean(dim=0)
    var = x.var(dim=0, correction=0)
    return (x - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(a: Tensor, b: Tensor, lambd: float = 0.0051, *, eps: float = 1e-5) -> Tensor:
    """Barlow Twins loss ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`` between ``(B, d)`` batches.

    ``C = âᵀ b̂ / B`` is the cross-correlation of the batch-standardized embeddings (biased
    variance, ``eps`` added to it as in ``BatchNorm1d``). ``λ = 0.0051`` is the released code's
    default (the paper quotes 5·10⁻³). Needs ``B ≥ 2``.
    """
    a, b = _check_pair(a, b, min_batch=2)
    with full_precision(a.device):
        n = a.shape[0]
        c = _standardize(a, eps).T @ _standardize(b, eps) / n
        on_diag = ((1.0 - torch.diagonal(c)) ** 2).sum()
        return on_diag + lambd * _off_diagonal_sq_sum(c)


def collapse_std(x: Tensor) -> Tensor:
    """Collapse monitor: mean over features of the batch std of L2-normalized rows.

    ``≈ 1/sqrt(d)`` for well-spread embeddings, ``→ 0`` on collapse. Detached, float32.
    """
    with torch.no_grad(), full_precision(x.device):
        x = _promote(x.detach())
        if x.shape[0] < 2:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return F.normalize(x, dim=-1).std(dim=0).mean()
