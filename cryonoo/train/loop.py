"""One epoch of training: the batches, the non-finite-loss policy, the optimizer steps, Ctrl-C.

:func:`fit_epoch` runs the forward pass of every batch (autocast per the run's precision),
checks every loss term for NaN/Inf (stopping with :class:`NonFiniteLossError`, or skipping the
batch when ``config.optim.skip_nonfinite``; in a distributed job every rank skips the same step),
steps the optimizer (gradient scaling and clipping) and sums the logged terms. While a
:class:`SigintFlag` is installed, Ctrl-C stops the epoch after the step in progress and the state
at that point is written to ``interrupted.pt`` (:func:`save_interrupted`), from which
``resume=True`` continues at the very next batch.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cryonoo.io.dataset import ParticleDataset
from cryonoo.io.heap import reuse_heap
from cryonoo.io.prefetch import prefetched
from cryonoo.train.build import Training
from cryonoo.train.checkpoint import save_checkpoint
from cryonoo.train.recipes import TrainConfig
from cryonoo.train.state import interrupted_state
from cryonoo.types import Batch, StepOutput

__all__ = [
    "EpochProgress",
    "NonFiniteLossError",
    "ProgressHook",
    "SigintFlag",
    "fit_epoch",
    "save_interrupted",
]

logger = logging.getLogger(__name__)

ProgressHook = Callable[[dict[str, Any]], None]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the message names the term, epoch, batch and particles."""


@dataclass
class EpochProgress:
    """Where an epoch stands: the running sums of the logged terms and the batches done.

    Attributes
    ----------
    sums:
        ``Σ_batches term · batch size`` of every logged term (divided by ``seen`` at the end).
    seen:
        Images of the optimizer steps taken (this rank's).
    skipped:
        Batches skipped for a non-finite loss.
    batches_done:
        Batches of the epoch processed (stepped or skipped), the interruption point.
    elapsed_s:
        Seconds the epoch's batches took (set when the epoch completes).
    """

    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    skipped: int = 0
    batches_done: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def resumed(cls, state: dict[str, Any] | None) -> EpochProgress:
        """The progress a checkpoint resumes with: a mid-epoch state's sums and position (its
        skipped count restarts at 0), else a fresh epoch."""
        done = int(state.get("batches_done", 0)) if state is not None else 0
        if not done:
            return cls()
        return cls(sums=dict(state["sums"]), seen=int(state["seen"]), batches_done=done)

    def add(self, terms: dict[str, float], n_images: int) -> None:
        """Count an optimizer step on ``n_images`` images whose logged terms are ``terms``."""
        self.seen += n_images
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n_images


class SigintFlag:
    """While installed, Ctrl-C sets a flag that the loop checks after each step (so the state it
    saves is consistent); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    @classmethod
    def install(cls) -> SigintFlag | None:
        """Install the handler (``None`` off the main thread, where handlers cannot be set)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        flag = cls()
        flag._previous = signal.signal(signal.SIGINT, flag._handle)
        return flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def restore(self) -> None:
        """Put the previous SIGINT handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _nonfinite_term(out: StepOutput, config: TrainConfig, training: Training) -> str | None:
    """The name of a NaN/Inf term of ``out`` (``"loss"`` if only the total is), else ``None``.

    When batches are skipped in a distributed job, a batch bad on any rank is bad on all."""
    bad = None
    if not bool(torch.isfinite(out.loss)):
        bad = next((k for k, v in out.terms.items() if not bool(torch.isfinite(v).all())), "loss")
    if config.optim.skip_nonfinite and training.info.enabled:  # every rank must skip the same step
        flag = torch.tensor(float(bad is not None), device=training.device)
        torch.distributed.all_reduce(flag)
        bad = bad or ("loss" if float(flag) > 0 else None)
    return bad


def _skip_or_raise(
    bad: str, batch: Batch, dataset: ParticleDataset, config: TrainConfig, epoch: int, i: int
) -> None:
    """Raise :class:`NonFiniteLossError` naming term ``bad``, the epoch, batch ``i`` and its
    particles, or with ``config.optim.skip_nonfinite`` log the same as a warning."""
    ids = dataset.indices[batch.index.cpu().numpy()].tolist()
    message = f"non-finite {bad!r} at epoch {epoch + 1}, batch {i + 1}; particles {ids}"
    if not config.optim.skip_nonfinite:
        raise NonFiniteLossError(message)
    logger.warning("skipped batch: %s", message)


def _optimizer_step(training: Training, config: TrainConfig, out: StepOutput) -> None:
    """Backward pass of ``out.loss`` (scaled), optional gradient clipping, optimizer step."""
    t = training
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(out.loss).backward()
    if config.optim.grad_clip is not None:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.model.parameters(), config.optim.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()


def _logged_terms(out: StepOutput) -> dict[str, float]:
    """The step's terms as floats; ``loss`` is the optimized total (model + λ·SSL) and
    ``model_loss`` the model's own term."""
    terms = {k: float(v) for k, v in out.terms.items()}
    total = float(out.loss.detach())
    terms["model_loss"] = terms.get("loss", total)
    terms["loss"] = total
    return terms


