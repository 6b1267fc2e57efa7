"""Wall time and peak memory of the latent-landscape analysis on many latents (no map decoding).

Builds ``N`` zdim-``D`` latents from a seeded Gaussian mixture, runs
:func:`cryonoo.analysis.analyze.analyze_landscape` with ``decode=False`` (PCA, UMAP when
installed, k-means for each k, traversals, figures, ``analysis.json``, ``index.html``) and prints
the wall time of each phase and the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

Example (the default is one million latents of zdim 8)::

    OMP_NUM_THREADS=1 python benchmarks/analyze_scale.py -o /tmp/analyze_scale
    OMP_NUM_THREADS=1 python benchmarks/analyze_scale.py -o /tmp/analyze_scale -n 20000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def gaussian_mixture(n: int, d: int, components: int = 6, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 latents: ``components`` anisotropic Gaussians with random means."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (components, d))
    scales = rng.uniform(0.3, 1.2, (components, d))
    which = rng.integers(components, size=n)
    z = means[which] + rng.standard_normal((n, d)) * scales[which]
    return z.astype(np.float32)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; ``ru_maxrss`` is KiB on Linux)."""
    scale = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / 1024.0**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run the analysis, print time and memory."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--outdir", type=Path, required=True, help="Output directory.")
    p.add_argument("-n", type=int, default=1_000_000, help="Number of latents.")
    p.add_argument("-d", "--zdim", type=int, default=8, help="Latent dimension.")
    p.add_argument("--ks", default="5,20", help="k-means cluster counts.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from cryonoo.analysis.analyze import analyze_landscape
    from cryonoo.analysis.inputs import parse_ks

    t0 = time.perf_counter()
    z = gaussian_mixture(args.n, args.zdim, seed=args.seed)
    t_data = time.perf_counter() - t0
    rss_data = peak_rss_mib()
    t1 = time.perf_counter()
    result = analyze_landscape(
        z, args.outdir, ks=parse_ks(args.ks), decode=False, seed=args.seed, color_by=z[:, 0]
    )
    t_analysis = time.perf_counter() - t1
    rec = result.record
    print(f"latents: {args.n:,} × {args.zdim} (float32), built in {t_data:.1f} s")
    print(f"analysis (decode=False): {t_analysis:.1f} s → {result.outdir}")
    print(f"  UMAP: {'computed' if rec['umap']['computed'] else rec['umap']['note']}")
    for k, info in rec["kmeans"].items():
        print(f"  k={k}: fitted on {info['fit_points']:,} points, counts {info['counts']}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after building the latents: {rss_data:.0f} MiB)")


if __name__ == "__main__":
    main()
