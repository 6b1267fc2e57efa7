"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node=G -m cryonoo.cli train …`` starts G processes; each joins the process
group (NCCL on GPUs, gloo on CPUs), trains a replica wrapped in ``DistributedDataParallel`` on its
share of every batch and averages gradients; rank 0 alone writes outputs. Several machines:
``torchrun --nnodes=N --node_rank=K --master_addr=HOST --master_port=PORT --nproc_per_node=G``
on each (see ``docs/distributed.md``).

Every rank draws the same shuffled order from the same seeded generator and takes the slice
``batch[rank::world]`` of each global batch, so the global batch size is the configured one and
one epoch visits every particle exactly once across ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistInfo",
    "ShardedBatchSampler",
    "all_reduce_sums",
    "barrier",
    "init_distributed",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Returns the job description and this process's device (``cuda:LOCAL_RANK`` on GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device


def shutdown_distributed() -> None:
    """Leave the process group, if any, once every rank has arrived (call before exiting).

    A process that exits while its gloo/NCCL group is still alive can abort in the group's
    destructor while a peer is still working; waiting for all ranks and destroying the group
    first makes the end of a ``torchrun`` job clean.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op without a process group)."""
    if info.enabled:
        dist.barrier()


def all_reduce_sums(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Sum the same-keyed floats over ranks (keys must agree across ranks)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


class ShardedBatchSampler(Sampler[list[int]]):
    """``batch[rank::world]`` of every batch of an inner batch sampler.

    Batches smaller than the number of ranks are skipped on every rank alike (each rank must run
    the same number of steps).
    """

    def __init__(self, inner: Sampler[list[int]], info: DistInfo) -> None:
        self.inner, self.info = inner, info

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.inner:
            if len(batch) >= self.info.world_size:
                yield batch[self.info.rank :: self.info.world_size]

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]
