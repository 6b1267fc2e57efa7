"""The label ceiling: how much of the conformation one image carries, for an encoder of that size.

An unsupervised encoder's unseen label recovery can only be read against what a *supervised*
encoder of the same architecture reaches when it is given the answer: trained on many fresh
images of the same kind (same phantom, box, SNR, CTF and pose distributions; another seed) with
the true labels, early-stopped on a validation part of those fresh images, then scored on the
benchmark's own images — which it never saw. Its held-out R² (accuracy for discrete labels) is
the *ceiling* of one-pass inference from one image.

The oracle is the encoder half of a :class:`~cryonoo.models.vae.HetVAE` (same network, same
input: the normalized, phase-flipped, masked Hartley image, same normalization as the
benchmark's training split) whose posterior mean is the prediction: one output, the
standardized label, trained with mean squared error (continuous labels); or one output per class
with cross-entropy (discrete labels, at most :data:`~cryonoo.eval.labels.MAX_DISCRETE_LABELS`).
A linear read-out of a wider latent would be the same function class (the encoder's last layer
is linear).

With ``pose=True`` the oracle is the pose-conditioned ``pose-mlp`` encoder of the same size
(:class:`~cryonoo.models.encoders.PoseMLPEncoder`: the same residual MLP, its input also the
image's 6-D pose code), given every image's true pose: the ceiling of one-pass inference when the
encoder knows the pose, to read a pose-conditioned model against (and the gap to ``pose=False``
is how much the pose could help an encoder of that size).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.eval.labels import MAX_DISCRETE_LABELS
from cryonoo.io.dataset import ParticleDataset, make_loader, open_dataset
from cryonoo.io.dataset_dir import load_dataset_dir
from cryonoo.models.vae import HetVAE
from cryonoo.train.encode import resolve_device

__all__ = ["CeilingConfig", "label_ceiling"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class CeilingConfig:
    """How the oracle encoder is trained.

    ``fresh_factor`` × the benchmark's number of training images are simulated afresh
    (``val_fraction`` of them kept for early stopping); training stops after ``patience``
    epochs without a better validation score, or at ``max_epochs``.
    """

    fresh_factor: int = 10
    val_fraction: float = 0.1
    max_epochs: int = 40
    patience: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed_offset: int = 10_000  # the fresh images' seed = benchmark seed + this

    def __post_init__(self) -> None:
        ok = (
            self.fresh_factor >= 1
            and 0 < self.val_fraction < 1
            and self.max_epochs >= 1
            and self.patience >= 1
            and self.batch_size >= 2
            and self.lr > 0
        )
        if not ok:
            raise ValueError(f"invalid ceiling settings: {asdict(self)}")


def _score(pred: Tensor, y: Tensor, discrete: bool) -> float:
    """Accuracy (``pred`` are class logits) or R² (``pred`` is the label itself)."""
    if discrete:
        return float((pred.argmax(dim=1) == y.long()).double().mean())
    y = y.double()
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred.double()) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan


class _Oracle:
    """The supervised encoder and its label coding (standardized value or class index)."""

    def __init__(self, model: HetVAE, classes: np.ndarray | None, mean: float, std: float):
        self.model, self.classes, self.mean, self.std = model, classes, mean, std

    @property
    def discrete(self) -> bool:
        return self.classes is not None

    def target(self, labels: np.ndarray, device: torch.device) -> Tensor:
        if self.classes is not None:
            return torch.from_numpy(np.searchsorted(self.classes, labels)).to(device)
        return torch.from_numpy((labels - self.mean) / self.std).float().to(device)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out, target) if self.discrete else F.mse_loss(out[:, 0], target)

    @torch.no_grad()
    def predict(self, dataset: ParticleDataset, device: torch.device) -> Tensor:
        """Logits ``(N, classes)`` or label predictions ``(N,)`` in label units."""
        self.model.eval()
        outs = []
        for batch in make_loader(dataset, 1024, shuffle=False, pin_memory=False):
            b = batch.to(device)
            outs.append(self.model.encode(b.images, b.ctf, b.trans, b.rot).float().cpu())
        out = torch.cat(outs)
        return out if self.discrete else out[:, 0].double() * self.std + self.mean

    def score(self, dataset: ParticleDataset, labels: np.ndarray, device: torch.device) -> float:
        return _score(self.predict(dataset, device), torch.from_numpy(labels), self.discrete)


def _fresh_dataset(
    outdir: Path, bench: Any, n_images: int, seed: int, test_fraction: float, log: Log
) -> Path:
    if not (outdir / "config.json").is_file():
        log(f"ceiling: simulating {n_images:,} fresh images (seed {seed})")
        phantom = PHANTOMS.build(bench.phantom, n_conformations=bench.n_conformations)
        sim = SimulationConfig(
            box=bench.box, n_images=n_images, snr=bench.snr, seed=seed, test_fraction=test_fraction
        )
        simulate_phantom(outdir, phantom, sim)
    return outdir


def label_ceiling(
    outdir: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    bench: Any,
    seed: int,
    *,
    config: CeilingConfig = CeilingConfig(),
    device: torch.device | str | None = None,
    log: Log | None = None,
    pose: bool = False,
) -> dict[str, Any]:
    """Train the oracle encoder on fresh images and score it on ``reference``'s splits.

    Parameters
    ----------
    outdir:
        Where the fresh dataset is written (reused when already there).
    reference:
        The benchmark's dataset directory (``train`` and ``test`` splits, ``labels.npy``).
    bench:
        A :class:`~cryonoo.experiments.benchmark.BenchmarkConfig` (phantom, box, SNR, image count
        and the encoder's architecture).
    seed:
        The benchmark's seed (the fresh images use ``seed + config.seed_offset``).
    pose:
        Use the pose-conditioned ``pose-mlp`` encoder (same ``enc_layers``/``enc_dim``), given
        each image's true pose, instead of ``resid-mlp`` (the default). The fresh images are
        the same either way (``outdir`` can be shared).

    Returns
    -------
    dict
        ``label_r2`` (the ceiling: R², or accuracy for discrete labels, on the reference test
        split), ``train`` (the same on the reference train split, also unseen by the oracle),
        ``metric``, ``val_best``, ``best_epoch``, ``epochs_run``, ``n_fresh``, ``curve`` (the
        validation score per epoch), ``config``, and ``pose`` (only with ``pose=True``).
    """
    say = log or (lambda _msg: None)
    device = resolve_device(device)
    ref = load_dataset_dir(reference)
    labels = np.load(ref.root / "labels.npy")
    ref_train = open_dataset(reference, ind="train")
    ref_test = open_dataset(reference, ind="test", norm_std=ref_train.norm_std)
    n_fresh = config.fresh_factor * len(ref_train)
    fresh_dir = _fresh_dataset(
        Path(outdir), bench, n_fresh, seed + config.seed_offset, config.val_fraction, say
    )
    fit = open_dataset(fresh_dir, ind="train", norm_std=ref_train.norm_std)
    val = open_dataset(fresh_dir, ind="test", norm_std=ref_train.norm_std)
    fresh_labels = np.load(fresh_dir / "labels.npy")

    distinct = np.unique(np.concatenate([labels, fresh_labels]))
    discrete = distinct.size <= MAX_DISCRETE_LABELS
    torch.manual_seed(seed)
    model = HetVAE(
        ref_train.D,
        zdim=distinct.size if discrete else 1,
        encoder="pose-mlp" if pose else "resid-mlp",
        enc_layers=bench.enc_layers,
        enc_dim=bench.enc_dim,
        dec_layers=0,  # the decoder is never used; the smallest one the model allows
        dec_dim=8,
        seed=seed,
    ).to(device)
    y_fit = fresh_labels[fit.indices].astype(np.float64)
    oracle = _Oracle(
        model, distinct if discrete else None, float(y_fit.mean()), float(y_fit.std() or 1.0)
    )
    params = list(model.encoder.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state, curve = -math.inf, 0, None, []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        for batch in make_loader(fit, config.batch_size, generator=generator, drop_last=True):
            b = batch.to(device)
            target = oracle.target(fresh_labels[fit.indices[b.index.cpu().numpy()]], device)
            mu, _ = model.encode_distribution(b.images, b.ctf, b.trans, b.rot)
            loss = oracle.loss(mu, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = oracle.score(val, fresh_labels[val.indices], device)
        curve.append(score)
        say(f"ceiling: epoch {epoch}, validation {'accuracy' if discrete else 'R²'} {score:.3f}")
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    assert best_state is not None
    model.encoder.load_state_dict(best_state)
    result = {
        "label_r2": oracle.score(ref_test, labels[ref_test.indices], device),
        "train": oracle.score(ref_train, labels[ref_train.indices], device),
        "metric": "accuracy" if discrete else "r2",
        "val_best": best,
        "best_epoch": best_epoch,
        "epochs_run": len(curve),
        "n_fresh": len(fit),
        "curve": curve,
        "config": asdict(config),
    }
    if pose:
        result["pose"] = True
    return result
