"""Structure validation shared across HForge: refuse geometries that cannot be physical.

Every public entry point that takes a structure (generator output, SIESTA inputs, neighbour lists,
models) runs these checks so that a user gets a :class:`~hforge.errors.GeometryError` naming the
problem instead of NaN matrices or a hang.
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms

from hforge.errors import GeometryError

__all__ = ["MIN_DISTANCE", "VACUUM", "check_arrays", "open_cell", "validate_structure"]

MIN_DISTANCE = 0.5
"""Closest approach (Å) below which two atoms (or an atom and its own periodic image) overlap."""

_AXES = "abc"

VACUUM = 10.0
"""Vacuum (Å) that :func:`open_cell` leaves beyond the atoms along a non-periodic direction without a vector."""


def check_arrays(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, *, path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the arrays of a structure and return them as float64/bool numpy arrays.

    Checks, in order: at least one atom; ``positions`` of shape ``(N, 3)`` and finite; ``cell`` of
    shape ``(3, 3)`` and finite; every periodic lattice vector non-zero, and the periodic vectors
    linearly independent (a non-periodic direction may have a zero vector). Overlapping atoms are
    checked by :func:`validate_structure`, which needs a neighbour search.

    Args:
        positions: ``(N, 3)`` Cartesian positions, Å.
        cell: ``(3, 3)`` lattice vectors as rows, Å.
        pbc: periodicity along each lattice vector, a bool or three bools.
        path: the file the structure came from, named in errors.

    Raises:
        GeometryError: naming the first problem found.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise GeometryError(f"positions must have shape (N, 3), got {positions.shape}", path=path)
    if len(positions) == 0:
        raise GeometryError("empty structure: it has no atoms", path=path)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise GeometryError(
            f"{bad.size} atom(s) with NaN or infinite positions (atom indices {_first(bad)})", path=path
        )
    if cell.shape != (3, 3):
        raise GeometryError(f"cell must have shape (3, 3), got {cell.shape}", path=path)
    if not np.isfinite(cell).all():
        raise GeometryError("the cell has NaN or infinite entries", path=path)
    lengths = np.linalg.norm(cell, axis=1)
    for axis in np.flatnonzero(pbc):
        if lengths[axis] < 1e-8:
            raise GeometryError(
                f"empty cell: periodic along {_AXES[axis]} but lattice vector {_AXES[axis]} is zero", path=path
            )
    periodic = cell[pbc]
    if len(periodic) > 1:
        # Gram determinant of the periodic vectors, relative to the product of their lengths:
        # 0 for collinear/coplanar vectors, 1 for orthogonal ones.
        gram = np.linalg.det(periodic @ periodic.T) / np.prod(lengths[pbc] ** 2)
        if gram < 1e-12:
            names = ", ".join(_AXES[a] for a in np.flatnonzero(pbc))
            raise GeometryError(f"degenerate cell: periodic lattice vectors {names} are linearly dependent", path=path)
    return positions, cell, pbc


def open_cell(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell of a structure with a vector along every direction: each zero lattice vector of a
    non-periodic direction (a cluster has three, a chain two, a slab one) becomes a vector
    orthogonal to the others, as long as the atoms' extent along it plus :data:`VACUUM` Å.  One
    rule for clusters, chains and slabs, so that every output file has a cell of non-zero volume
    (zero-length vectors give NaN reciprocal cells in sisl and SIESTA).  The cell keeps a positive
    orientation; cells with three vectors are returned as they are.

    Args:
        positions: ``(N, 3)`` Å; cell: ``(3, 3)`` rows are lattice vectors, Å; pbc: ``(3,)`` bool.
    """
    cell = np.array(cell, dtype=np.float64)
    missing = [axis for axis in range(3) if not pbc[axis] and np.linalg.norm(cell[axis]) < 1e-8]
    if not missing:
        return cell
    kept = [cell[axis] / np.linalg.norm(cell[axis]) for axis in range(3) if axis not in missing]
    basis: list[np.ndarray] = []
    for vector in kept:  # orthonormal basis of the kept vectors' span
        residual = vector - sum((vector @ b) * b for b in basis)
        if np.linalg.norm(residual) > 1e-8:
            basis.append(residual / np.linalg.norm(residual))
    for axis in missing:
        candidates = [e - sum((e @ b) * b for b in basis) for e in np.eye(3)]  # Cartesian axes, projected out
        direction = max(candidates, key=np.linalg.norm)
        direction /= np.linalg.norm(direction)
        basis.append(direction)
        projected = positions @ direction
        cell[axis] = direction * (projected.max() - projected.min() + VACUUM)
    if np.linalg.det(cell) < 0:
        cell[missing[-1]] *= -1
    return cell


def validate_structure(
    atoms: Atoms, *, min_distance: float = MIN_DISTANCE, path: str | os.PathLike | None = None
) -> Atoms:
    """Check that ``atoms`` is a physical structure; return it unchanged.

    On top of :func:`check_arrays` (no atoms, NaN/inf positions, empty or degenerate periodic cell),
    refuses atoms closer than ``min_distance`` to each other or to their own periodic images,
    searching all periodic images (cells smaller than ``min_distance`` included).

    Args:
        atoms: the structure.
        min_distance: closest allowed approach, Å.
        path: the file the structure came from, named in errors.

    Raises:
        GeometryError: naming the problem (and the atoms concerned).
    """
    from vesin import NeighborList

    positions, cell, pbc = check_arrays(atoms.positions, atoms.cell.array, atoms.pbc, path=path)
    pairs = NeighborList(cutoff=min_distance, full_list=False)
    i, j, shift, distance = pairs.compute(positions, cell, pbc, "ijSd")
    if len(i):
        k = int(np.argmin(distance))
        a, b, n = int(i[k]), int(j[k]), shift[k].tolist()
        where = f"atom {a} and its periodic image {n}" if a == b else f"atoms {a} and {b} (image {n})"
        raise GeometryError(
            f"overlapping atoms: {len(i)} pair(s) closer than {min_distance} Å; closest: {where} "
            f"at {distance[k]:.4f} Å",
            path=path,
        )
    return atoms


def _first(indices: np.ndarray, count: int = 5) -> str:
    shown = ", ".join(str(int(k)) for k in indices[:count])
    return shown + (", ..." if len(indices) > count else "")
