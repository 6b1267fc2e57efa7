"""Evaluation commands: evaluate, demo, bench generalization, bench inference, bench encode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cryonoo.cli import PRECISION_OPTION, SETTINGS_OPTION, _fail, _progress, app, console

bench_app = typer.Typer(help="Benchmarks: generalization, inference, encode.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _print_metrics_table(title: str, per_recipe: dict, ceiling: dict | None = None) -> None:
    """Paper-style tables (Table 1 FSC, Table 3 shift, label recovery) for one seed, with the
    oracle's label ceiling (``cryonoo.experiments.ceiling``) as the last row when given."""
    fsc = Table(title=f"{title} — per-image FSC_AUC, mean (std) / median")
    for col in ("recipe", "train", "test"):
        fsc.add_column(col, justify="right" if col != "recipe" else "left")
    shift = Table(title=f"{title} — train↔test latent shift (null: train↔train)")
    shift_keys = ("kld", "tv", "jsd", "hellinger", "wd")
    for col in ("recipe", *shift_keys, "labels seen/unseen"):
        shift.add_column(col, justify="right" if col != "recipe" else "left")

    def auc(m: dict, split: str) -> str:
        s = m.get("per_image_fsc", {}).get(split)
        return f"{s['mean']:.3f} ({s['std']:.3f}) / {s['median']:.3f}" if s else "–"

    for recipe, m in per_recipe.items():
        fsc.add_row(recipe, auc(m, "train"), auc(m, "test"))
        sh, null = m.get("latent_shift", {}), m.get("latent_shift_null", {})
        cells = [
            f"{sh[k]:.3f} ({null.get(k, float('nan')):.3f})" if sh.get(k) is not None else "–"
            for k in shift_keys
        ]
        lab = m.get("label_recovery")
        cells.append(f"{lab['seen']:.2f} / {lab['unseen']:.2f}" if lab else "–")
        shift.add_row(recipe, *cells)
    if ceiling is not None:
        blank = ["" for _ in shift_keys]
        label = f"{ceiling['train']:.2f} / {ceiling['label_r2']:.2f}"
        shift.add_row("ceiling (supervised, fresh images)", *blank, label)
    console.print(fsc)
    console.print(shift)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a trained model.")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory (`cryonoo simulate` layout).")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Report directory.")],
    split: Annotated[str, typer.Option(help="Held-out split to compare with 'train'.")] = "test",
    epoch: Annotated[int | None, typer.Option(help="Checkpoint epoch (default: newest).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of image picks, KDE folds, k-means.")] = 0,
    bandwidth: Annotated[
        float | None, typer.Option(help="KDE bandwidth (default: cross-validated).")
    ] = None,
    kmeans: Annotated[str, typer.Option(help="Comma-separated k for k-means maps.")] = "5,20",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Measure generalization: per-image FSC_AUC, train↔test latent shift, label recovery.

    Writes REPORT_DIR/metrics.json, latent PCA (and UMAP) and FSC figures, training curves and
    k-means centroid maps of the held-out latents (kmeansK/vol_*.mrc).
    """
    from cryonoo.experiments.report import evaluate_run

    try:
        ks = tuple(int(k) for k in kmeans.split(",") if k.strip())
        metrics = evaluate_run(
            run_dir,
            dataset,
            outdir,
            epoch=epoch,
            split=split,
            seed=seed,
            device=device,
            kmeans_k=ks,
            bandwidth=bandwidth,
            log=lambda msg: console.print(f"[dim]{msg}[/]"),
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    _print_metrics_table(str(run_dir), {metrics["recipe"]: metrics})
    for name, path in metrics["figures"].items():
        console.print(f"{name}: {path}")
    console.print(f"metrics: {outdir / 'metrics.json'}")


def _benchmark_config(**kw):
    from cryonoo.experiments.benchmark import BenchmarkConfig

    return BenchmarkConfig(**{k: v for k, v in kw.items() if v is not None})


@app.command()
def demo(
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Where everything goes.")] = Path(
        "cryonoo_demo"
    ),
    phantom: Annotated[str, typer.Option(help="Built-in phantom (`cryonoo list`).")] = "hinge",
    box: Annotated[int | None, typer.Option("-D", "--box", help="Image size (default 32).")] = None,
    n_images: Annotated[int, typer.Option("-n", "--n-images", help="Images.")] = 4000,
    epochs: Annotated[int | None, typer.Option(help="Epochs per recipe (default 20).")] = None,
    enc_dim: Annotated[int | None, typer.Option(help="Encoder width.")] = None,
    dec_dim: Annotated[int | None, typer.Option(help="Decoder width.")] = None,
    zdim: Annotated[int | None, typer.Option(help="Latent dimension.")] = None,
    batch_size: Annotated[
        int, typer.Option("-b", "--batch-size", help="Batch size (smaller = more steps).")
    ] = 16,
    snr: Annotated[float | None, typer.Option(help="Signal-to-noise ratio (default 0.1).")] = None,
    n_conformations: Annotated[
        int | None, typer.Option(help="Conformations of the phantom (default 100).")
    ] = None,
    recipes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated recipes (default: cryodrgn, cryonoo — the paper's recipe — "
            "and the recommended one)."
        ),
    ] = None,
    ceiling: Annotated[
        bool, typer.Option(help="Also train the supervised oracle (the label ceiling).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of data and training.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    precision: Annotated[
        str | None, typer.Option("--precision", help="Network precision (default: demo).")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "-j",
            "--jobs",
            help="Runs trained side by side in worker processes (default: one per CPU core, "
            "one thread each; 1 on a GPU).",
        ),
    ] = None,
    sets: Annotated[list[str] | None, SETTINGS_OPTION] = None,
) -> None:
    """The main job: does self-distillation generalize better than the plain VAE?

    Simulates the built-in `hinge` dataset (a two-domain hinge closing, SNR 0.1), trains the
    plain VAE (`cryodrgn`), the paper's recipe (`cryonoo`) and the recommended recipe
    (`cryonoo list` names it) with the same seed, architecture and epochs on its train split,
    trains a supervised encoder of the same size on fresh images with the true labels (the
    ceiling of what one image carries), evaluates every recipe on seen (train) and unseen
    (test) images and prints the tables. On a CPU the runs train side by side, one worker
    process per core (`--jobs`); each run is the one `cryonoo bench generalization` trains.
    Writes OUTDIR/summary.json ({recipe: metrics, "recommended": name, "ceiling": {...}}) and
    figures. Precision: bf16 autocast on CPUs with native bfloat16 and on CUDA, else fp32.
    """
    import json

    from cryonoo.io.atomic import atomic_write
    from cryonoo.train.recipes import RECOMMENDED

    names = (
        [r.strip() for r in recipes.split(",") if r.strip()]
        if recipes
        else ["cryodrgn", "cryonoo", RECOMMENDED]
    )
    config = _benchmark_config(
        phantom=phantom,
        box=box,
        n_images=n_images,
        epochs=epochs,
        enc_dim=enc_dim,
        dec_dim=dec_dim,
        zdim=zdim,
        batch_size=batch_size,
        snr=snr,
        n_conformations=n_conformations,
        precision=precision or _demo_precision(device),
        ceiling=ceiling,
        settings=tuple(sets or ()),
    )
    results = _run_with_progress(outdir, names, [seed], config, device, jobs)
    per_seed = dict(results[str(seed)])
    oracle = per_seed.pop("ceiling", None)
    summary = {**per_seed, "recommended": RECOMMENDED}
    if oracle is not None:
        summary["ceiling"] = oracle
    with atomic_write(outdir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    _print_metrics_table("demo", per_seed, oracle)
    for recipe, m in per_seed.items():
        for name, path in m["figures"].items():
            console.print(f"{recipe} {name}: {path}")
    console.print(f"overview: {outdir / f'overview_seed{seed}.png'}")
    console.print(f"recommended recipe: {RECOMMENDED}")
    console.print(f"summary: {outdir / 'summary.json'}")


def _auto_jobs(device: str, n_tasks: int) -> int:
    """Worker processes for ``n_tasks`` benchmark tasks: one per usable CPU on a CPU (one
    thread each), one process on a GPU."""
    from cryonoo.experiments.jobs import usable_cpus
    from cryonoo.train.encode import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        _fail(str(exc))
    return 1 if dev.type != "cpu" else max(1, min(usable_cpus(), n_tasks))


def _demo_precision(device: str) -> str:
    """bf16 where it is fast (CUDA, CPUs with native bfloat16), else fp32."""
    from cryonoo.train.encode import resolve_device
    from cryonoo.train.precision import cpu_has_native_bf16

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        _fail(str(exc))
    return "auto" if dev.type == "cuda" else ("bf16" if cpu_has_native_bf16() else "fp32")


def _run_with_progress(
    outdir: Path, recipes: list[str], seeds: list[int], config, device: str, jobs: int | None
):
    from cryonoo.experiments.benchmark import run_benchmark

    if jobs is None:
        jobs = _auto_jobs(device, len(recipes) * len(seeds) + (len(seeds) if config.ceiling else 0))
    elif jobs < 1:
        _fail(f"--jobs must be ≥ 1, got {jobs}")

    n_train = round(config.n_images * 0.8)
    total = len(recipes) * len(seeds) * config.epochs * n_train
    with _progress() as progress:
        task = progress.add_task("benchmark", total=total)

        def on_step(event: dict) -> None:
            progress.update(task, advance=event["images"])

        def log(msg: str) -> None:
            progress.update(task, description=msg)

        try:
            return run_benchmark(
                outdir, recipes, seeds, config, device=device, log=log, on_step=on_step, jobs=jobs
            )
        except (KeyError, ValueError) as exc:
            _fail(str(exc))


@bench_app.command("generalization")
def bench_generalization(
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("cryonoo_bench"),
    recipes: Annotated[str, typer.Option(help="Comma-separated recipes.")] = (
        "cryodrgn,cryonoo,simsiam,invariance-only"
    ),
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 … seeds−1).")] = 3,
    first_seed: Annotated[
        int, typer.Option(help="First seed: seeds FIRST … FIRST+seeds−1 (one seed per job).")
    ] = 0,
    phantom: Annotated[str | None, typer.Option(help="Built-in phantom.")] = None,
    box: Annotated[int | None, typer.Option("-D", "--box")] = None,
    n_images: Annotated[int | None, typer.Option("-n", "--n-images")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    enc_dim: Annotated[int | None, typer.Option()] = None,
    dec_dim: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option("-b", "--batch-size")] = None,
    snr: Annotated[float | None, typer.Option()] = None,
    n_conformations: Annotated[int | None, typer.Option()] = None,
    ceiling: Annotated[
        bool, typer.Option(help="Also train the supervised oracle (the label ceiling).")
    ] = True,
    device: Annotated[str, typer.Option()] = "auto",
    precision: Annotated[str | None, PRECISION_OPTION] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "-j",
            "--jobs",
            help="Runs trained side by side in worker processes (CPU: threads "
            "shared between them).",
        ),
    ] = 1,
    sets: Annotated[list[str] | None, SETTINGS_OPTION] = None,
) -> None:
    """Generalization over several seeds and recipes: mean ± std across seeds.

    Saves OUTDIR/results.json (every metric of every run), summary.json and summary.md.
    """
    import json

    from cryonoo.experiments.benchmark import format_tables, summarize_ceiling, summarize_seeds
    from cryonoo.io.atomic import atomic_write

    if first_seed < 0 or seeds < 1:
        _fail(f"need --seeds ≥ 1 and --first-seed ≥ 0, got {seeds} and {first_seed}")
    names = [r.strip() for r in recipes.split(",") if r.strip()]
    config = _benchmark_config(
        phantom=phantom,
        box=box,
        n_images=n_images,
        epochs=epochs,
        enc_dim=enc_dim,
        dec_dim=dec_dim,
        batch_size=batch_size,
        snr=snr,
        n_conformations=n_conformations,
        precision=precision,
        ceiling=ceiling,
        settings=tuple(sets or ()),
    )
    seed_list = list(range(first_seed, first_seed + seeds))
    results = _run_with_progress(outdir, names, seed_list, config, device, jobs)
    summary = summarize_seeds(results)
    oracle = summarize_ceiling(results)
    with atomic_write(outdir / "summary.json", "w") as fh:
        json.dump({**summary, "ceiling": oracle} if oracle else summary, fh, indent=2)
    markdown = format_tables(summary, oracle)
    with atomic_write(outdir / "summary.md", "w") as fh:
        fh.write(markdown)
    console.print(markdown)
    console.print(f"results: {outdir / 'results.json'}, {outdir / 'summary.md'}")


@bench_app.command("inference")
def bench_inference(
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("cryonoo_bench_inference"),
    phantom: Annotated[str | None, typer.Option(help="Built-in phantom (default igg-1d).")] = None,
    box: Annotated[int | None, typer.Option("-D", "--box", help="Image size (default 32).")] = None,
    n_images: Annotated[
        int | None, typer.Option("-n", "--n-images", help="Images (default 2000).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per model (default 10).")] = None,
    enc_dim: Annotated[int | None, typer.Option(help="Encoder width (default 256).")] = None,
    dec_dim: Annotated[int | None, typer.Option(help="Decoder width (default 256).")] = None,
    zdim: Annotated[int | None, typer.Option(help="Latent dimension (default 8).")] = None,
    snr: Annotated[float | None, typer.Option(help="Signal-to-noise ratio (default 0.1).")] = None,
    n_conformations: Annotated[
        int | None, typer.Option(help="Conformations of the phantom.")
    ] = None,
    steps: Annotated[
        str, typer.Option(help="Comma-separated test-time budgets (Adam steps) of the autodecoder.")
    ] = "5,20,50",
    fit_lr: Annotated[float | None, typer.Option(help="Test-time Adam learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of data and training.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Amortized vs autodecoder inference (paper Table 2): time and quality of new latents.

    Simulates a dataset, trains the `cryodrgn` (amortized VAE) and `autodecoder` recipes with the
    same decoder, seed and epochs, then infers the test split's latents by one encoder pass and
    by test-time optimization at each --steps budget, and compares inference and total time,
    per-image FSC_AUC and train↔test latent shift. Writes OUTDIR/inference.json and
    inference.md. Defaults finish in about seven minutes on a 2-core CPU.
    """
    from cryonoo.experiments.inference_bench import (
        InferenceBenchConfig,
        format_comparison,
        run_inference_bench,
        seconds,
    )

    try:
        budgets = tuple(int(k) for k in steps.split(",") if k.strip())
    except ValueError:
        _fail(f"--steps must be comma-separated integers, e.g. '10,50,200', got {steps!r}")
    overrides = {
        "phantom": phantom,
        "box": box,
        "n_images": n_images,
        "epochs": epochs,
        "enc_dim": enc_dim,
        "dec_dim": dec_dim,
        "zdim": zdim,
        "snr": snr,
        "n_conformations": n_conformations,
        "fit_lr": fit_lr,
    }
    try:
        config = InferenceBenchConfig(
            steps=budgets, seed=seed, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ValueError as exc:
        _fail(str(exc))
    n_train = round(config.n_images * 0.8)
    with _progress() as progress:
        task = progress.add_task("benchmark", total=2 * config.epochs * n_train)

        def on_step(event: dict) -> None:
            progress.update(task, advance=event["images"])

        def log(msg: str) -> None:
            progress.update(task, description=msg)

        try:
            result = run_inference_bench(outdir, config, device=device, log=log, on_step=on_step)
        except (KeyError, ValueError) as exc:
            _fail(str(exc))
    table = Table(title=f"amortized vs autodecoder inference, {result['n_test']:,} test images")
    for col in ("method", "infer s", "total s", "FSC_AUC", "KLD (null)", "WD (null)"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in result["rows"]:  # 80 columns; inference.md has every column
        f, s, n = r["per_image_fsc"], r["latent_shift"], r["latent_shift_null"]
        table.add_row(
            r["method"],
            seconds(r["inference_s"]),
            f"{r['total_s']:.1f}",
            f"{f['mean']:.3f}",
            f"{s['kld']:.3f} ({n['kld']:.3f})",
            f"{s['wd']:.3f} ({n['wd']:.3f})",
        )
    console.print(table)
    console.print(format_comparison(result))
    console.print(f"results: {outdir / 'inference.json'}, {outdir / 'inference.md'}")


@bench_app.command("encode")
def bench_encode(
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("cryonoo_bench_encode"),
    n_images: Annotated[int, typer.Option("-n", "--n-images", help="Images in the stack.")] = (
        1_000_000
    ),
    box: Annotated[int, typer.Option("-D", "--box", help="Image size (px, even).")] = 128,
    enc_dim: Annotated[int, typer.Option(help="Encoder width.")] = 1024,
    enc_layers: Annotated[int, typer.Option(help="Encoder hidden layers.")] = 3,
    zdim: Annotated[int, typer.Option(help="Latent dimension.")] = 8,
    dtype: Annotated[str, typer.Option(help="The stack's mode on disk: float16 or float32.")] = (
        "float16"
    ),
    source: Annotated[
        str, typer.Option(help="mrcs (one stack) or star (a .star over --per-stack stacks).")
    ] = "mrcs",
    per_stack: Annotated[int, typer.Option(help="Images per stack with --source star.")] = 10_000,
    precision: Annotated[str, PRECISION_OPTION] = "fp32",
    batch_size: Annotated[int, typer.Option("-b", "--batch-size")] = 1024,
    ctf: Annotated[bool, typer.Option(help="Encode with a (random) ctf.pkl, as --ctf.")] = True,
    block: Annotated[int, typer.Option(help="Distinct images tiled into the stack.")] = 1000,
    links: Annotated[
        bool, typer.Option("--links/--copies", help="--source star: hard links or copies.")
    ] = True,
    drop_cache: Annotated[
        bool, typer.Option(help="Evict the built stack from the page cache before reading it.")
    ] = True,
    breakdown: Annotated[
        bool, typer.Option(help="Also time the loader alone, and the model and its MLP in memory.")
    ] = True,
    prefetch: Annotated[
        int,
        typer.Option(help="Batches read ahead on a background thread while encoding (0: none)."),
    ] = 2,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the stack is built (default: under --outdir).")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the built stack, run and z.pkl.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the images, CTF and weights.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Encode a million particles from disk: wall time, images/s, peak memory, GFLOP/s.

    Builds a stack of --n-images random images by tiling a block of --block images with
    memory-mapped writes (one .mrcs, or per-stack .mrcs files and a .star), a random ctf.pkl and
    a randomly initialised HetVAE saved as a run directory, then times what `cryonoo encode RUN
    PARTICLES --ctf ctf.pkl` runs (load the run, open the stack lazily, encode, save z.pkl).
    Writes OUTDIR/bench_encode.json; the stack is removed afterwards unless --keep.
    """
    from cryonoo.experiments.encode_bench import RESULT_NAME, EncodeBenchConfig, run_encode_bench

    try:
        config = EncodeBenchConfig(
            n_images=n_images,
            box=box,
            enc_dim=enc_dim,
            enc_layers=enc_layers,
            zdim=zdim,
            dtype=dtype,
            source=source,
            per_stack=per_stack,
            precision=precision,
            batch_size=batch_size,
            prefetch=prefetch,
            ctf=ctf,
            block=block,
            links=links,
            drop_cache=drop_cache,
            breakdown=breakdown,
            seed=seed,
        )
        result = run_encode_bench(
            outdir,
            config,
            device=device,
            workdir=workdir,
            keep=keep,
            log=lambda msg: console.print(f"[dim]{msg}[/]"),
        )
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    console.print(_encode_bench_table(result))
    console.print(f"results: {outdir / RESULT_NAME}")


def _encode_bench_table(r: dict) -> Table:
    """The rich table of a ``bench_encode.json`` record."""
    c, e, m, k = r["config"], r["encode"], r["memory"], r["compute"]
    title = (
        f"cryonoo encode of {c['n_images']:,} × {c['box']}² {c['dtype']} images "
        f"({c['source']}, {r['device']}, {e['precision']}, {r['threads']} threads)"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    s = r["stack"]
    rows = [
        ("stack on disk", f"{s['image_bytes'] / 2**30:.2f} GiB, {s['files']} file(s)"),
        ("build (not timed below)", f"{s['build_s']:.1f} s"),
        (
            "encode wall (open / infer / save)",
            f"{e['wall_s']:.2f} s ({e['open_s']:.2f} / {e['infer_s']:.2f} / {e['save_s']:.2f})",
        ),
        ("images/s", f"{e['images_per_s']:,.0f}"),
        ("latents", f"{e['n_latents']:,} × {e['zdim']}"),
        ("peak RSS / peak anonymous", f"{m['peak_rss_mb']:,.0f} / {m['peak_anon_mb']:,.0f} MB"),
        ("encoder FLOPs per image", f"{k['encoder_flops_per_image'] / 1e6:,.2f} M"),
        ("achieved (wall)", f"{k['achieved_gflops_per_s']:,.1f} GFLOP/s"),
    ]
    b = r.get("breakdown")
    if b:
        mo, serial = b["model_only_s"], b["serial_estimate_s"]
        rows += [
            ("encoder MLP alone", f"{b['mlp_only_gflops_per_s']:,.1f} GFLOP/s"),
            ("fraction of the MLP rate", f"{b['fraction_of_mlp_rate']:.2f}"),
            ("loader alone (read + preprocess)", f"{b['loader_only_s']:.2f} s"),
            ("model alone / MLP alone (in memory)", f"{mo:.2f} / {b['mlp_only_s']:.2f} s"),
            (
                "loader + model (in turn) / max (overlapped) vs infer",
                f"{serial:.2f} / {b['overlap_bound_s']:.2f} vs {b['infer_s']:.2f} s",
            ),
            ("batches read ahead (thread)", f"{b['prefetch']}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table
