"""PNG figures for evaluation reports: latent spaces, FSC curves, training curves, metric bars.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so importing
or calling this module never touches pyplot's global state or the user's chosen backend, and no
figure is left registered anywhere after saving. Every function writes one PNG (parent folders are
created) and returns its path.

Latent plots follow the train/test comparison of the paper's Figure 2: one projection is fitted
on the **training** latents only and applied to both sets; three panels (overlay with train in
grey and test colored, train only, test only) share the same axis limits. Ground-truth labels,
when given, color the points: a discrete palette (tab10/tab20 with a legend) for up to 20 integer
or string classes, otherwise a continuous colormap with a colorbar. With ``zdim = 1`` the panels
show the latent against the label (or a histogram without labels).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cryonoo.eval.clusters import as_latents, pca_fit
from cryonoo.eval.embedding import umap_available, umap_fit_transform

__all__ = [
    "plot_fsc_curves",
    "plot_latent_pca",
    "plot_latent_umap",
    "plot_metric_bars",
    "plot_training_curves",
    "umap_available",
]

DPI = 120
_TRAIN_GREY = "0.65"
_MAX_DISCRETE = 20
_TRAINING_KEYS = ("loss", "recon", "kld", "ssl/loss")


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight", format="png")
    fig.clear()
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- label colors
class _LabelColors:
    """Shared color mapping for the train and test labels (discrete or continuous)."""

    def __init__(self, label_sets: list[np.ndarray], cmap: str | None) -> None:
        allv = np.concatenate(label_sets)
        numeric = np.issubdtype(allv.dtype, np.number) or allv.dtype == bool
        self.classes = np.unique(allv)
        integral = numeric and bool(np.all(np.asarray(allv, dtype=np.float64) % 1 == 0))
        self.discrete = (not numeric) or (integral and self.classes.size <= _MAX_DISCRETE)
        if self.discrete:
            name = cmap or ("tab10" if self.classes.size <= 10 else "tab20")
        else:
            name = cmap or "viridis"
            vals = allv.astype(np.float64)
            self.norm = Normalize(vmin=float(np.nanmin(vals)), vmax=float(np.nanmax(vals)))
        self.cmap = matplotlib.colormaps[name]

    def rgba(self, labels: np.ndarray) -> np.ndarray:
        """``(N, 4)`` colors for labels ``(N,)``."""
        if self.discrete:
            idx = np.searchsorted(self.classes, labels)
            return self.cmap(idx % self.cmap.N)
        return self.cmap(self.norm(labels.astype(np.float64)))

    def decorate(self, fig: Figure, axes: Sequence[Any], label_name: str) -> None:
        """Add a legend (discrete, ≤ 20 classes) or a colorbar (continuous) for the labels."""
        if not self.discrete:
            sm = ScalarMappable(norm=self.norm, cmap=self.cmap)
            fig.colorbar(sm, ax=list(axes), label=label_name, fraction=0.03, pad=0.02)
        elif self.classes.size <= _MAX_DISCRETE:
            colors = self.rgba(self.classes)
            handles = [
                Line2D([], [], ls="", marker="o", color=c, label=str(v))
                for v, c in zip(self.classes, colors, strict=True)
            ]
            axes[-1].legend(
                handles=handles, title=label_name, loc="upper left", bbox_to_anchor=(1.02, 1.0)
            )


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray | None:
    if labels is None:
        return None
    arr = _to_numpy(labels).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} latents")
    return arr


# --------------------------------------------------------------------------- latent figures
@dataclass(frozen=True)
class _Labels:
    """Validated labels of the two sets (either may be ``None``) and their shared colors."""

    train: np.ndarray | None
    test: np.ndarray | None
    name: str
    colors: _LabelColors | None

    def color(self, which: str, default: str) -> Any:
        lab = self.train if which == "train" else self.test
        return default if lab is None or self.colors is None else self.colors.rgba(lab)


def _prepare(
    z_train: Any, z_test: Any, labels_train: Any, labels_test: Any, name: str, cmap: str | None
) -> tuple[np.ndarray, np.ndarray, _Labels]:
    zt, zs = as_latents(z_train, "z_train"), as_latents(z_test, "z_test")
    if zt.shape[1] != zs.shape[1]:
        raise ValueError(f"z_train has zdim {zt.shape[1]} but z_test has zdim {zs.shape[1]}")
    lt = _check_labels(labels_train, len(zt), "labels_train")
    ls = _check_labels(labels_test, len(zs), "labels_test")
    sets = [s for s in (lt, ls) if s is not None]
    return zt, zs, _Labels(lt, ls, name, _LabelColors(sets, cmap) if sets else None)


def _point_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 1.0, 20.0))


def _latent_figure(
    xy_train: np.ndarray,
    xy_test: np.ndarray,
    path: str | Path,
    labels: _Labels,
    axis_names: tuple[str, str],
    title: str,
) -> Path:
    """Three panels (overlay, train, test) of 2-D coordinates ``(N, 2)`` / ``(M, 2)``."""
    fig = _new_figure((15.5, 4.8))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    n_tr, n_te = len(xy_train), len(xy_test)
    s_tr, s_te = _point_size(n_tr), _point_size(n_te)
    ax = axes[0]
    ax.scatter(*xy_train.T, s=s_tr, c=_TRAIN_GREY, alpha=0.5, lw=0, label=f"train (N={n_tr})")
    ax.scatter(*xy_test.T, s=s_te, c=labels.color("test", "C1"), lw=0, label=f"test (N={n_te})")
    ax.legend(loc="best", markerscale=max(1.0, 4.0 / np.sqrt(min(s_tr, s_te))))
    ax.set_title("train (grey) + test")
    axes[1].scatter(*xy_train.T, s=s_tr, c=labels.color("train", "C0"), lw=0)
    axes[1].set_title(f"train (N={n_tr})")
    axes[2].scatter(*xy_test.T, s=s_te, c=labels.color("test", "C1"), lw=0)
    axes[2].set_title(f"test (N={n_te})")
    both = np.concatenate([xy_train, xy_test])
    lo, hi = both.min(axis=0), both.max(axis=0)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    for a in axes:
        a.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        a.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        a.set_xlabel(axis_names[0])
    axes[0].set_ylabel(axis_names[1])
    if labels.colors is not None:
        labels.colors.decorate(fig, axes, labels.name)
    fig.suptitle(title)
    return _save(fig, path)


def _latent_1d_figure(
    z_train: np.ndarray, z_test: np.ndarray, path: str | Path, labels: _Labels, title: str
) -> Path:
    """``zdim = 1``: latent vs label when both label sets are given, else histograms."""
    if labels.train is not None and labels.test is not None and labels.colors is not None:
        cl = labels.colors

        def xval(lab: np.ndarray) -> np.ndarray:
            return np.searchsorted(cl.classes, lab) if cl.discrete else lab.astype(np.float64)

        xy_tr = np.stack([xval(labels.train), z_train[:, 0]], axis=1)
        xy_te = np.stack([xval(labels.test), z_test[:, 0]], axis=1)
        return _latent_figure(xy_tr, xy_te, path, labels, (labels.name, "z"), title)
    fig = _new_figure((15.5, 4.6))
    axes = fig.subplots(1, 3, sharex=True)
    zt, zs = z_train[:, 0], z_test[:, 0]
    kw: dict[str, Any] = {"bins": np.histogram_bin_edges(np.r_[zt, zs], 50), "density": True}
    axes[0].hist(zt, color=_TRAIN_GREY, alpha=0.7, label=f"train (N={len(zt)})", **kw)
    axes[0].hist(zs, histtype="step", lw=1.5, color="C1", label=f"test (N={len(zs)})", **kw)
    axes[0].legend(loc="best")
    axes[0].set_title("train (grey) + test")
    axes[1].hist(zt, color="C0", **kw)
    axes[1].set_title(f"train (N={len(zt)})")
    axes[2].hist(zs, color="C1", **kw)
    axes[2].set_title(f"test (N={len(zs)})")
    for a in axes:
        a.set_xlabel("z")
    axes[0].set_ylabel("density")
    fig.suptitle(title)
    return _save(fig, path)


def _full_title(title: str, method_name: str, what: str) -> str:
    return " — ".join(p for p in (method_name, title or what) if p)


def plot_latent_pca(
    z_train: Any,
    z_test: Any,
    path: str | Path,
    *,
    labels_train: Any = None,
    labels_test: Any = None,
    title: str = "",
    method_name: str = "",
    label_name: str = "label",
    cmap: str | None = None,
) -> Path:
    """PCA (fitted on ``z_train`` ``(N, d)``) of train and test latents ``(M, d)``.

    Labels ``(N,)`` / ``(M,)`` color the points; ``cmap`` overrides the colormap (e.g.
    ``"twilight"`` for a cyclic motion). With ``d = 1`` there is no projection: the panels show
    z against the label when both label sets are given, else histograms of z.
    """
    zt, zs, labels = _prepare(z_train, z_test, labels_train, labels_test, label_name, cmap)
    if zt.shape[1] == 1:
        return _latent_1d_figure(zt, zs, path, labels, _full_title(title, method_name, "z (1-D)"))
    if zt.shape[0] < 2:
        raise ValueError("PCA needs at least 2 training latents")
    pca = pca_fit(zt, 2)
    ev = pca.explained_variance_ratio * 100.0
    names = (f"PC1 ({ev[0]:.1f}% var.)", f"PC2 ({ev[1]:.1f}% var.)")
    full = _full_title(title, method_name, "PCA fitted on train")
    return _latent_figure(pca.transform(zt), pca.transform(zs), path, labels, names, full)


def plot_latent_umap(
    z_train: Any,
    z_test: Any,
    path: str | Path,
    *,
    labels_train: Any = None,
    labels_test: Any = None,
    title: str = "",
    method_name: str = "",
    label_name: str = "label",
    cmap: str | None = None,
    seed: int = 0,
) -> Path | None:
    """UMAP embedding fitted on ``z_train`` ``(N, d)``, applied to ``z_test`` ``(M, d)``.

    Same layout as :func:`plot_latent_pca`. Returns ``None`` (writing nothing) when
    ``umap-learn`` is not installed or when ``d = 1`` (no embedding to compute).
    """
    zt, zs, labels = _prepare(z_train, z_test, labels_train, labels_test, label_name, cmap)
    if zt.shape[1] == 1:
        return None
    embedded = umap_fit_transform(zt, zs, seed=seed)
    if embedded is None:
        return None
    emb_train, emb_test = embedded
    full = _full_title(title, method_name, "UMAP fitted on train")
    return _latent_figure(emb_train, emb_test, path, labels, ("UMAP 1", "UMAP 2"), full)


# --------------------------------------------------------------------------- FSC curves
def plot_fsc_curves(
    curves: Mapping[str, Any], path: str | Path, *, apix: float | None = None, title: str = ""
) -> Path:
    """Mean FSC curve per method with a ±1 std band over images.

    ``curves[name]`` is ``(freq (n,), fsc (m, n))`` — frequencies in cycles/pixel and one curve
    per image — or an :class:`~cryonoo.eval.fsc.FSCCurve` with ``fsc`` ``(m, n)``. With ``apix``
    (Å/pixel) the x axis is in 1/Å. Dashed reference lines mark FSC = 0.5 and 0.143.
    """
    if not curves:
        raise ValueError("curves is empty")
    if apix is not None and not apix > 0:
        raise ValueError(f"apix must be > 0, got {apix!r}")
    fig = _new_figure((7.0, 4.6))
    ax = fig.subplots()
    for i, (name, value) in enumerate(curves.items()):
        if hasattr(value, "freq_px") and hasattr(value, "fsc"):
            freq, fsc = value.freq_px, value.fsc
        else:
            freq, fsc = value
        freq = _to_numpy(freq).astype(np.float64).reshape(-1)
        fsc = _to_numpy(fsc).astype(np.float64)
        fsc = fsc.reshape(-1, fsc.shape[-1]) if fsc.ndim else fsc.reshape(1, 1)
        if fsc.shape[-1] != freq.shape[0]:
            raise ValueError(f"{name}: fsc has {fsc.shape[-1]} points but freq has {freq.size}")
        x = freq / apix if apix else freq
        mean, std = fsc.mean(axis=0), fsc.std(axis=0)
        ax.plot(x, mean, color=f"C{i % 10}", lw=1.8, label=f"{name} (n={fsc.shape[0]})")
        if fsc.shape[0] > 1:
            ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2, lw=0)
    for level in (0.5, 0.143):
        ax.axhline(level, color="k", ls="--", lw=0.8, alpha=0.7)
        ax.text(1.005, level, f"{level:g}", transform=ax.get_yaxis_transform(), va="center")
    ax.set_xlabel("spatial frequency (1/Å)" if apix else "spatial frequency (1/px)")
    ax.set_ylabel("FSC")
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "per-image FSC (mean ± 1 std)")
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves
def _read_stats(stats: Any) -> list[dict[str, Any]]:
    if isinstance(stats, (str, Path)):
        lines = Path(stats).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if isinstance(stats, Sequence):
        return [dict(r) for r in stats]
    raise TypeError(f"stats must be a list of records or a path, got {type(stats).__name__}")


def plot_training_curves(stats: Any, path: str | Path, *, title: str = "") -> Path:
    """Loss, recon, kld and ``ssl/loss`` (where present) vs epoch.

    ``stats``: a list of ``stats.jsonl`` records, the path of such a file, or a mapping
    ``run name → either of those`` to overlay several runs. A dotted vertical line marks the
    first epoch whose record has ``ssl_active`` true.
    """
    runs = (
        {str(k): _read_stats(v) for k, v in stats.items()}
        if isinstance(stats, Mapping)
        else {"": _read_stats(stats)}
    )
    keys = [k for k in _TRAINING_KEYS if any(k in r for recs in runs.values() for r in recs)]
    if not keys:
        raise ValueError(f"no records with any of {_TRAINING_KEYS} to plot")
    fig = _new_figure((4.2 * len(keys), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(keys), sharex=True))
    for i, (name, recs) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = np.array([r.get("epoch", j + 1) for j, r in enumerate(recs)], dtype=np.float64)
        active = [j for j, r in enumerate(recs) if r.get("ssl_active")]
        marker = "." if len(recs) < 50 else None
        for ax, key in zip(axes, keys, strict=True):
            vals = np.array([np.nan if r.get(key) is None else r[key] for r in recs], dtype=float)
            if np.all(np.isnan(vals)):
                continue
            ax.plot(epochs, vals, color=color, marker=marker, label=name or None)
            if active:
                on = f"SSL on{f' ({name})' if name else ''}"
                ax.axvline(epochs[active[0]], color=color, ls=":", lw=1.2, label=on)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="best", fontsize=8)
    axes[0].set_ylabel("value (epoch mean)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- metric bars
def plot_metric_bars(
    summary: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] | None,
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Grouped bars: one group per metric in ``keys``, one bar per method of ``summary``.

    ``keys=None`` uses every metric present, in first-seen order; missing values are left out.
    """
    if not summary:
        raise ValueError("summary is empty")
    if keys is None:
        keys = list(dict.fromkeys(k for m in summary.values() for k in m))
    keys = list(keys)
    if not keys:
        raise ValueError("no metrics to plot")
    methods = list(summary)
    vals = np.array([[summary[m].get(k, np.nan) for k in keys] for m in methods], dtype=float)
    width = 0.8 / len(methods)
    x = np.arange(len(keys), dtype=np.float64)
    fig = _new_figure((max(4.5, 1.2 * len(keys) * max(1, len(methods)) * 0.6 + 2.0), 4.0))
    ax = fig.subplots()
    for i, m in enumerate(methods):
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, vals[i], width=width, color=f"C{i % 10}", label=m)
        text = [f"{v:.3g}" if np.isfinite(v) else "" for v in vals[i]]
        ax.bar_label(bars, labels=text, fontsize=7, padding=2)
    ax.set_xticks(x, keys, rotation=20 if len(keys) > 3 else 0)
    ax.set_ylabel(ylabel or "value")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "metrics by method")
    return _save(fig, path)
