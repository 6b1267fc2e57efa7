"""Encoding a large particle stack from disk: ``cryonoo bench encode``.

The benchmark builds a stack of ``n_images`` images by repeating a block of random images
(``block`` distinct ``box × box`` Gaussian-noise images; the encoder's cost does not depend on
the content), written once and tiled into the file with memory-mapped writes, so no
``(n, box, box)`` array is ever held in memory. ``source="mrcs"`` gives one ``.mrcs`` stack;
``source="star"`` gives per-stack ``.mrcs`` files of ``per_stack`` images (hard links of one
stack, or copies) and a ``.star`` file whose ``_rlnImageName`` rows ``idx@stack_K.mrcs`` index
them in order. With ``ctf=True`` a random ``ctf.pkl`` (``(n, 9)``) goes with it.

The model is a randomly initialised :class:`~cryonoo.models.vae.HetVAE` (``resid-mlp`` encoder
of ``enc_layers`` hidden layers of width ``enc_dim``, latent ``zdim``; a tiny decoder, which
encoding never runs), saved as a minimal run directory (``config.json`` + ``weights.1.pt``).
What is timed is what ``cryonoo encode RUN PARTICLES --ctf ctf.pkl -o z.pkl`` runs, from disk:
:func:`~cryonoo.train.run.load_run`, :func:`~cryonoo.io.dataset.open_dataset` (lazy),
:func:`~cryonoo.train.inference.infer_latents` (amortized) and
:func:`~cryonoo.io.cryodrgn.save_z_pkl`;
``precision`` other than fp32 wraps the same call in ``torch.autocast``, as
``cryonoo encode --precision`` does.

Before the encode the stack's pages are dropped from the page cache
(``posix_fadvise(DONTNEED)`` after ``fsync``), so it is read from the disk rather than from the
cache that writing it filled. Peak memory is that of this process during the encode: ``VmHWM``
restarted just before it (``/proc/self/clear_refs``), which counts the touched pages of the
memory-mapped stacks, and the peak anonymous memory (``RssAnon``, polled on a thread), the
process's own allocations.

Compute: the encoder's multiply-adds, ``2 × Σ in·out`` over its linear layers (the first has
``n_enc`` inputs, the encoder-mask points: the disk of radius ``D // 2`` without DC on the
``D = box + 1`` lattice), times ``n`` over the wall time, in GFLOP/s; biases, activations and
residual additions are not counted. The same encoder on in-memory ``(batch, n_enc)`` inputs
gives the rate of the arithmetic alone, and their ratio is the fraction of it the pipeline
reaches. The optional breakdown also times the model's whole encode pass on an in-memory
batch (shift, CTF phase flip, mask, MLP) and one pass of the encode's own loader without the
model (reading + preprocessing). ``encode_dataset`` reads the next ``prefetch`` batches on a
background thread while it encodes the current one (:mod:`cryonoo.io.prefetch`), so with
``prefetch ≥ 1`` ``infer`` falls from ``loader + model`` (``prefetch=0``: in turn) towards
``max(loader, model)`` where the cores allow.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cryonoo
from cryonoo.eval.memory import AnonSampler, peak_rss_bytes, reset_peak_rss, status_bytes
from cryonoo.io.atomic import atomic_write
from cryonoo.io.cryodrgn import save_ctf_pkl, save_z_pkl
from cryonoo.io.dataset import ParticleDataset, estimate_norm_std, make_loader, open_dataset
from cryonoo.io.stack import MRCSource
from cryonoo.io.star import write_star
from cryonoo.models.vae import HetVAE
from cryonoo.train.checkpoint import save_checkpoint, write_run_config
from cryonoo.train.encode import resolve_device
from cryonoo.train.inference import infer_latents
from cryonoo.train.precision import Precision, resolve_precision
from cryonoo.train.recipes import TrainConfig
from cryonoo.train.run import TrainedRun, load_run

__all__ = [
    "RESULT_NAME",
    "BuiltStack",
    "EncodeBenchConfig",
    "build_stack",
    "drop_page_cache",
    "encoder_flops_per_image",
    "in_memory_seconds",
    "run_encode_bench",
    "seconds_per_call",
    "tile_mrcs",
    "write_bench_run",
]

RESULT_NAME = "bench_encode.json"
Log = Callable[[str], None]
_MB = 2**20
_MODES = {"float32": 2, "float16": 12}


@dataclass(frozen=True)
class EncodeBenchConfig:
    """The benchmark's scale and settings (see the module docstring).

    ``dtype`` is the stack's mode on disk; ``block`` the number of distinct images tiled;
    ``links`` makes the star's stacks hard links of one file (else copies); ``breakdown`` adds
    the loader-only and MLP-only passes.
    """

    n_images: int = 1_000_000
    box: int = 128
    enc_dim: int = 1024
    enc_layers: int = 3
    zdim: int = 8
    dtype: str = "float16"
    source: str = "mrcs"
    per_stack: int = 10_000
    precision: str = "fp32"
    batch_size: int = 1024
    prefetch: int = 2
    ctf: bool = True
    block: int = 1000
    links: bool = True
    drop_cache: bool = True
    breakdown: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in _MODES:
            raise ValueError(f"dtype must be one of {sorted(_MODES)}, got {self.dtype!r}")
        if self.source not in ("mrcs", "star"):
            raise ValueError(f"source must be 'mrcs' or 'star', got {self.source!r}")
        if self.box < 2 or self.box % 2:
            raise ValueError(f"box must be an even number ≥ 2, got {self.box}")
        counts = {k: getattr(self, k) for k in ("n_images", "enc_dim", "zdim", "per_stack")}
        counts |= {"batch_size": self.batch_size, "block": self.block}
        bad = {k: v for k, v in counts.items() if v < 1}
        bad |= {k: getattr(self, k) for k in ("enc_layers", "prefetch") if getattr(self, k) < 0}
        if bad:
            raise ValueError(f"invalid settings {bad}")

    @property
    def stack_bytes(self) -> int:
        """Bytes of image data the benchmark reads: ``n × box² × itemsize``."""
        return self.n_images * self.box**2 * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BuiltStack:
    """The files of a built stack: ``particles`` (``.mrcs`` or ``.star``), the distinct
    ``.mrcs`` files it reads (``files``; hard links count once in ``disk_bytes``), the
    ``ctf.pkl`` (or ``None``), the normalization of the block and the build time (s)."""

    particles: Path
    files: tuple[Path, ...]
    ctf: Path | None
    norm_std: float
    disk_bytes: int
    build_s: float


# ------------------------------------------------------------------ building the stack


def random_block(n: int, box: int, seed: int) -> np.ndarray:
    """``(n, box, box)`` float32 standard-normal images."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, box, box), dtype=np.float32)


