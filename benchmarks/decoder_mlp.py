"""Forward + backward of the decoder MLP alone: float32, bfloat16 autocast, ``torch.compile``.

The decoder of the ``cryodrgn`` recipe at box 32, batch 64 runs a residual MLP on 25 472 lattice
points (398 per image inside the loss mask) with Gaussian features (in 3·D/2·2 = 96 + zdim 8),
3 × 256 hidden layers. This times one forward + backward of exactly that shape in each mode
(median of ``--repeats``, modes interleaved so that background load affects all alike)::

    OMP_NUM_THREADS=1 python benchmarks/decoder_mlp.py [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


class _Residual(nn.Module):
    """cryoDRGN's residual block: ``relu(W x + b + x)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x) + x)


def build(in_dim: int, width: int, layers: int) -> nn.Module:
    blocks = [nn.Linear(in_dim, width), nn.ReLU()]
    blocks += [_Residual(width) for _ in range(layers)]
    return nn.Sequential(*blocks, nn.Linear(width, 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=25_472)
    p.add_argument("--in-dim", type=int, default=104)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(args.in_dim, args.width, args.layers)
    x = torch.randn(args.points, args.in_dim)
    modes: dict[str, tuple[nn.Module, bool]] = {"fp32": (net, False), "bf16 autocast": (net, True)}
    if args.compile:
        compiled = torch.compile(net)
        modes["compile fp32"] = (compiled, False)
        modes["compile bf16"] = (compiled, True)

    def step(f: nn.Module, amp: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = f(x)
        y.float().square().mean().backward()
        return time.perf_counter() - t0

    for f, amp in modes.values():  # warm-up (and compilation)
        for _ in range(2):
            step(f, amp)
    times: dict[str, list[float]] = {k: [] for k in modes}
    for _ in range(args.repeats):
        for k, (f, amp) in modes.items():
            times[k].append(step(f, amp))
    base = statistics.median(times["fp32"])
    print(
        f"{args.points} points × {args.in_dim} → {args.layers} × {args.width}, "
        f"{args.threads} thread(s)\n"
    )
    print("| mode | forward + backward (ms) | speed-up |\n| --- | --- | --- |")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {1000 * m:.1f} | {base / m:.2f}× |")


if __name__ == "__main__":
    main()
