"""Numba kernels of the neighbour list: one pass each over the pairs, no temporaries.

- :func:`canonical_pairs`: the kept pairs as int64 ``(i, j, n)``, flipped to the canonical half if asked,
  with the onsite pairs appended;
- :func:`pair_order`: the permutation sorting pairs by ``(i, j, n)``: a counting sort by ``i`` (linear),
  then a sort of each atom's few neighbours by ``(j, n)``;
- :func:`gather_pairs`: the pairs in a given order with their vectors ``x_j + n @ cell - x_i`` and
  distances.
"""

from __future__ import annotations

import math

import numpy as np

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
from hforge.io.pairs import canonical_orientation

_canonical = numba.njit(cache=True)(canonical_orientation)

__all__ = ["canonical_pairs", "gather_pairs", "pair_order"]


@numba.njit(cache=True)
def canonical_pairs(i, j, shift, keep, half, n_onsite):  # pragma: no cover - compiled
    """``(i, j, n)`` int64 of the pairs ``keep`` (indices), canonical half if ``half``, + ``n_onsite`` onsite pairs."""
    n = keep.size
    rows = np.empty(n + n_onsite, np.int64)
    cols = np.empty(n + n_onsite, np.int64)
    shifts = np.zeros((n + n_onsite, 3), np.int64)
    for e in range(n):
        k = keep[e]
        a = np.int64(i[k])
        b = np.int64(j[k])
        s0, s1, s2 = np.int64(shift[k, 0]), np.int64(shift[k, 1]), np.int64(shift[k, 2])
        if half and not _canonical(a, b, s0, s1, s2):
            a, b, s0, s1, s2 = b, a, -s0, -s1, -s2
        rows[e] = a
        cols[e] = b
        shifts[e, 0] = s0
        shifts[e, 1] = s1
        shifts[e, 2] = s2
    for atom in range(n_onsite):
        rows[n + atom] = atom
        cols[n + atom] = atom
    return rows, cols, shifts


@numba.njit(cache=True)
def pair_order(rows, cols, shifts, n_atoms):  # pragma: no cover - compiled
    """Permutation sorting unique pairs by ``(i, j, n0, n1, n2)``."""
    n = rows.size
    starts = np.zeros(n_atoms + 1, np.int64)
    for e in range(n):
        starts[rows[e] + 1] += 1
    for atom in range(n_atoms):
        starts[atom + 1] += starts[atom]
    fill = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for e in range(n):
        a = rows[e]
        order[fill[a]] = e
        fill[a] += 1
    if n == 0:
        return order
    low = shifts.min()
    span = shifts.max() - low + 1
    keys = np.empty(n, np.int64)  # (j, n) of each pair in row order; unique within a row
    for p in range(n):
        e = order[p]
        keys[p] = ((cols[e] * span + shifts[e, 0] - low) * span + shifts[e, 1] - low) * span + shifts[e, 2] - low
    for atom in range(n_atoms):
        begin, end = starts[atom], starts[atom + 1]
        if end - begin > 1:
            local = np.argsort(keys[begin:end])
            order[begin:end] = order[begin:end][local]
    return order


@numba.njit(cache=True)
def gather_pairs(order, rows, cols, shifts, positions, cell):  # pragma: no cover - compiled
    """Pairs in ``order`` with their vectors ``x_j + n @ cell - x_i`` (Å) and distances."""
    n = order.size
    out_rows = np.empty(n, np.int64)
    out_cols = np.empty(n, np.int64)
    out_shifts = np.empty((n, 3), np.int64)
    vectors = np.empty((n, 3), np.float64)
    distances = np.empty(n, np.float64)
    for p in range(n):
        e = order[p]
        a, b = rows[e], cols[e]
        out_rows[p] = a
        out_cols[p] = b
        s0, s1, s2 = shifts[e, 0], shifts[e, 1], shifts[e, 2]
        out_shifts[p, 0] = s0
        out_shifts[p, 1] = s1
        out_shifts[p, 2] = s2
        squared = 0.0
        for x in range(3):
            v = positions[b, x] - positions[a, x] + s0 * cell[0, x] + s1 * cell[1, x] + s2 * cell[2, x]
            vectors[p, x] = v
            squared += v * v
        distances[p] = math.sqrt(squared)
    return out_rows, out_cols, out_shifts, vectors, distances