def tile_mrcs(path: Path, block: np.ndarray, n: int, dtype: str) -> None:
    """Write an ``n``-image stack ``path`` (mode 2 float32 or 12 float16) whose image ``i`` is
    ``block[i % len(block)]``, ``block`` ``(k, box, box)``, through a memory map, then fsync."""
    import mrcfile

    tile = block.astype(dtype)
    shape = (n, *block.shape[1:])
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=_MODES[dtype], overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 1.0
        for start in range(0, n, len(tile)):
            stop = min(n, start + len(tile))
            mrc.data[start:stop] = tile[: stop - start]
        mrc.flush()
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    """``dst`` as a hard link of ``src`` (a copy where links are refused or ``link`` is off)."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _image_names(n: int, per_stack: int) -> np.ndarray:
    """``(n,)`` ``_rlnImageName`` values ``idx@stack_K.mrcs`` (1-based ``idx``), in order."""
    i = np.arange(n, dtype=np.int64)
    idx = np.char.mod("%06d", i % per_stack + 1)
    stack = np.char.mod("stack_%06d.mrcs", i // per_stack)
    return np.char.add(np.char.add(idx, "@"), stack)


def _build_star(root: Path, block: np.ndarray, config: EncodeBenchConfig) -> list[Path]:
    """Per-stack files ``root/stack_K.mrcs`` and ``root/particles.star``; the stack paths."""
    n, per = config.n_images, config.per_stack
    first = root / "stack_000000.mrcs"
    tile_mrcs(first, block, min(per, n), config.dtype)
    stacks = [first]
    for k in range(1, math.ceil(n / per)):
        stacks.append(root / f"stack_{k:06d}.mrcs")
        _link_or_copy(first, stacks[-1], config.links)
    write_star(root / "particles.star", {"_rlnImageName": _image_names(n, per)})
    return stacks


def random_ctf(n: int, box: int, seed: int) -> np.ndarray:
    """``(n, 9)`` float32 cryoDRGN CTF rows ``[box, Apix 1, dfU, dfV, dfAng, 300 kV, Cs 2.7,
    w 0.1, phase 0]`` with defoci 1–2.5 µm (Å), astigmatism ≤ 500 Å and random angles (°)."""
    rng = np.random.default_rng(seed + 1)
    dfu = rng.uniform(10_000, 25_000, n)
    cols = [np.full(n, box), np.ones(n), dfu, dfu - rng.uniform(0, 500, n)]
    cols += [rng.uniform(0, 360, n), np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1)]
    return np.stack([*cols, np.zeros(n)], axis=1).astype(np.float32)


def _disk_bytes(files: list[Path]) -> int:
    """Bytes on disk of ``files``, each inode once."""
    seen = {(s.st_dev, s.st_ino): s.st_size for s in (f.stat() for f in files)}
    return sum(seen.values())


def build_stack(root: Path, config: EncodeBenchConfig, log: Log) -> BuiltStack:
    """Write the stack (``root/particles.mrcs`` or per-stack files + ``particles.star``) and,
    with ``config.ctf``, ``root/ctf.pkl``; nothing of size ``n × box²`` is held in memory."""
    t0 = time.perf_counter()
    per = config.per_stack if config.source == "star" else config.n_images
    n_block = min(config.block, config.n_images, per)
    block = random_block(n_block, config.box, config.seed)
    log(f"building {config.n_images:,} images ({config.stack_bytes / 2**30:.2f} GiB) in {root}")
    if config.source == "mrcs":
        particles = root / "particles.mrcs"
        tile_mrcs(particles, block, config.n_images, config.dtype)
        files = [particles]
    else:
        files = _build_star(root, block, config)
        particles = root / "particles.star"
    ctf = None
    if config.ctf:
        ctf = root / "ctf.pkl"
        save_ctf_pkl(ctf, random_ctf(config.n_images, config.box, config.seed))
    norm_std = estimate_norm_std(MRCSource(files[0]))
    elapsed = time.perf_counter() - t0
    return BuiltStack(particles, tuple(files), ctf, norm_std, _disk_bytes(files), elapsed)


def drop_page_cache(paths: tuple[Path, ...]) -> bool:
    """Write back and evict ``paths`` from the page cache (``posix_fadvise(DONTNEED)``); whether
    the advice was given for all (False where the platform has no ``posix_fadvise``)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


