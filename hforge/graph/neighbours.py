"""Periodic neighbour lists in the pair contract of ``docs/design.md``.

A pair ``(i, j, n)`` couples atom ``i`` of the home cell with atom ``j`` displaced by the integer
lattice translation ``n``: ``r_ij = positions[j] + n @ cell - positions[i]`` (cell rows are lattice
vectors). Every periodic image is its own pair: in a cell smaller than the cut-off one atom pair
appears with many shifts, and an atom pairs with its own images ``(i, i, n != 0)``.

The search is vesin's cell list (linear in the number of atoms); this module adds per-species-pair
cut-offs, the canonical half, onsite pairs and a deterministic order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hforge.errors import InputError
from hforge.graph._kernels import canonical_pairs, gather_pairs, pair_order
from hforge.structures.validate import check_arrays

__all__ = ["PairList", "neighbour_list", "orbital_pair_list"]


@dataclass(frozen=True)
class PairList:
    """Atom pairs ``(i, j, n)`` with their geometry.

    Attributes:
        edge_index: ``(2, E)`` int64: row atoms ``i``, column atoms ``j``.
        cell_shift: ``(E, 3)`` int64 lattice translation ``n`` of atom ``j`` (0 along non-periodic axes).
        distances: ``(E,)`` float64 ``|r_ij|``, Å.
        vectors: ``(E, 3)`` float64 ``r_ij = positions[j] + n @ cell - positions[i]``, Å.
        n_atoms: number of atoms of the structure.
        half: True for the canonical half (``i < j``, or ``i == j`` and ``n`` lexicographically
            positive, plus onsite pairs); the partner ``(j, i, -n)`` of each pair is implied.

    Pairs are sorted by ``(i, j, n)`` (lexicographically) unless built with ``sort=False``.
    """

    edge_index: np.ndarray
    cell_shift: np.ndarray
    distances: np.ndarray
    vectors: np.ndarray
    n_atoms: int
    half: bool

    @property
    def n_pairs(self) -> int:
        """Number of pairs ``E``."""
        return self.edge_index.shape[1]


def _cutoff_matrix(cutoff, species, n_atoms: int) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """``(largest cut-off, per-species-pair matrix or None, species or None)``, checked."""
    matrix = np.asarray(cutoff, dtype=np.float64)
    if not (np.isfinite(matrix).all() and (matrix > 0).all()):
        raise InputError(f"cut-offs must be positive and finite, got {cutoff}")
    if matrix.ndim == 0:
        return float(matrix), None, None
    n_species = len(matrix)
    if matrix.shape != (n_species, n_species) or not np.array_equal(matrix, matrix.T):
        raise InputError(f"per-species-pair cut-offs must be a symmetric square matrix, got shape {matrix.shape}")
    if species is None:
        raise InputError("per-species-pair cut-offs need `species`")
    species = np.asarray(species)
    if species.shape != (n_atoms,) or not np.issubdtype(species.dtype, np.integer):
        raise InputError(f"species must be {n_atoms} integer species indices, got {species.dtype} {species.shape}")
    if n_atoms and (species.min() < 0 or species.max() >= n_species):
        raise InputError(f"species indices must lie in [0, {n_species}), got [{species.min()}, {species.max()}]")
    return float(matrix.max()), matrix, species.astype(np.int64)


def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    cutoff,
    *,
    species: np.ndarray | None = None,
    half: bool = False,
    onsite: bool = False,
    sort: bool = True,
) -> PairList:
    """All pairs ``(i, j, n)`` closer than a cut-off, every periodic image its own pair.

    Args:
        positions: ``(N, 3)`` Cartesian positions, Å (need not be wrapped into the cell).
        cell: ``(3, 3)`` lattice vectors as rows, Å; a non-periodic axis may have a zero vector.
        pbc: periodicity along each lattice vector (bool or three bools; mixed periodicity works).
        cutoff: one cut-off (Å), or a symmetric ``(n_species, n_species)`` matrix of per-species-pair
            cut-offs (then ``species`` is required). A pair is kept when ``|r_ij| < cutoff`` (strict).
        species: ``(N,)`` integer species index of each atom, for per-species-pair cut-offs.
        half: return the canonical half (``i < j``, or ``i == j`` and ``n`` lexicographically positive)
            instead of both ``(i, j, n)`` and ``(j, i, -n)``.
        onsite: add the onsite pairs ``(i, i, 0)`` (distance 0).
        sort: sort the pairs by ``(i, j, n)`` (deterministic order; costs a sort).

    Returns:
        A :class:`PairList`.

    Raises:
        GeometryError: no atoms, NaN/inf positions, empty or degenerate periodic cell.
        InputError: bad cut-offs or species.
    """
    from vesin import NeighborList

    positions, cell, pbc = check_arrays(positions, cell, pbc)
    n_atoms = len(positions)
    largest, matrix, species = _cutoff_matrix(cutoff, species, n_atoms)
    search = NeighborList(cutoff=largest, full_list=not half)
    # copy=False: views into `search`, read by the kernels before `search` is freed.
    i, j, shift, distance = search.compute(positions, cell, pbc, "ijSd", copy=False)
    keep = np.flatnonzero(distance < (largest if matrix is None else matrix[species[i], species[j]]))
    rows, cols, shifts = canonical_pairs(i, j, shift, keep, half, n_atoms if onsite else 0)
    del search, i, j, shift, distance
    order = pair_order(rows, cols, shifts, n_atoms) if sort else np.arange(len(rows))
    i, j, shift, vector, distance = gather_pairs(order, rows, cols, shifts, positions, cell)
    return PairList(
        edge_index=np.stack([i, j]),
        cell_shift=shift,
        distances=distance,
        vectors=vector,
        n_atoms=n_atoms,
        half=half,
    )


def orbital_pair_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    species: np.ndarray,
    radii: np.ndarray,
    *,
    half: bool = False,
    onsite: bool = True,
    sort: bool = True,
) -> PairList:
    """The atom pairs whose orbitals overlap: ``|r_ij| < r[species[i]] + r[species[j]]``.

    These are the blocks of S (and the orbital-overlap blocks of H). On the aBN runs of
    ``shared/abn`` this is exactly the set of atom pairs with a nonzero S block in SIESTA's TSHS,
    when ``radii`` are the exact cut-off radii of the ``.ion`` files (B 3.7396194, N 2.7801261 Å);
    radii rounded to 0.01 Å miss or add pairs.

    Args:
        positions, cell, pbc: the structure, as in :func:`neighbour_list`.
        species: ``(N,)`` integer species index of each atom.
        radii: ``(n_species,)`` largest orbital cut-off radius of each species, Å.
        half, sort: as in :func:`neighbour_list`.
        onsite: include the onsite pairs ``(i, i, 0)`` (their blocks are part of every matrix).
    """
    radii = np.asarray(radii, dtype=np.float64)
    if radii.ndim != 1:
        raise InputError(f"radii must be one radius per species, got shape {radii.shape}")
    return neighbour_list(
        positions, cell, pbc, radii[:, None] + radii[None, :], species=species, half=half, onsite=onsite, sort=sort
    )
