"""``hforge data``: convert SIESTA runs into a store, export a structure of it, inspect an H/S file, store statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from hforge.cli._errors import escape, user_errors

__all__ = ["data_app"]

data_app = typer.Typer(help="SIESTA data: convert runs into a store, inspect files, statistics.", no_args_is_help=True)
_console = Console()


@data_app.command("convert")
def convert_command(
    inputs: List[Path] = typer.Argument(..., help="Run folders, folders of runs, or .TSHS/.HSX/.nc/.fdf files."),
    out: Path = typer.Option(..., "-o", "--out", help="Store file to write (HDF5)."),
    basis: Optional[Path] = typer.Option(None, "--basis", help="Folder of .ion/.ion.nc/.ion.xml files for every run."),
    float32: bool = typer.Option(False, "--float32", help="Store H and S as float32 (half the size)."),
    half: bool = typer.Option(False, "--half", help="Store only the canonical half of the pairs."),
    compact: bool = typer.Option(
        False, "--compact", help="Compact store: H only (canonical half, fixed point 2^-20 eV), S computed from the basis "
        "on reading and checked against each run's at conversion (<= 1e-6).",
    ),
    train_max_atoms: int = typer.Option(32, help="Structures with at most this many atoms go to 'train'."),
    val_max_atoms: int = typer.Option(64, help="Larger ones up to this many go to 'val', the rest to 'test'."),
    append: bool = typer.Option(False, "--append", help="Add the runs to an existing store (its structures kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store by the runs."),
) -> None:
    """Convert SIESTA runs into a store (resumable; unfinished or unconverged runs are skipped).
    An existing store is refused unless --append or --overwrite says what becomes of it."""
    import numpy as np

    from hforge.io import HSStore, SplitRule, convert
    from hforge.ops.two_centre import overlap_blocks

    def report_skip(run: str, exc: Exception) -> None:
        _console.print(f"[yellow]skipped[/yellow] {escape(run)}: {escape(exc)}", soft_wrap=True)

    with user_errors():
        report = convert(
            inputs,
            out,
            basis=basis,
            dtype=np.float32 if float32 else np.float64,
            half=half,
            split_rule=SplitRule(train_max_atoms, val_max_atoms),
            on_skip=report_skip,
            append=append,
            overwrite=overwrite,
            overlap=overlap_blocks if compact else None,
        )
        store = HSStore(report.store)
    _console.print(
        f"{store.path}: {len(store)} structures ({len(report.converted)} converted, {len(report.reused)} reused, "
        f"{len(report.skipped)} skipped), species {', '.join(store.basis.symbols)}, "
        + ", ".join(f"{s} {len(store.split(s))}" for s in ("train", "val", "test")),
        markup=False,
    )
    if report.skipped:
        raise typer.Exit(2)


@data_app.command("export")
def export_command(
    store: Path = typer.Argument(..., help="A store written by 'hforge data convert' (any layout)."),
    name: str = typer.Argument(..., help="The structure to export (its name in the store)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file: .TSHS (sisl, TBtrans) or .nc."),
) -> None:
    """Write one structure of a store as a SIESTA TSHS (or .nc) file: H as stored, S (of a compact store computed) exact."""
    from hforge.datasets import open_store
    from hforge.errors import InputError
    from hforge.io import write_hs

    with user_errors():
        opened = open_store(store)
        if name not in opened.names:
            raise InputError(f"no structure {name!r} in the store; it holds {', '.join(opened.names[:20])}", path=store)
        path = write_hs(opened.read(name), out)
    _console.print(f"wrote {path}", markup=False)


@data_app.command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="A .TSHS, .HSX, .nc or .fdf file."),
    basis: Optional[Path] = typer.Option(None, "--basis", help="Folder of ion files (for a bare TSHS)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Atoms, species, orbitals, nsc, nnz, symmetry errors, S's smallest eigenvalue and Γ spectrum;
    a warning when the SIESTA log beside the file shows a run that failed or did not converge.  A file
    without a basis (a bare TSHS, HForge's own) and no --basis: what needs none (species unknown)."""
    from hforge.errors import MissingBasisError
    from hforge.io import read_hs
    from hforge.io.inspect import describe, describe_without_basis
    from hforge.io.runs import run_state
    from hforge.io.siesta import read_sisl_hamiltonian

    with user_errors():
        try:
            info = describe(read_hs(file, basis=basis, validate=False))
        except MissingBasisError:  # a bare TSHS (HForge's own): what needs no basis
            hamiltonian, fermi, path = read_sisl_hamiltonian(file)
            info = describe_without_basis(hamiltonian, fermi, str(path))
        state = run_state(file)
    if state is not None:
        log, kind, message = state
        info["siesta_log"] = {"path": str(log), "state": kind, "detail": message}
        if kind != "converged":
            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]warning:[/yellow] {escape(log)}: {escape(message)}: these H and S are not those of a "
                "converged calculation", highlight=False,
            )
    if as_json:
        _console.print_json(json.dumps(info))
        return
    table = Table(title=escape(file), show_header=False)
    for key, value in info.items():
        table.add_row(escape(key), f"{value:.6g}" if isinstance(value, float) else escape(value))
    _console.print(table)


@data_app.command("stats")
def stats_command(
    store: Path = typer.Argument(..., help="A store written by 'hforge data convert'."),
    out: Path = typer.Option(Path("hforge-stats"), "-o", "--out", help="Folder for the figures and stats.json."),
    structure: Optional[str] = typer.Option(None, help="Structure of the H heatmap (default: the smallest)."),
) -> None:
    """Statistics of a store: numbers, and PNG figures (onsite energies, decay with distance, H heatmap)."""
    from hforge.datasets import open_store
    from hforge.datasets.store_overview import plot_store, store_summary

    with user_errors():
        opened = open_store(store)
        summary = store_summary(opened)
        written = plot_store(opened, out, structure=structure)
    _console.print(f"[bold]{escape(store)}[/bold]: {summary['structures']} structures, species {escape(summary['species'])}")
    for split, info in summary["splits"].items():
        _console.print(f"  {split}: {info['structures']} structures, atoms {info['atoms']}, nnz {info['nnz']}", markup=False)
    table = Table(title="mean onsite energies (eV, unshifted H) ± std")
    table.add_column("orbital")
    species = summary["statistics"]["onsite_energies"]
    for symbol in species:
        table.add_column(escape(symbol))
    names = max(species.values(), key=len)
    for name in names:
        table.add_row(
            escape(name),
            *(f"{v[name]['mean_eV']:.3f} ± {v[name]['std_eV']:.3f}" if name in v else "" for v in species.values()),
        )
    _console.print(table)
    for path in written:
        _console.print(f"wrote {path}", markup=False)
