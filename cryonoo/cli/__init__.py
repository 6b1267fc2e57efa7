"""The ``cryonoo`` command-line interface (Typer).

Each command's docstring is its ``--help`` text. Heavy modules are imported inside the commands so
that ``cryonoo --help`` stays fast. Commands live in submodules by topic: :mod:`.data`
(simulate, parse, downsample, estimate-noise), :mod:`.training` (train, ablate, encode, volumes),
:mod:`.evaluation` (evaluate, demo, bench), :mod:`.analysis` (analyze), :mod:`.selection`
(select) and :mod:`.view` (view); importing this package registers them all.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import cryonoo

app = typer.Typer(
    name="cryonoo",
    help="Amortized heterogeneous cryo-EM reconstruction with self-distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cryonoo {cryonoo.__version__}")
        raise typer.Exit()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


PRECISION_OPTION = typer.Option(
    "--precision",
    help="Network precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 (fast on CPUs with "
    "AVX512-BF16), fp16 (CUDA).",
)
"""The ``--precision`` option of every training command (``cryonoo.train.precision``)."""

SETTINGS_OPTION = typer.Option(
    "--set",
    help="One training setting for every recipe, section.key=value (e.g. ssl.weight=0.5, "
    "optim.lr=3e-4; `cryonoo config RECIPE` lists them); repeatable.",
)
"""The ``--set`` option of the commands that train several recipes (demo, bench)."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Amortized heterogeneous cryo-EM reconstruction with self-distillation."""
    from cryonoo.registries import load_plugins

    load_plugins()


@app.command("list")
def list_components() -> None:
    """List every registry, the components registered in it, and the training recipes."""
    from cryonoo.registries import all_registries
    from cryonoo.train.config_file import describe_recipe
    from cryonoo.train.recipes import RECIPES, RECOMMENDED

    table = Table(title="cryonoo components")
    table.add_column("registry", style="bold cyan")
    table.add_column("name", style="green")
    table.add_column("description")
    for reg_name, registry in all_registries().items():
        for i, name in enumerate(registry.names()):
            table.add_row(reg_name if i == 0 else "", name, registry.describe(name))
    for i, name in enumerate(RECIPES):
        note = "recommended (cryonoo demo): " if name == RECOMMENDED else ""
        table.add_row("RECIPES" if i == 0 else "", name, note + describe_recipe(name))
    console.print(table)


# register the commands (the submodules import ``app`` from here)
from cryonoo.cli import data, training, evaluation, analysis, selection, view  # noqa: E402, I001  (help order)

__all__ = ["analysis", "app", "data", "evaluation", "selection", "training", "view"]
