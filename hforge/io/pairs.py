"""The rules of atom pairs (docs/design.md, "Atom pairs and cell shifts"), spelled once.

A pair ``(i, j, n)`` couples atom ``i`` with atom ``j`` displaced by the lattice translation ``n``:
``r_ij = positions[j] + n @ cell - positions[i]``.  Its *canonical* orientation is ``i < j``, or
``i == j`` and ``n`` zero (onsite) or lexicographically positive (first nonzero component
positive); the partner ``(j, i, -n)`` holds the transposed block.  Blocks of shape
``(n_orb[i], n_orb[j])`` are flat-packed row-major on ``block_ptr``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["block_pointer", "canonical_orientation", "is_canonical", "pair_vectors"]


def canonical_orientation(i: Any, j: Any, n0: Any, n1: Any, n2: Any) -> Any:
    """Whether ``(i, j, n)`` is canonically oriented (see the module docstring).

    Operators only, so that one spelling serves scalars, numpy, CuPy and torch arrays (elementwise)
    and numba kernels (``numba.njit(canonical_orientation)``).
    """
    leading = n0 + (n0 == 0) * (n1 + (n1 == 0) * n2)  # the first nonzero component of n, or 0
    return (i < j) | ((i == j) & (leading >= 0))


def is_canonical(edge_index: Any, cell_shift: Any) -> Any:
    """Which pairs belong to the canonical half: ``(E,)`` bool (numpy, or CuPy for CuPy input).

    Applied to a full pair list (both directions, onsite pairs included) it keeps one pair of
    every partner couple.

    Args:
        edge_index: ``(2, E)`` integer atom indices.
        cell_shift: ``(E, 3)`` integer lattice translations.
    """
    return canonical_orientation(edge_index[0], edge_index[1], cell_shift[:, 0], cell_shift[:, 1], cell_shift[:, 2])


def block_pointer(n_orb: np.ndarray, pair_index: np.ndarray) -> np.ndarray:
    """``(E + 1,)`` int64 offsets of the flat-packed blocks of the pairs ``pair_index (2, E)``,
    atom ``a`` having ``n_orb[a]`` orbitals."""
    ptr = np.zeros(pair_index.shape[1] + 1, dtype=np.int64)
    np.cumsum(n_orb[pair_index[0]] * n_orb[pair_index[1]], out=ptr[1:])
    return ptr


def pair_vectors(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, cell_shift: np.ndarray) -> np.ndarray:
    """``(E, 3)`` float64 Å: ``positions[j] + n @ cell - positions[i]`` of every pair."""
    return positions[edge_index[1]] + cell_shift @ cell - positions[edge_index[0]]
