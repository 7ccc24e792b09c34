"""``hforge data siesta-inputs`` and ``hforge data run``: SIESTA inputs from a template run, and running them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hforge.cli._errors import escape, user_errors

__all__ = ["register", "run_command", "siesta_inputs_command"]


def siesta_inputs_command(
    structures: list[Path] = typer.Argument(..., help="Structure files (any format ASE reads).", exists=True),
    template: Path = typer.Option(..., "--template", help="A SIESTA run folder (or fdf) whose settings are copied."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder of the run folders."),
    basis: Path | None = typer.Option(None, "--basis", help="Folder of the .ion files, if not beside the template."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace run folders whose input differs."),
) -> None:
    """Write one SIESTA run folder per structure with exactly the template's settings (geometry replaced)."""
    from hforge.datasets.siesta_runs import write_siesta_inputs

    with user_errors():
        folders = write_siesta_inputs(structures, template, out, basis=basis, overwrite=overwrite)
    Console().print(f"{len(folders)} run folder(s) in {out}; run them with `hforge data run {out}`", markup=False)


def run_command(
    out: Path = typer.Argument(..., help="Folder written by `hforge data siesta-inputs`."),
    siesta: str | None = typer.Option(None, "--siesta", help="SIESTA command (default: $SIESTA, else `siesta`)."),
) -> None:
    """Run the unfinished SIESTA runs one by one (resumable); report unconverged and failed runs."""
    from hforge.datasets.siesta_runs import run_siesta

    with user_errors():
        statuses = run_siesta(out, executable=siesta)
    table = Table("run", "state", "SCF it.", "wall s", "detail")
    colours = {"converged": "green", "unconverged": "yellow", "failed": "red", "pending": "dim"}
    for status in statuses:
        seconds = "" if status.seconds is None else f"{status.seconds:.0f}"
        iterations = "" if status.scf_iterations is None else str(status.scf_iterations)
        state = f"[{colours[status.state]}]{status.state}[/]"
        table.add_row(escape(status.name), state, iterations, seconds, escape(status.detail))
    console = Console()
    console.print(table)
    bad = [s.name for s in statuses if s.state != "converged"]
    if bad:
        console.print(f"[red]{len(bad)} run(s) not converged:[/red] {escape(', '.join(bad))}")
        raise typer.Exit(1)


def register(data_app: typer.Typer) -> None:
    """Add ``siesta-inputs`` and ``run`` to the ``hforge data`` sub-app."""
    data_app.command("siesta-inputs")(siesta_inputs_command)
    data_app.command("run")(run_command)
