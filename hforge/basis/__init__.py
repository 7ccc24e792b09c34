"""Atomic-orbital basis sets (SIESTA's) and the spherical-harmonic conventions.

``Shell``, ``SpeciesBasis`` and ``BasisSet`` describe the orbitals; ``read_ion`` and
``BasisSet.from_folder`` read SIESTA's ``.ion``/``.ion.nc``/``.ion.xml`` files;
:mod:`hforge.basis.conventions` holds the exact change of basis to e3nn's harmonics.
"""

from __future__ import annotations

from hforge.basis import conventions
from hforge.basis.basis_set import MAX_L, BasisSet, Shell, SpeciesBasis
from hforge.basis.readers import read_basis_folder, read_ion

__all__ = ["Shell", "SpeciesBasis", "BasisSet", "MAX_L", "read_ion", "read_basis_folder", "conventions"]
