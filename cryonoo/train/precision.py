"""Numerical precision of the networks during training and inference (``--precision``).

Only the networks' matrix products run in reduced precision (``torch.autocast``); geometry,
positional-encoding phases, CTF, losses and SSL heads run in float32 with autocast disabled
(see :mod:`cryonoo.models.base`), and the weights and optimizer state stay float32.

========  =================================================================================
name      meaning
========  =================================================================================
``auto``  bfloat16 autocast on CUDA where supported (float16 + gradient scaling elsewhere on
          CUDA); float32 on CPU, so CPU results stay bit-for-bit those of float32 code.
``fp32``  no autocast on any device.
``bf16``  bfloat16 autocast on any device. On CPUs with native bfloat16 instructions
          (AVX512-BF16 / AMX) the decoder MLP runs several times faster than in float32.
``fp16``  float16 autocast with gradient scaling (CUDA only).
========  =================================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "Precision", "cpu_has_native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How one device runs the networks: ``autocast(device_type, dtype, enabled)`` + scaler."""

    name: str  # the resolved name: "fp32", "bf16" or "fp16"
    device_type: str
    dtype: torch.dtype
    enabled: bool
    grad_scaling: bool  # float16 only: scale the loss so small gradients do not underflow

    def autocast(self) -> torch.autocast:
        """The autocast context of this precision (a no-op for float32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active for float16 only."""
        return torch.amp.GradScaler(self.device_type, enabled=self.grad_scaling)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (oneDNN's check; False if unknown)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """The :class:`Precision` that ``name`` (one of :data:`PRECISIONS`) means on ``device``.

    Raises ``ValueError`` for an unknown name and for ``fp16`` off CUDA. ``bf16`` on a CPU
    without native bfloat16 instructions works but is slow; a warning says so.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if name == "auto":
        if not cuda:
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp32":
        return Precision("fp32", dev.type, torch.float32, enabled=False, grad_scaling=False)
    if name == "fp16":
        if not cuda:
            raise ValueError(
                f"precision 'fp16' needs a CUDA device (got {dev.type!r}); use 'bf16' or 'fp32'"
            )
        return Precision("fp16", dev.type, torch.float16, enabled=True, grad_scaling=True)
    if dev.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("this CPU has no native bfloat16 instructions: 'bf16' will be slow")
    return Precision("bf16", dev.type, torch.bfloat16, enabled=True, grad_scaling=False)