# ------------------------------------------------------------------ the model


def write_bench_run(run_dir: Path, config: EncodeBenchConfig, norm_std: float) -> Path:
    """A minimal run directory for ``load_run``: a randomly initialised ``HetVAE`` on the
    ``D = box + 1`` lattice (the encoder of ``config``, a 1 × 16 decoder), epoch 1."""
    train = TrainConfig().replace(
        {
            "model.zdim": config.zdim,
            "model.enc_layers": config.enc_layers,
            "model.enc_dim": config.enc_dim,
            "model.dec_layers": 1,
            "model.dec_dim": 16,
            "ssl.objective": None,
            "optim.epochs": 1,
            "optim.precision": config.precision,
            "optim.seed": config.seed,
        },
        name="bench-encode",
    )
    torch.manual_seed(config.seed)
    D = config.box + 1
    model = HetVAE(
        D,
        zdim=train.model.zdim,
        encoder=train.model.encoder,
        enc_layers=train.model.enc_layers,
        enc_dim=train.model.enc_dim,
        dec_layers=train.model.dec_layers,
        dec_dim=train.model.dec_dim,
        seed=train.optim.seed,
    )
    data = {"D": D, "box": config.box, "apix": 1.0, "n_particles": config.n_images}
    data |= {"norm_std": norm_std, "preprocessing": asdict(train.preprocessing())}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(
        run_dir,
        {
            "train": train.to_dict(),
            "data": data,
            "model": model.config(),
            "cryonoo_version": cryonoo.__version__,
            "argv": [],
        },
    )
    save_checkpoint(run_dir / "weights.1.pt", {"epoch": 1, "vae": model.state_dict()})
    return run_dir


