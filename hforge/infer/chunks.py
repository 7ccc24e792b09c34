"""Spatial chunks of a periodic cell, their halo clusters, and row copies into the final CSR.

A large cell is cut into a grid of chunks in fractional coordinates.  Each chunk's *core* atoms
are predicted inside a non-periodic *cluster*: the core atoms plus every periodic image of every
atom within ``halo`` Å of the chunk (a superset, taken in fractional coordinates).  With ``halo``
at least the model's reach (:func:`receptive_field`), a core atom's features, its onsite blocks
and the blocks of its pairs are those of the whole periodic cell.

Rows: the final CSR's row pointer follows from the canonical pair list alone (blocks are dense,
:func:`csr_row_pointer`); a chunk's rows are assembled from the canonical pairs touching its core
atoms, then copied into the final buffers at their rows (:func:`copy_atom_rows`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)

__all__ = [
    "Cluster",
    "chunk_grid",
    "chunk_of_atoms",
    "cluster_of_chunk",
    "copy_atom_rows",
    "csr_row_pointer",
    "morton_codes",
    "receptive_field",
]


def receptive_field(config, pair_cutoff: float) -> float:
    """Å around an atom that its predicted rows depend on.

    Trunk features see ``num_interactions * r_max``; onsite blocks add one more ``r_max`` (the
    environment sum over interaction edges) and hopping blocks the pair cut-off (the column atom's
    features): ``num_interactions * r_max + max(r_max, pair_cutoff)``.  A separable operator
    (``config.separable``) adds the ``D_k`` of every atom within the largest orbital radius
    (``pair_cutoff / 2``) plus the projector radius, each seeing ``(num_interactions + 1) r_max``.
    """
    reach = config.num_interactions * config.r_max + max(config.r_max, pair_cutoff)
    if getattr(config, "separable", False):
        reach = max(reach, (config.num_interactions + 1) * config.r_max + pair_cutoff / 2 + config.projector_radius)
    return reach


def fractional(positions: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(frac, wrap)``: fractional coordinates in ``[0, 1)`` and the ``(N, 3)`` int64 lattice
    translation taken off, ``positions = (frac + wrap) @ cell``."""
    raw = positions @ np.linalg.inv(cell)
    wrap = np.floor(raw)
    frac = raw - wrap
    over = frac >= 1.0  # rounding
    frac[over] -= 1.0
    wrap[over] += 1.0
    return frac, wrap.astype(np.int64)


def morton_codes(frac: np.ndarray, bits: int = 10) -> np.ndarray:
    """``(N,)`` int64 Morton (Z-order) codes of fractional coordinates ``frac (N, 3)`` in ``[0, 1)``:
    each coordinate on a grid of ``2**bits`` cells (``bits <= 20``), the cells' bits interleaved
    (bit ``b`` of axis ``a`` at bit ``3 b + a``), so that atoms close in the code are close in space."""
    if not 0 < bits <= 20:
        raise ValueError(f"morton_codes: bits must be 1..20, got {bits}")
    cells = np.clip((np.asarray(frac, dtype=np.float64) * (1 << bits)).astype(np.int64), 0, (1 << bits) - 1)
    codes = np.zeros(len(cells), dtype=np.int64)
    for b in range(bits):
        for axis in range(3):
            codes |= ((cells[:, axis] >> b) & 1) << (3 * b + axis)
    return codes


