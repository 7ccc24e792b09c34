"""Linear-time argsort of non-negative int64 keys (LSD radix sort, 16-bit digits, numba)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["radix_argsort"]


@numba.njit(cache=True)
def _radix_argsort(keys: np.ndarray, bits: int) -> np.ndarray:  # pragma: no cover - compiled
    n = keys.size
    order = np.arange(n)
    current = keys.copy()
    next_order = np.empty(n, np.int64)
    next_keys = np.empty(n, np.int64)
    shift = 0
    while shift < bits:
        counts = np.zeros(65537, np.int64)
        for k in range(n):
            counts[((current[k] >> shift) & 0xFFFF) + 1] += 1
        for d in range(65536):
            counts[d + 1] += counts[d]
        for k in range(n):
            d = (current[k] >> shift) & 0xFFFF
            p = counts[d]
            next_order[p] = order[k]
            next_keys[p] = current[k]
            counts[d] = p + 1
        order, next_order = next_order, order
        current, next_keys = next_keys, current
        shift += 16
    return order


def radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of ``keys`` (int64, all >= 0) in O(len(keys)) (one pass per 16 bits of the largest key)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    return _radix_argsort(keys, max(int(keys.max()).bit_length(), 1))
