"""Atomic structures: the amorphous-BN generator, structure statistics and validation.

- :func:`amorphous_bn`: melt-quench MD (LAMMPS, B-N Tersoff) of a cubic periodic aBN cell.
- :func:`thermal_snapshots`: snapshots of a cell in thermal motion (Langevin MD at a temperature).
- :func:`structure_statistics`: coordination, homonuclear bonds, bond lengths, density, RDF peak.
- :func:`validate_structure`: NaN positions, overlapping atoms, empty/degenerate cells -> GeometryError.
"""

from __future__ import annotations

from hforge.structures.amorphous import (
    DENSITY_RANGE,
    PROTOCOLS,
    MeltQuenchProtocol,
    amorphous_bn,
    random_bn_cell,
    thermal_snapshots,
)
from hforge.structures.domain import TrainingDomain
from hforge.structures.geometry_statistics import BOND_CUTOFF, StructureStatistics, structure_statistics
from hforge.structures.lammps import tersoff_bn_potential
from hforge.structures.validate import MIN_DISTANCE, VACUUM, check_arrays, open_cell, validate_structure

__all__ = [
    "BOND_CUTOFF",
    "DENSITY_RANGE",
    "MIN_DISTANCE",
    "PROTOCOLS",
    "VACUUM",
    "MeltQuenchProtocol",
    "StructureStatistics",
    "TrainingDomain",
    "amorphous_bn",
    "check_arrays",
    "open_cell",
    "random_bn_cell",
    "structure_statistics",
    "tersoff_bn_potential",
    "thermal_snapshots",
    "validate_structure",
]