def interplanar_spacings(cell: np.ndarray) -> np.ndarray:
    """``(3,)`` Å distance between lattice planes ``(100), (010), (001)``: ``1 / |b_k|``."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)


def chunk_grid(cell: np.ndarray, n_chunks: int) -> tuple[int, int, int]:
    """A grid of at least ``n_chunks`` chunks, as cubic as the cell allows."""
    spacing = interplanar_spacings(cell)
    side = (np.prod(spacing) / max(n_chunks, 1)) ** (1.0 / 3.0)
    grid = np.maximum(1, np.floor(spacing / side)).astype(int)
    while np.prod(grid) < n_chunks:  # refine along the longest chunk side
        grid[np.argmax(spacing / grid)] += 1
    return tuple(int(g) for g in grid)


def chunk_of_atoms(frac: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """``(N,)`` flat chunk index of every atom (C order over the grid)."""
    cell_index = np.minimum((frac * np.asarray(grid)).astype(np.int64), np.asarray(grid) - 1)
    return np.ravel_multi_index(cell_index.T, grid)


@dataclass(frozen=True)
class Cluster:
    """A chunk's non-periodic cluster: core atoms first, then halo images.

    Attributes:
        atoms: ``(M,)`` int64 atom of the cell of every cluster atom.
        shifts: ``(M, 3)`` int64 lattice translation of every cluster atom, from its position
            wrapped into the cell (:func:`fractional`).
        n_core: the first ``n_core`` cluster atoms are the chunk's atoms, home copies, ascending.
    """

    atoms: np.ndarray
    shifts: np.ndarray
    n_core: int

    def positions(self, positions: np.ndarray, wrap: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """``(M, 3)`` Å of the cluster atoms, from the structure's positions and their ``wrap``."""
        return positions[self.atoms] + (self.shifts - wrap[self.atoms]) @ cell

    def lookup(self, atoms: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Cluster index of the images ``(atoms, shifts)``; -1 where absent."""
        keys = _image_keys(self.atoms, self.shifts)
        order = np.argsort(keys)
        wanted = _image_keys(atoms, shifts)
        where = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
        return np.where(keys[order][where] == wanted, order[where], -1)


_SHIFT_RANGE = 1 << 10


def _image_keys(atoms: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    code = shifts + _SHIFT_RANGE // 2
    return ((atoms * _SHIFT_RANGE + code[:, 0]) * _SHIFT_RANGE + code[:, 1]) * _SHIFT_RANGE + code[:, 2]


def cluster_of_chunk(
    frac: np.ndarray, chunk: np.ndarray, index: int, grid: tuple[int, int, int], cell: np.ndarray, halo: float
) -> Cluster:
    """The cluster of chunk ``index``: its atoms and all images within ``halo`` Å of its box."""
    grid_arr = np.asarray(grid)
    lower = np.asarray(np.unravel_index(index, grid)) / grid_arr
    upper = lower + 1.0 / grid_arr
    margin = halo / interplanar_spacings(cell)
    lo, hi = lower - margin, upper + margin
    core = np.flatnonzero(chunk == index)
    atoms, shifts = [core], [np.zeros((len(core), 3), dtype=np.int64)]
    ranges = [range(int(np.floor(lo[k])) - 1, int(np.ceil(hi[k])) + 1) for k in range(3)]
    is_core = np.zeros(len(frac), dtype=bool)
    is_core[core] = True
    for n in itertools.product(*ranges):
        image = frac + np.asarray(n)
        inside = np.all((image >= lo) & (image <= hi), axis=1)
        if n == (0, 0, 0):
            inside &= ~is_core
        found = np.flatnonzero(inside)
        atoms.append(found)
        shifts.append(np.broadcast_to(np.asarray(n, dtype=np.int64), (len(found), 3)))
    return Cluster(np.concatenate(atoms), np.concatenate(shifts), len(core))


def csr_row_pointer(edge_index: np.ndarray, cell_shift: np.ndarray, orbitals_per_atom: np.ndarray) -> np.ndarray:
    """``(n_orbitals + 1,)`` int64 row pointer of the block-dense CSR of canonical pairs (+ onsite).

    Every row of atom ``a`` holds the columns of all atoms paired with ``a`` (both directions).
    """
    i, j = edge_index
    onsite = (i == j) & ~cell_shift.any(axis=1)
    per_atom = np.bincount(i, weights=orbitals_per_atom[j], minlength=len(orbitals_per_atom))
    per_atom += np.bincount(j[~onsite], weights=orbitals_per_atom[i[~onsite]], minlength=len(orbitals_per_atom))
    rows = np.repeat(per_atom.astype(np.int64), orbitals_per_atom)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows, out=indptr[1:])
    return indptr


@numba.njit(parallel=True, cache=True)
def _copy_rows(source_start, target_start, counts, source_indices, source_data, target_indices, target_data):
    for a in numba.prange(counts.shape[0]):
        s, t = source_start[a], target_start[a]
        for q in range(counts[a]):
            target_indices[t + q] = source_indices[s + q]
            for k in range(source_data.shape[1]):
                target_data[t + q, k] = source_data[s + q, k]


def copy_atom_rows(
    atoms: np.ndarray,
    orbital_offset: np.ndarray,
    source_indptr: np.ndarray,
    source_row_offset: int,
    source_indices: np.ndarray,
    source_data: np.ndarray,
    target_indptr: np.ndarray,
    target_indices: np.ndarray,
    target_data: np.ndarray,
) -> None:
    """Copy the rows of ``atoms`` (an atom's rows are contiguous in a CSR) between two CSRs.

    ``source_indptr`` covers rows from orbital ``source_row_offset`` on; ``target_indptr`` all rows.

    Raises:
        ValueError: the atoms' rows hold other numbers of entries in the two (an incomplete chunk).
    """
    first, last = orbital_offset[atoms], orbital_offset[atoms + 1]
    source_start = source_indptr[first - source_row_offset]
    counts = source_indptr[last - source_row_offset] - source_start
    target_start = target_indptr[first]
    if not np.array_equal(counts, target_indptr[last] - target_start):
        raise ValueError("copy_atom_rows: rows of different lengths (pairs missing from a chunk)")
    _copy_rows(source_start, target_start, counts, source_indices, source_data, target_indices, target_data)
