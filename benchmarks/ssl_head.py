"""An SSL objective's own step: its heads and loss on one anchor and J views, alone.

Builds ``--ssl`` (default ``vicreg``) on ``--zdim`` latents with head ``--head`` (default the
paper's ``1024-1024-1024`` expander) and times, on fixed random ``(B, zdim)`` anchor and
``(J, B, zdim)`` view latents: ``forward_views`` + backward, the same without gradients, and one
Adam step over the objective's parameters (median of ``--repeats`` after 3 warm-ups; float32,
``--threads`` torch threads, the training loop's heap setting ``reuse_heap``)::

    OMP_NUM_THREADS=1 python benchmarks/ssl_head.py
    OMP_NUM_THREADS=1 python benchmarks/ssl_head.py --head 128-128-128 --views 3 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cryonoo.io.heap import reuse_heap
from cryonoo.ssl import SSL


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after 3 unrecorded ones."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ssl", default="vicreg")
    p.add_argument("--head", default="1024-1024-1024")
    p.add_argument("--zdim", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reuse_heap()  # training's heap setting: freed buffers are reused, not faulted in again
    torch.manual_seed(0)
    objective = SSL.build(args.ssl, in_dim=args.zdim, head=args.head)
    optimizer = torch.optim.Adam(objective.parameters(), 1e-4)
    anchor = torch.randn(args.batch, args.zdim, requires_grad=True)
    views = torch.randn(args.views, args.batch, args.zdim, requires_grad=True)

    def step() -> None:
        loss = sum(out["loss"] for out in objective.forward_views(anchor, views))
        optimizer.zero_grad()
        loss.backward()

    def forward() -> None:
        with torch.no_grad():
            objective.forward_views(anchor, views)

    rows = {"forward + backward": step, "forward, no gradients": forward}
    rows["Adam step"] = optimizer.step
    print(f"{args.ssl}, head {args.head}, zdim {args.zdim}, batch {args.batch},")
    print(f"{args.views} views,", end=" ")
    print(f"{torch.get_num_threads()} thread(s), float32\n\n| what | ms (median) |\n| --- | --- |")
    for name, fn in rows.items():
        print(f"| {name} | {median_ms(fn, args.repeats):.2f} |")


if __name__ == "__main__":
    main()
