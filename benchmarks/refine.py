"""What semi-amortized refinement buys: amortized vs refined (vs autodecoded) test latents.

Encodes the train split of a trained VAE run, refines the test latents for every budget ``K``
in one pass (:func:`cryonoo.experiments.refinement.evaluate_refinement`) and reports, per row, the
inference wall time, images/s, the unseen kNN label score (kNN fitted on the amortized train
latents), the test per-image FSC_AUC and, with ``--autodecoder RUN``, the speed relative to that
autodecoder run's test-time fit. Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refine.py RUN DATA -o OUT --steps 5,10,20,50
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/refine.py RUN DATA -o OUT --steps 10,20 \
        --bands full,0.25,0.15 --autodecoder AD_RUN

Writes ``OUT/refinement.json`` and ``OUT/refinement.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryonoo.experiments.refinement import DEFAULT_STEPS, evaluate_refinement, format_refinement
from cryonoo.io.atomic import atomic_write


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        msg = f"--steps must be integers like 5,10,20, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


def _bands(text: str) -> tuple[float | None, ...]:
    """``full,0.25`` → ``(None, 0.25)``: ``full`` is the whole loss disk."""
    out: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(None if part == "full" else float(part))
        except ValueError as err:
            msg = f"--bands must be 'full' or numbers like full,0.25, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from err
    return tuple(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a trained run with an encoder (HetVAE)")
    p.add_argument("data_dir", type=Path, help="its dataset directory (cryonoo simulate)")
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--steps", type=_steps, default=DEFAULT_STEPS, help="budgets K, e.g. 5,10,20")
    p.add_argument("--lr", type=float, default=None, help="refinement lr (default REFINE_LR)")
    p.add_argument(
        "--bands",
        type=_bands,
        default=(None,),
        help="refine on |k| ≤ b cycles/pixel, one pass per entry ('full': the whole disk)",
    )
    p.add_argument("--split", default="test", help="held-out split refined and scored")
    p.add_argument("--autodecoder", type=Path, default=None, help="an autodecoder run to time")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when available)")
    args = p.parse_args(argv)
    try:
        result = evaluate_refinement(
            args.run_dir,
            args.data_dir,
            steps=args.steps,
            lr=args.lr,
            bands=args.bands,
            split=args.split,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            autodecoder_run=args.autodecoder,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    args.outdir.mkdir(parents=True, exist_ok=True)
    table = format_refinement(result)
    with atomic_write(args.outdir / "refinement.json", "w") as fh:
        json.dump(result, fh, indent=2)
    with atomic_write(args.outdir / "refinement.md", "w") as fh:
        fh.write(table)
    print(table, end="")


if __name__ == "__main__":
    main()
