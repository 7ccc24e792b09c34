"""Structure statistics of amorphous BN cells: coordination, wrong bonds, bond lengths, density, RDF.

The definitions are those of ``shared/abn/structures.jsonl`` (the statistics of the project's
reference cells), so numbers from :func:`structure_statistics` compare one-to-one with them:

- a *bond* is a pair of atoms (any periodic image, each image its own bond) closer than
  ``bond_cutoff`` = 1.85 Å. The reference cells have no pair between 1.62 and 2.00 Å (the
  Tersoff cut-off is 1.95-2.00 Å), so any cut-off in that gap gives the same bonds;
- coordination = number of bonds of an atom; homonuclear fraction = B-B and N-N bonds / all bonds;
- density from ASE's atomic masses (B 10.81, N 14.007 u) and the cell volume;
- the RDF is a histogram of all pair distances in 0.02 Å bins from 0 to ``rdf_rmax`` = 3 Å, normalised
  by the shell volume 4πr²Δr; its first peak is the centre of its highest bin below the bond cut-off
  (the first coordination shell; in a crystal the second shell's bin can be higher).

Neighbours come from vesin directly (this layer does not import :mod:`hforge.graph`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from hforge.structures.validate import check_arrays

__all__ = ["BOND_CUTOFF", "StructureStatistics", "structure_statistics"]

BOND_CUTOFF = 1.85
"""Bond length cut-off (Å) of the statistics."""

RDF_BIN = 0.02
RDF_RMAX = 3.0
_AMU_G = 1.66053906660e-24  # g per atomic mass unit (CODATA 2018)


@dataclass(frozen=True)
class StructureStatistics:
    """Statistics of one structure (lengths in Å, density in g/cm³).

    Attributes:
        natoms: number of atoms.
        density_g_cm3: mass density.
        mean_coord: mean number of bonds per atom.
        coord_frac: fraction of atoms with each coordination number (keys: coordination).
        mean_coord_by_species: mean coordination per chemical symbol.
        homonuclear_bond_frac: fraction of bonds between atoms of the same species (B-B, N-N).
        n_bonds: number of bonds (each periodic image counted once).
        mean_BN_bond: mean length of the heteronuclear (B-N) bonds; NaN if there is none.
        dmin: shortest interatomic distance, periodic images included; inf if none below ``rdf_rmax``.
        rdf_first_peak: centre of the RDF's highest bin below the bond cut-off; NaN without bonds.
    """

    natoms: int
    density_g_cm3: float
    mean_coord: float
    coord_frac: dict[int, float]
    mean_coord_by_species: dict[str, float]
    homonuclear_bond_frac: float
    n_bonds: int
    mean_BN_bond: float
    dmin: float
    rdf_first_peak: float

    def to_record(self) -> dict:
        """The statistics as a ``structures.jsonl`` record (``coord_frac`` keys as strings, ``mean_coord_B`` ...)."""
        record = {
            "natoms": self.natoms,
            "density_g_cm3": self.density_g_cm3,
            "mean_coord": self.mean_coord,
            "coord_frac": {str(k): round(v, 4) for k, v in self.coord_frac.items()},
        }
        record.update({f"mean_coord_{symbol}": value for symbol, value in self.mean_coord_by_species.items()})
        record.update(
            homonuclear_bond_frac=self.homonuclear_bond_frac,
            n_bonds=self.n_bonds,
            mean_BN_bond=self.mean_BN_bond,
            dmin=self.dmin,
            rdf_first_peak=self.rdf_first_peak,
        )
        return record


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half list ``(i, j, distance)`` of all pairs (all periodic images) closer than ``cutoff``."""
    from vesin import NeighborList

    positions, cell, pbc = check_arrays(atoms.positions, atoms.cell.array, atoms.pbc)
    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(positions, cell, pbc, "ijd")
    return i.astype(np.int64), j.astype(np.int64), d


def _number_density(atoms: Atoms) -> float:
    if not atoms.pbc.all():
        raise ValueError("the RDF and the density need a cell periodic in all three directions")
    return len(atoms) / atoms.get_volume()


def _rdf(half_distances: np.ndarray, n_atoms: int, rho: float, rmax: float, bin_width: float):
    edges = np.arange(0.0, rmax + 0.5 * bin_width, bin_width)
    counts, _ = np.histogram(half_distances, edges)
    r = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 * np.pi * r**2 * bin_width
    return r, 2.0 * counts / (n_atoms * rho * shell)


def structure_statistics(
    atoms: Atoms, *, bond_cutoff: float = BOND_CUTOFF, rdf_rmax: float = RDF_RMAX, rdf_bin: float = RDF_BIN
) -> StructureStatistics:
    """Coordination, homonuclear bonds, bond lengths, shortest distance, density and RDF peak of a cell.

    Definitions in the module docstring (those of ``shared/abn/structures.jsonl``).

    Args:
        atoms: a cell periodic in all three directions (any species; B-N names refer to the two
            species of aBN, ``mean_BN_bond`` is the mean heteronuclear bond).
        bond_cutoff: bond length cut-off, Å.
        rdf_rmax: range of the RDF (and of the search for ``dmin``), Å.
        rdf_bin: RDF bin width, Å.
    """
    i, j, d = _pairs(atoms, max(bond_cutoff, rdf_rmax))
    n = len(atoms)
    numbers = atoms.numbers
    bond = d < bond_cutoff
    bi, bj = i[bond], j[bond]
    coordination = np.bincount(bi, minlength=n) + np.bincount(bj, minlength=n)
    homonuclear = numbers[bi] == numbers[bj]
    values, counts = np.unique(coordination, return_counts=True)
    symbols = np.array(atoms.get_chemical_symbols())
    by_species = {str(s): float(coordination[symbols == s].mean()) for s in dict.fromkeys(symbols)}
    r, g = _rdf(d[d < rdf_rmax], n, _number_density(atoms), rdf_rmax, rdf_bin)
    first_shell = np.where(r < bond_cutoff, g, 0.0)
    mass_g = atoms.get_masses().sum() * _AMU_G
    return StructureStatistics(
        natoms=n,
        density_g_cm3=float(mass_g / (atoms.get_volume() * 1e-24)),
        mean_coord=float(coordination.mean()),
        coord_frac={int(v): float(c) / n for v, c in zip(values, counts)},
        mean_coord_by_species=by_species,
        homonuclear_bond_frac=float(homonuclear.mean()) if bond.any() else 0.0,
        n_bonds=int(bond.sum()),
        mean_BN_bond=float(d[bond][~homonuclear].mean()) if (~homonuclear).any() else float("nan"),
        dmin=float(d.min()) if len(d) else float("inf"),
        rdf_first_peak=float(r[np.argmax(first_shell)]) if first_shell.any() else float("nan"),
    )