def encoder_flops_per_image(encoder: nn.Module) -> int:
    """``2 × Σ in·out`` over the encoder's linear layers: multiply-adds per image, as FLOPs."""
    return 2 * sum(m.in_features * m.out_features for m in encoder.modules() if _is_linear(m))


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


# ------------------------------------------------------------------ the timed passes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_from_disk(
    run_dir: Path,
    stack: BuiltStack,
    z_path: Path,
    device: torch.device,
    batch_size: int,
    prec: Precision,
    prefetch: int = 2,
) -> tuple[dict[str, Any], TrainedRun, ParticleDataset]:
    """What ``cryonoo encode RUN PARTICLES [--ctf] -o z_path -b batch_size`` runs, timed per
    stage (s): open (load the run, open the lazy dataset), infer, save; with the run and
    dataset it used."""
    t0 = time.perf_counter()
    run = load_run(run_dir, None, device)
    dataset = open_dataset(
        stack.particles,
        None,
        stack.ctf,
        lazy=True,
        preprocessing=run.train.preprocessing(),
        norm_std=run.norm_std,
        require_poses=False,
    )
    t1 = time.perf_counter()
    with prec.autocast():
        mu, logvar = infer_latents(
            run.model, dataset, device, "amortized", batch_size=batch_size, prefetch=prefetch
        )
    _sync(device)
    t2 = time.perf_counter()
    save_z_pkl(z_path, mu, logvar)
    t3 = time.perf_counter()
    out = {"open_s": t1 - t0, "infer_s": t2 - t1, "save_s": t3 - t2, "wall_s": t3 - t0}
    out |= {"n_latents": len(mu), "zdim": int(mu.shape[1]), "finite": bool(np.isfinite(mu).all())}
    return out, run, dataset


def measured_encode(
    run_dir: Path, stack: BuiltStack, z_path: Path, device: torch.device, config: EncodeBenchConfig
) -> tuple[dict[str, Any], dict[str, Any], TrainedRun, ParticleDataset]:
    """:func:`encode_from_disk` with this process's peak memory around it: (timings, memory in
    MB, run, dataset)."""
    prec = resolve_precision(config.precision, device)
    reset = reset_peak_rss()
    rss0, anon0 = status_bytes("VmRSS"), status_bytes("RssAnon")
    sampler = AnonSampler()
    try:
        timing, run, dataset = encode_from_disk(
            run_dir, stack, z_path, device, config.batch_size, prec, config.prefetch
        )
    finally:
        anon = sampler.stop()
    memory = {
        "peak_rss_mb": peak_rss_bytes() / _MB,
        "rss_before_mb": rss0 / _MB,
        "peak_anon_mb": anon / _MB,
        "anon_before_mb": anon0 / _MB,
        "peak_reset": reset,
    }
    timing["precision"] = prec.name
    return timing, memory, run, dataset


