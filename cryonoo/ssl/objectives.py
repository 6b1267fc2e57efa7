"""SSL objectives: a loss bundled with the heads it needs (what ``--ssl`` selects).

Each entry of :data:`SSL` is an ``nn.Module`` built as ``factory(in_dim, head=…, …)`` whose
``forward(z_a, z_b)`` maps two ``(B, in_dim)`` latent batches to a dict of scalars::

    {"loss": weighted total, <term>: value, …, "std": collapse monitor, "skipped": 0. or 1.}

* The heads run at the caller's precision (their matrix products in bfloat16 under a bf16
  ``torch.autocast``); every loss term is computed in float32 with autocast disabled
  (:mod:`cryonoo.ssl.losses` promotes its inputs), so the result is float32 under AMP.
* Each BatchNorm of a head normalizes every view with that view's own batch statistics (the
  views are never pooled into one batch).
* A batch with fewer than 2 samples cannot give batch statistics: the objective returns a zero
  loss with ``skipped = 1`` (and logs the reason once) instead of raising.
* ``forward_views(z_a, z_views)`` scores one anchor batch against ``J`` view batches and runs
  the anchor through the heads **once** (J + 1 branches instead of 2J); the results equal
  ``[forward(z_a, z_views[j]) for j in range(J)]``. Each objective therefore splits into
  ``_embed_groups`` (latent branches → head outputs) and ``_pair`` (two embeddings → terms).
  The J + 1 branches go through an MLP head in one pass (:func:`~cryonoo.ssl.heads.apply_per_group`:
  one matrix product per layer, BatchNorm statistics still per branch).
* Non-loss entries (``std``, ``skipped``) are detached; the terms are returned with their graph
  so callers may reweight them, and ``loss`` is differentiable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cryonoo.registry import Registry
from cryonoo.ssl.heads import (
    HEADS,
    HeadSpec,
    apply_per_group,
    build_head,
    head_out_dim,
    simsiam_predictor,
    simsiam_projector,
)
from cryonoo.ssl.losses import (
    barlow_twins_loss,
    collapse_std,
    combine_vicreg_terms,
    invariance_loss,
    simsiam_loss,
    vicreg_branch_terms,
)

__all__ = [
    "MIN_SSL_BATCH",
    "SSL",
    "BarlowTwinsObjective",
    "InvarianceObjective",
    "LatentRegression",
    "SimSiamObjective",
    "VICRegObjective",
    "warn_small_batch",
]

logger = logging.getLogger(__name__)

SSL: Registry = Registry("ssl objective")

#: the smallest batch an SSL objective scores: batch statistics (variance, covariance,
#: BatchNorm) need at least two samples
MIN_SSL_BATCH = 2


def warn_small_batch(who: str, n: int) -> None:
    """Log that ``who`` skipped a batch of ``n`` < :data:`MIN_SSL_BATCH` samples (callers log
    it once)."""
    logger.warning(
        "%s skipped on a batch of %d sample(s): batch statistics need at least %d "
        "(use drop_last=True); further skips are not logged",
        who,
        n,
        MIN_SSL_BATCH,
    )


class _Objective(nn.Module):
    """Common machinery: shape checks, float32 region, small-batch skip, shared anchor."""

    _warned_small_batch = False
    term_names: Sequence[str] = ()

    def _embed_groups(self, z: Tensor) -> list[Any]:
        """``(G, B, in_dim)`` latent branches → per branch, what :meth:`_pair` consumes (the
        head outputs), each branch as if it went through the heads alone."""
        raise NotImplementedError

    def _pair(self, e_a: Any, e_b: Any) -> dict[str, Tensor]:
        """Two embeddings → ``{"loss", <terms>, "std"}``."""
        raise NotImplementedError

    def _skipped(self, n: int, device: torch.device) -> dict[str, Tensor]:
        if not _Objective._warned_small_batch:
            warn_small_batch(type(self).__name__, n)
            _Objective._warned_small_batch = True
        zero = torch.zeros((), device=device)
        out = {"loss": zero, **dict.fromkeys(self.term_names, zero)}
        return {**out, "std": zero, "skipped": torch.ones((), device=device)}

    def forward(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """``(B, in_dim)``, ``(B, in_dim)`` → ``{"loss", <terms>, "std", "skipped"}``."""
        if z_a.ndim != 2 or z_a.shape != z_b.shape:
            raise ValueError(
                f"expected two (B, d) latents of equal shape, got {tuple(z_a.shape)} and "
                f"{tuple(z_b.shape)}"
            )
        return self.forward_views(z_a, z_b.unsqueeze(0))[0]

    def forward_views(self, z_a: Tensor, z_views: Tensor) -> list[dict[str, Tensor]]:
        """``(B, in_dim)`` anchor and ``(J, B, in_dim)`` views → one result dict per view."""
        if z_a.ndim != 2 or z_views.ndim != 3 or z_views.shape[1:] != z_a.shape:
            raise ValueError(
                f"expected a (B, d) anchor and (J, B, d) views, got {tuple(z_a.shape)} and "
                f"{tuple(z_views.shape)}"
            )
        device = z_a.device
        if z_a.shape[0] < MIN_SSL_BATCH:
            return [self._skipped(z_a.shape[0], device) for _ in range(z_views.shape[0])]
        outs = []
        e_a, *e_views = self._embed_groups(torch.cat([z_a.float()[None], z_views.float()]))
        for e_b in e_views:  # J is small (1–8)
            out = self._pair(e_a, e_b)
            out["skipped"] = torch.zeros((), device=device)
            outs.append(out)
        return outs


@SSL.register("vicreg")
class VICRegObjective(_Objective):
    """VICReg: expander + invariance/variance/covariance terms (CryoNOO default, 1/1/1).

    Parameters
    ----------
    in_dim:
        Latent width.
    head:
        Expander: width spec (default ``"1024-1024-1024"``, the paper's), ``"none"`` or a module.
    inv, var, cov:
        Weights of the terms (``λ_inv = λ_var = λ_cov = 1`` in CryoNOO).
    gamma, eps:
        Target std and variance epsilon of the variance hinge.
    cov_scale:
        ``"fixed"`` (the paper's): the covariance weight as given. ``"rank"``: times
        ``min(1, (n − 1)/d)`` for a batch of ``n`` and an embedding of width ``d``. A batch
        narrower than the embedding gives a covariance of rank ≤ ``n − 1``, whose off-diagonal
        penalty is then at least ``~2 s⁴ (d/(n − 1) − 1)`` for a per-dimension std ``s``: that
        floor, not the variance hinge, sets the embedding's scale (s ≈ 0.12 at n = 16,
        d = 1024). Scaled by rank, the floor stays ``O(s⁴)`` and the hinge can act.

    The terms follow the ``"official"`` normalization of :func:`cryonoo.ssl.losses.vicreg_terms`.
    """

    term_names = ("inv", "var", "cov")

    def __init__(
        self,
        in_dim: int,
        head: HeadSpec | nn.Module = "1024-1024-1024",
        inv: float = 1.0,
        var: float = 1.0,
        cov: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        cov_scale: str = "fixed",
    ) -> None:
        super().__init__()
        if cov_scale not in ("fixed", "rank"):
            raise ValueError(f"cov_scale must be 'fixed' or 'rank', got {cov_scale!r}")
        self.head = build_head(head, in_dim)
        self.weights = {"inv": float(inv), "var": float(var), "cov": float(cov)}
        self.gamma, self.eps = float(gamma), float(eps)
        self.cov_scale = cov_scale

    def _embed_groups(self, z: Tensor) -> list[tuple[Tensor, dict[str, Tensor]]]:
        # each branch's var/cov statistics are computed once
        h = apply_per_group(self.head, z)
        return [(h_g, vicreg_branch_terms(h_g, gamma=self.gamma, eps=self.eps)) for h_g in h]

    def _pair(
        self, e_a: tuple[Tensor, dict[str, Tensor]], e_b: tuple[Tensor, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        (h_a, stats_a), (h_b, stats_b) = e_a, e_b
        t = combine_vicreg_terms(invariance_loss(h_a, h_b), stats_a, stats_b)
        weights = dict(self.weights)
        if self.cov_scale == "rank":
            n, d = h_a.shape
            weights["cov"] *= min(1.0, (n - 1) / d)
        loss = sum(weights[k] * t[k] for k in self.term_names)
        return {"loss": loss, **t, "std": collapse_std(h_a)}


@SSL.register("invariance")
class InvarianceObjective(_Objective):
    """Invariance only: expander + MSE between the views (collapse-prone ablation)."""

    term_names = ("inv",)

    def __init__(self, in_dim: int, head: HeadSpec | nn.Module = "1024-1024-1024") -> None:
        super().__init__()
        self.head = build_head(head, in_dim)

    def _embed_groups(self, z: Tensor) -> list[Tensor]:
        return list(apply_per_group(self.head, z))

    def _pair(self, h_a: Tensor, h_b: Tensor) -> dict[str, Tensor]:
        inv = invariance_loss(h_a, h_b)
        return {"loss": inv, "inv": inv, "std": collapse_std(h_a)}


@SSL.register("simsiam")
class SimSiamObjective(_Objective):
    """SimSiam: projector + bottleneck predictor, symmetrized negative cosine with stop-grad.

    ``head`` is the projector spec (BatchNorm after every Linear, the last without affine);
    ``predictor`` is the bottleneck width spec (default ``out_dim // 4``) or a module.
    """

    term_names = ("neg_cos",)

    def __init__(
        self,
        in_dim: int,
        head: HeadSpec | nn.Module = "1024-1024-1024",
        predictor: HeadSpec | nn.Module | None = None,
    ) -> None:
        super().__init__()
        if isinstance(head, nn.Module) or (isinstance(head, str) and head in HEADS):
            self.projector = build_head(head, in_dim)
        else:
            self.projector = simsiam_projector(in_dim, head)
        out_dim = head_out_dim(self.projector, in_dim)
        if isinstance(predictor, nn.Module):
            self.predictor = predictor
        else:
            self.predictor = simsiam_predictor(out_dim, predictor)

    def _embed_groups(self, z: Tensor) -> list[tuple[Tensor, Tensor]]:
        h = apply_per_group(self.projector, z)
        return list(zip(h, apply_per_group(self.predictor, h), strict=True))

    def _pair(self, e_a: tuple[Tensor, Tensor], e_b: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        (h_a, p_a), (h_b, p_b) = e_a, e_b
        loss = simsiam_loss(p_a, p_b, h_a, h_b)
        return {"loss": loss, "neg_cos": loss, "std": collapse_std(h_a)}


@SSL.register("barlow")
class BarlowTwinsObjective(_Objective):
    """Barlow Twins: expander + cross-correlation-to-identity loss (λ_offdiag = 0.0051)."""

    term_names = ("barlow",)

    def __init__(
        self, in_dim: int, head: HeadSpec | nn.Module = "1024-1024-1024", lambd: float = 0.0051
    ) -> None:
        super().__init__()
        self.head = build_head(head, in_dim)
        self.lambd = float(lambd)

    def _embed_groups(self, z: Tensor) -> list[Tensor]:
        return list(apply_per_group(self.head, z))

    def _pair(self, h_a: Tensor, h_b: Tensor) -> dict[str, Tensor]:
        loss = barlow_twins_loss(h_a, h_b, lambd=self.lambd)
        return {"loss": loss, "barlow": loss, "std": collapse_std(h_a)}


@SSL.register("regress")
class LatentRegression(_Objective):
    """Regress the views' latents onto fixed targets: mean squared error, no statistics.

    The partner of the ``dream`` augmenter (whose targets are the latents that rendered the
    views, fixed by the wrapper): ``z_a`` is the target, ``z_b`` the encoder's latent of the
    view. ``head`` (default ``"none"``) maps both before the error; with the identity the loss
    is in latent units.
    """

    term_names = ("mse",)

    def __init__(self, in_dim: int, head: HeadSpec | nn.Module = "none") -> None:
        super().__init__()
        self.head = build_head(head, in_dim)

    def _embed_groups(self, z: Tensor) -> list[Tensor]:
        return list(apply_per_group(self.head, z))

    def _pair(self, h_a: Tensor, h_b: Tensor) -> dict[str, Tensor]:
        mse = invariance_loss(h_a, h_b)
        return {"loss": mse, "mse": mse, "std": collapse_std(h_b)}
