"""The ``cryonoo`` command-line interface (Typer)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
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


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Amortized heterogeneous cryo-EM reconstruction with self-distillation."""


@app.command("list")
def list_components() -> None:
    """List every registry and the components registered in it."""
    from cryonoo.registries import all_registries

    table = Table(title="cryonoo components", show_lines=False)
    table.add_column("registry", style="bold cyan")
    table.add_column("name", style="green")
    table.add_column("description")
    for reg_name, registry in all_registries().items():
        for i, name in enumerate(registry.names()):
            table.add_row(reg_name if i == 0 else "", name, registry.describe(name))
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