def loader_pass(dataset: ParticleDataset, batch_size: int) -> dict[str, Any]:
    """One pass of the loader ``encode_dataset`` builds (same arguments), without the model:
    reading + preprocessing time (s) and the loader's workers/prefetch settings."""
    loader = make_loader(dataset, batch_size, shuffle=False, pin_memory=False)
    t0 = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    return {
        "loader_only_s": time.perf_counter() - t0,
        "images": n,
        "num_workers": loader.num_workers,
        "prefetch_factor": loader.prefetch_factor,  # the DataLoader's own (no workers: None)
        "pin_memory": loader.pin_memory,
    }


@torch.no_grad()
def seconds_per_call(
    fn: Callable[[], object], device: torch.device, prec: Precision, min_s: float = 0.5
) -> float:
    """Seconds per call of ``fn`` under ``prec``'s autocast (one warm-up call, then calls
    until ``min_s`` s have passed or 50 calls, at least 2)."""
    with prec.autocast():
        fn()
        _sync(device)
        t0, reps = time.perf_counter(), 0
        while reps < 50 and (reps < 2 or time.perf_counter() - t0 < min_s):
            fn()
            reps += 1
        _sync(device)
    return (time.perf_counter() - t0) / reps


def in_memory_seconds(
    model: HetVAE, dataset: ParticleDataset, batch_size: int, device: torch.device, prec: Precision
) -> tuple[float, float]:
    """Seconds per batch of ``batch_size`` images held in memory: the encoder MLP alone on
    ``(batch, n_enc)`` inputs, and the model's whole encode pass (shift, CTF phase flip, mask,
    MLP: ``encode_distribution``) on the first preprocessed batch of ``dataset``."""
    x = torch.randn(batch_size, model.n_enc, device=device)
    b = dataset[np.arange(batch_size)].to(device)
    mlp = seconds_per_call(lambda: model.encoder(x), device, prec)
    full = seconds_per_call(
        lambda: model.encode_distribution(b.images, b.ctf, b.trans, b.rot), device, prec
    )
    return mlp, full


