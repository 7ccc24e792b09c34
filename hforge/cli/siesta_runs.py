"""``hforge data siesta-inputs``, ``hforge data run`` and ``hforge data campaign``: SIESTA inputs from a
template run, running them, and whole resumable campaigns of them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hforge.cli._errors import escape, user_errors

__all__ = ["campaign_command", "register", "run_command", "siesta_inputs_command"]


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


def _number(value: object, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def campaign_command(
    campaign: Path = typer.Argument(..., help="Campaign file (YAML): cells, snapshots, SIESTA settings (README)."),
    out: Path = typer.Option(..., "-o", "--out", help="Campaign folder (the same folder resumes the campaign)."),
    workers: int | None = typer.Option(None, "--workers", help="SIESTA runs at once (default: the file's, else free cores)."),
    siesta: str | None = typer.Option(None, "--siesta", help="SIESTA command (default: the file's, $SIESTA, else `siesta`)."),
) -> None:
    """Make a campaign's structures and SIESTA runs (resumable: run it again after a kill); one record per run."""
    from hforge.datasets.campaign import run_campaign

    with user_errors():
        report = run_campaign(campaign, out, workers=workers, siesta=siesta)
    table = Table("run", "split", "state", "SCF it.", "wall s", "Γ gap eV", "min eig S(Γ)", "detail")
    colours = {"converged": "green", "unconverged": "yellow", "failed": "red"}
    for record in report.records:
        table.add_row(
            escape(record["name"]), escape(record.get("split") or ""), f"[{colours[record['state']]}]{record['state']}[/]",
            _number(record.get("scf_iterations"), 0), _number(record.get("wall_s"), 0), _number(record.get("gap_gamma_eV"), 3),
            "" if record.get("S_min_eig_gamma") is None else f"{record['S_min_eig_gamma']:.1e}", escape(record.get("detail", "")),
        )
    console = Console()
    console.print(table)
    console.print(f"records: {report.folder / 'records.jsonl'}", markup=False)
    if report.store is not None:
        console.print(f"compact store of the converged runs: {report.store}", markup=False)
    for run, reason in report.conversion.skipped if report.conversion is not None else ():
        console.print(f"[yellow]not in the store[/yellow] {escape(run)}: {escape(reason)}", soft_wrap=True)
    bad = report.names("unconverged") + report.names("failed")
    if bad:
        console.print(f"[red]{len(bad)} run(s) not converged, kept out of any store:[/red] {escape(', '.join(bad))}")
    if bad or (report.conversion is not None and report.conversion.skipped):
        raise typer.Exit(1)


def register(data_app: typer.Typer) -> None:
    """Add ``siesta-inputs``, ``run`` and ``campaign`` to the ``hforge data`` sub-app."""
    data_app.command("siesta-inputs")(siesta_inputs_command)
    data_app.command("run")(run_command)
    data_app.command("campaign")(campaign_command)
