"""``hforge structure abn``: amorphous BN cells from the melt-quench generator."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from hforge.cli._choices import Protocol
from hforge.cli._errors import user_errors

__all__ = ["abn_command", "structure_app"]

structure_app = typer.Typer(help="Atomic structures: generators.", no_args_is_help=True)


@structure_app.command("abn")
def abn_command(
    n_atoms: int = typer.Argument(..., help="Number of atoms (even: equal B and N)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file; its extension picks the format (ASE)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same cell)."),
    density: float = typer.Option(2.2, "--density", help="Density, g/cm^3."),
    protocol: Protocol = typer.Option("full", "--protocol", help="full (as shared/abn) or fast (large cells)."),
    threads: int = typer.Option(1, "--threads", help="OpenMP threads of LAMMPS."),
) -> None:
    """Amorphous BN by melt-quench MD (LAMMPS, B-N Tersoff), written with its statistics printed."""
    import ase.io
    from ase.io.formats import filetype, ioformats

    from hforge.errors import ConfigError
    from hforge.files import atomic_write
    from hforge.structures import amorphous_bn, structure_statistics

    with user_errors():
        file_format = filetype(out, read=False)
        if file_format not in ioformats or not ioformats[file_format].can_write:
            raise ConfigError(f"ASE cannot write this kind of file (format {file_format!r}); use .xyz, .cif, ...", path=out)
        atoms = amorphous_bn(n_atoms, density=density, seed=seed, protocol=protocol.value, threads=threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, None) as tmp:
        ase.io.write(tmp, atoms, format=file_format)
    stats = structure_statistics(atoms)
    folds = ", ".join(f"{k}-fold {v:.0%}" for k, v in sorted(stats.coord_frac.items()))
    Console().print(
        f"{out}: {len(atoms)} atoms, {stats.density_g_cm3:.3f} g/cm3, {folds}, homonuclear bonds "
        f"{stats.homonuclear_bond_frac:.1%}, mean B-N bond {stats.mean_BN_bond:.3f} A, "
        f"shortest distance {stats.dmin:.3f} A, {atoms.info['md_seconds']:.0f} s",
        markup=False,
    )