def _fit_batch(
    training: Training,
    config: TrainConfig,
    dataset: ParticleDataset,
    batch: Batch,
    position: tuple[int, int],
    progress: EpochProgress,
    on_step: ProgressHook | None,
) -> None:
    """One batch (``position``: epoch, batch index): forward, finiteness check, step, sums."""
    epoch, i = position
    out = training.forward(batch)
    bad = _nonfinite_term(out, config, training)
    if bad is not None:
        _skip_or_raise(bad, batch, dataset, config, epoch, i)
        progress.skipped += 1
        progress.batches_done = i + 1
        return
    _optimizer_step(training, config, out)
    terms = _logged_terms(out)
    progress.add(terms, len(batch))
    progress.batches_done = i + 1  # the optimizer step is done
    if on_step is not None and training.info.is_main:
        images = len(batch) * training.info.world_size
        on_step({"epoch": epoch + 1, "images": images, "terms": terms})


def save_interrupted(
    path: Path,
    training: Training,
    epoch: int,
    progress: EpochProgress,
    epoch_shuffle: torch.Tensor,
) -> None:
    """Write the state at an interruption of epoch ``epoch`` to ``path`` (``interrupted.pt``)."""
    save_checkpoint(path, interrupted_state(training, epoch, progress, epoch_shuffle))


def _read_ahead(dataset: ParticleDataset, config: TrainConfig) -> int:
    """Batches read ahead on a thread (:mod:`cryonoo.io.prefetch`): 2 for a lazy dataset read
    in this process (reading and preprocessing overlap the step), else 0 (an in-memory batch
    is an index; loader workers already read ahead)."""
    return 2 if dataset.lazy and config.data.num_workers == 0 else 0


def fit_epoch(
    training: Training,
    config: TrainConfig,
    dataset: ParticleDataset,
    epoch: int,
    progress: EpochProgress,
    *,
    stop: SigintFlag | None = None,
    on_step: ProgressHook | None = None,
    interrupted: Path | None = None,
) -> EpochProgress:
    """Train epoch ``epoch`` (0-based) from ``progress`` (batches before
    ``progress.batches_done`` were done before an interruption) → ``progress``, completed.

    ``on_step`` receives ``{"epoch", "images", "terms"}`` after every optimizer step (rank 0).
    A ``KeyboardInterrupt`` (Ctrl-C seen by ``stop``, or raised by ``on_step``) propagates; with
    ``stop`` installed, the state at that point is first saved to ``interrupted``.
    """
    if training.distills:
        training.model.set_epoch(epoch)
    training.model.train()
    reuse_heap()  # every step frees and allocates the same buffers: keep them (cryonoo.io.heap)
    t0 = time.perf_counter()
    epoch_shuffle = training.loader_generator.get_state()  # this epoch's order is drawn from it
    done_before = progress.batches_done
    try:
        for i, cpu_batch in enumerate(prefetched(training.loader, _read_ahead(dataset, config))):
            if i < done_before:
                continue  # completed before the interruption
            if stop is not None and stop.raised:
                raise KeyboardInterrupt
            batch: Batch = cpu_batch.to(training.device, non_blocking=True)
            _fit_batch(training, config, dataset, batch, (epoch, i), progress, on_step)
    except KeyboardInterrupt:
        if stop is not None and interrupted is not None:  # one process: save where it stopped
            save_interrupted(interrupted, training, epoch, progress, epoch_shuffle)
        raise
    progress.elapsed_s = time.perf_counter() - t0
    return progress
