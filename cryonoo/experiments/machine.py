"""What an experiment's results record about the machine that measured them."""

from __future__ import annotations

import os

import torch


def describe_device(device: torch.device) -> str:
    """The GPU's name (``"NVIDIA H100 (CUDA)"``), or the CPU's torch threads and cores."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores"
