"""Label recovery from latents on seen (training) and unseen (test) images.

Conventions (``metrics.md`` §7):

* A kNN model (Euclidean distance in latent space, ``k = 15`` by default) is fitted on a seeded
  random half of the **training** latents. It is scored on the other training half (**seen**)
  and on the test latents (**unseen**); ``gap = seen − unseen`` is the encoder's generalization
  gap in label units.
* Continuous labels (e.g. the ordered frame index of a conformational trajectory): kNN regression
  (mean label of the ``k`` neighbours), scored by the coefficient of determination
  ``R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` with ``ȳ`` the mean of the scored labels; R² ≤ 1, 0 for a
  constant prediction at ``ȳ``, negative for worse. Discrete labels (at most 20 distinct values
  over both sets, unless ``discrete`` says otherwise): kNN majority vote (ties go to the smaller
  label), scored by accuracy.
* ``|Spearman(PC1, label)|``: PC1 is the top principal axis of all training latents (centered
  on their mean); both sets are projected onto it, and the absolute rank correlation with the
  label is reported for each (``nan`` when either is constant).
* Latents are cast to float64 and kept on their device (CPU for numpy); neighbour search is
  ``torch.cdist`` + ``topk`` in chunks of query points.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

__all__ = ["MAX_DISCRETE_LABELS", "knn_predict", "label_recovery"]

logger = logging.getLogger(__name__)

MAX_DISCRETE_LABELS = 20
_CHUNK_ELEMENTS = 1 << 23


def _as_latents(z: Any, name: str, device: torch.device | None = None) -> Tensor:
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(np.ascontiguousarray(z))
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(z).__name__}")
    if z.is_complex() or z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must be real with shape (n, d), n, d ≥ 1; got {tuple(z.shape)}")
    z = z.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return z


def _as_labels(y: Any, name: str, n: int, device: torch.device) -> Tensor:
    if isinstance(y, Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but its latents have {n} rows")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or np.iscomplexobj(y):
        raise ValueError(f"{name} must be real numbers, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or Inf")
    return torch.from_numpy(y.astype(np.float64)).to(device)


def _neighbours(train_z: Tensor, query_z: Tensor, k: int) -> Tensor:
    """``(m, k)`` indices into ``train_z`` of each query's ``k`` nearest training points."""
    step = max(1, _CHUNK_ELEMENTS // train_z.shape[0])
    return torch.cat(
        [
            torch.topk(torch.cdist(c, train_z), k, dim=1, largest=False).indices
            for c in query_z.split(step)
        ]
    )


def knn_predict(
    train_z: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    query_z: Tensor | np.ndarray,
    k: int = 15,
    mode: Literal["regress", "classify"] = "regress",
) -> Tensor:
    """kNN prediction of labels at ``query_z`` from ``(train_z, train_y)``.

    Parameters
    ----------
    train_z:
        ``(n, d)`` latents with known labels.
    train_y:
        ``(n,)`` real labels.
    query_z:
        ``(m, d)`` latents to label.
    k:
        Number of neighbours, ``1 ≤ k ≤ n`` (Euclidean distance).
    mode:
        ``"regress"``: mean label of the neighbours; ``"classify"``: most frequent neighbour
        label, ties broken toward the smaller label.

    Returns
    -------
    Tensor
        ``(m,)`` float64 predictions on ``train_z``'s device (class predictions are label
        values, cast to float64).
    """
    if mode not in ("regress", "classify"):
        raise ValueError(f"mode must be 'regress' or 'classify', got {mode!r}")
    tz = _as_latents(train_z, "train_z")
    qz = _as_latents(query_z, "query_z", device=tz.device)
    if qz.shape[1] != tz.shape[1]:
        raise ValueError(f"query_z has dimension {qz.shape[1]} but train_z has {tz.shape[1]}")
    ty = _as_labels(train_y, "train_y", tz.shape[0], tz.device)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= tz.shape[0]:
        raise ValueError(f"k must be an integer in [1, {tz.shape[0]}], got {k!r}")
    idx = _neighbours(tz, qz, k)
    if mode == "regress":
        return ty[idx].mean(dim=1)
    classes, inverse = torch.unique(ty, return_inverse=True)  # sorted classes
    votes = torch.zeros(qz.shape[0], classes.numel(), dtype=torch.float64, device=tz.device)
    votes.scatter_add_(
        1, inverse[idx], torch.ones(idx.shape, dtype=torch.float64, device=tz.device)
    )
    return classes[votes.argmax(dim=1)]  # argmax returns the first maximum: smallest label


def _r2(y: Tensor, pred: Tensor) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot


def _abs_spearman(x: Tensor, y: Tensor) -> float:
    xn, yn = x.cpu().numpy(), y.cpu().numpy()
    if xn.size < 2 or np.ptp(xn) == 0 or np.ptp(yn) == 0:
        return math.nan
    return float(abs(spearmanr(xn, yn).statistic))


def label_recovery(
    z_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    z_test: Tensor | np.ndarray,
    y_test: Tensor | np.ndarray,
    *,
    k: int = 15,
    seed: int = 0,
    discrete: bool | None = None,
) -> dict[str, Any]:
    """kNN label recovery on seen and unseen latents, and ``|Spearman(PC1, label)|``.

    Parameters
    ----------
    z_train, y_train:
        ``(n, d)`` training latents and their ``(n,)`` labels, ``n ≥ 2``.
    z_test, y_test:
        ``(m, d)`` test latents and their ``(m,)`` labels.
    k:
        Neighbours; reduced (with a warning) to the size of the fit half if larger.
    seed:
        Seeds the split of the training set into fit and seen halves.
    discrete:
        ``True``: classification accuracy; ``False``: regression R²; ``None`` (default):
        discrete when both sets together hold at most 20 distinct labels.

    Returns
    -------
    dict
        ``metric`` (``"r2"`` or ``"accuracy"``), ``seen``, ``unseen``, ``gap`` (seen − unseen),
        ``spearman_pc1_train``, ``spearman_pc1_test``, ``k`` (the value used), ``n_fit``,
        ``n_seen``, ``n_unseen``.
    """
    ztr = _as_latents(z_train, "z_train")
    zte = _as_latents(z_test, "z_test", device=ztr.device)
    if zte.shape[1] != ztr.shape[1]:
        raise ValueError(f"z_test has dimension {zte.shape[1]} but z_train has {ztr.shape[1]}")
    ytr = _as_labels(y_train, "y_train", ztr.shape[0], ztr.device)
    yte = _as_labels(y_test, "y_test", zte.shape[0], ztr.device)
    n = ztr.shape[0]
    if n < 2:
        raise ValueError(f"z_train needs at least 2 points, got {n}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if discrete is None:
        discrete = torch.unique(torch.cat([ytr, yte])).numel() <= MAX_DISCRETE_LABELS

    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(ztr.device)
    fit, seen = perm[: n // 2], perm[n // 2 :]
    k_used = min(k, fit.numel())
    if k_used < k:
        logger.warning("label_recovery: k = %d exceeds the fit half; using k = %d", k, k_used)
    mode: Literal["regress", "classify"] = "classify" if discrete else "regress"
    pred_seen = knn_predict(ztr[fit], ytr[fit], ztr[seen], k_used, mode)
    pred_unseen = knn_predict(ztr[fit], ytr[fit], zte, k_used, mode)
    if discrete:
        s_seen = float((pred_seen == ytr[seen]).double().mean())
        s_unseen = float((pred_unseen == yte).double().mean())
    else:
        s_seen, s_unseen = _r2(ytr[seen], pred_seen), _r2(yte, pred_unseen)

    mean = ztr.mean(dim=0)
    pc1 = torch.linalg.svd(ztr - mean, full_matrices=False).Vh[0]
    return {
        "metric": "accuracy" if discrete else "r2",
        "seen": s_seen,
        "unseen": s_unseen,
        "gap": s_seen - s_unseen,
        "spearman_pc1_train": _abs_spearman((ztr - mean) @ pc1, ytr),
        "spearman_pc1_test": _abs_spearman((zte - mean) @ pc1, yte),
        "k": k_used,
        "n_fit": int(fit.numel()),
        "n_seen": int(seen.numel()),
        "n_unseen": int(zte.shape[0]),
    }