def _compute(model: HetVAE, n: int, timing: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per image and the achieved GFLOP/s over the encode's wall and infer times."""
    flops = encoder_flops_per_image(model.encoder)
    return {
        "encoder_in_dim": int(model.n_enc),
        "encoder_flops_per_image": flops,
        "total_gflop": flops * n / 1e9,
        "achieved_gflops_per_s": flops * n / 1e9 / timing["wall_s"],
        "achieved_gflops_per_s_infer": flops * n / 1e9 / timing["infer_s"],
    }


def _breakdown(
    run: TrainedRun,
    dataset: ParticleDataset,
    stack: BuiltStack,
    device: torch.device,
    config: EncodeBenchConfig,
    compute: dict[str, Any],
    infer_s: float,
) -> dict[str, Any]:
    """Loader-only, MLP-only and model-only times (s, over ``n``); the MLP's own GFLOP/s and
    the fraction of it reached end to end."""
    prec = resolve_precision(config.precision, device)
    b = min(config.batch_size, config.n_images)
    mlp_per_batch, model_per_batch = in_memory_seconds(run.model, dataset, b, device, prec)
    mlp_s, model_s = (t * config.n_images / b for t in (mlp_per_batch, model_per_batch))
    mlp_rate = compute["encoder_flops_per_image"] * b / 1e9 / mlp_per_batch
    if config.drop_cache:
        drop_page_cache(stack.files)
    loader = loader_pass(dataset, config.batch_size)
    return {
        **loader,
        "mlp_only_s": mlp_s,
        "model_only_s": model_s,
        "mlp_only_gflops_per_s": mlp_rate,
        "fraction_of_mlp_rate": compute["achieved_gflops_per_s"] / mlp_rate,
        "serial_estimate_s": loader["loader_only_s"] + model_s,
        "overlap_bound_s": max(loader["loader_only_s"], model_s),
        "prefetch": config.prefetch,
        "infer_s": infer_s,
    }


# ------------------------------------------------------------------ the benchmark


def _check_disk(root: Path, config: EncodeBenchConfig) -> None:
    """``ValueError`` when ``root``'s file system cannot hold the stack (with 5 % spare)."""
    per = min(config.per_stack, config.n_images)
    need = config.stack_bytes if config.source == "mrcs" or not config.links else 0
    need = max(need, per * config.box**2 * np.dtype(config.dtype).itemsize)
    free = shutil.disk_usage(root).free
    if need * 1.05 > free:
        raise ValueError(
            f"the stack needs {need / 2**30:.1f} GiB but {root} has {free / 2**30:.1f} GiB "
            "free; pass --workdir on a larger disk or fewer --n-images"
        )


def _result(
    config: EncodeBenchConfig,
    device: torch.device,
    stack: BuiltStack,
    dropped: bool,
    timing: dict[str, Any],
    memory: dict[str, Any],
) -> dict[str, Any]:
    """The JSON record (without compute/breakdown, added by the caller)."""
    timing = {**timing, "images_per_s": config.n_images / timing["wall_s"]}
    timing["images_per_s_infer"] = config.n_images / timing["infer_s"]
    return {
        "config": asdict(config),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cryonoo_version": cryonoo.__version__,
        "stack": {
            "particles": str(stack.particles),
            "files": len(stack.files),
            "image_bytes": config.stack_bytes,
            "disk_bytes": stack.disk_bytes,
            "build_s": stack.build_s,
            "page_cache_dropped": dropped,
        },
        "encode": timing,
        "memory": memory,
    }


def _write_result(path: Path, result: dict[str, Any]) -> None:
    from cryonoo.experiments.report import _json_ready

    with atomic_write(path, "w") as fh:
        json.dump(_json_ready(result), fh, indent=2)


def run_encode_bench(
    outdir: Path,
    config: EncodeBenchConfig,
    *,
    device: str = "auto",
    workdir: Path | None = None,
    keep: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Build the stack under ``workdir`` (default ``outdir``) in a fresh ``bench_encode_*``
    directory, encode it from disk, measure, write ``outdir/bench_encode.json`` atomically and
    return the record; the directory is removed afterwards (also on failure) unless ``keep``."""
    dev = resolve_device(device)
    resolve_precision(config.precision, dev)  # fail before building anything
    outdir.mkdir(parents=True, exist_ok=True)
    parent = outdir if workdir is None else workdir
    parent.mkdir(parents=True, exist_ok=True)
    _check_disk(parent, config)
    root = Path(tempfile.mkdtemp(prefix="bench_encode_", dir=parent))
    try:
        result = _run_in(root, config, dev, log)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result["workdir"] = str(root) if keep else None
    result["kept"] = keep
    _write_result(outdir / RESULT_NAME, result)
    return result


def _run_in(root: Path, config: EncodeBenchConfig, dev: torch.device, log: Log) -> dict[str, Any]:
    """Build, encode and measure inside ``root``."""
    t0 = time.perf_counter()
    stack = build_stack(root, config, log)
    run_dir = write_bench_run(root / "run", config, stack.norm_std)
    dropped = drop_page_cache(stack.files) if config.drop_cache else False
    log(f"encoding {config.n_images:,} images from {stack.particles.name}")
    timing, memory, run, dataset = measured_encode(run_dir, stack, root / "z.pkl", dev, config)
    result = _result(config, dev, stack, dropped, timing, memory)
    result["compute"] = _compute(run.model, config.n_images, timing)
    result["breakdown"] = None
    if config.breakdown:
        log("breakdown: loader-only and MLP-only passes")
        args = (run, dataset, stack, dev, config, result["compute"], timing["infer_s"])
        result["breakdown"] = _breakdown(*args)
    result["total_s"] = time.perf_counter() - t0
    return result
