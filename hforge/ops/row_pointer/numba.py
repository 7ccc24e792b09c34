"""Parallel CPU row pointer: the chunked three-pass scan of ``kernels/row_pointer.cu``, one chunk per thread."""

from __future__ import annotations

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
import numpy as np

__all__ = ["row_pointer_numba"]


@numba.njit(parallel=True, cache=True)
def _scan(counts: np.ndarray, row_ptr: np.ndarray, n_chunks: int) -> None:
    n_rows = counts.shape[0]
    chunk = (n_rows + n_chunks - 1) // n_chunks
    totals = np.zeros(n_chunks + 1, dtype=np.int64)
    for t in numba.prange(n_chunks):
        s = 0
        for r in range(t * chunk, min((t + 1) * chunk, n_rows)):
            s += counts[r]
        totals[t + 1] = s
    for t in range(n_chunks):
        totals[t + 1] += totals[t]
    row_ptr[0] = 0
    for t in numba.prange(n_chunks):
        running = totals[t]
        for r in range(t * chunk, min((t + 1) * chunk, n_rows)):
            running += counts[r]
            row_ptr[r + 1] = running


def row_pointer_numba(counts: np.ndarray) -> np.ndarray:
    """``(n_rows,)`` int64 counts -> ``(n_rows + 1,)`` int64 row pointer, in parallel."""
    row_ptr = np.empty(counts.shape[0] + 1, dtype=np.int64)
    n_chunks = max(1, min(counts.shape[0], 8 * numba.get_num_threads()))
    _scan(counts, row_ptr, n_chunks)
    return row_ptr
