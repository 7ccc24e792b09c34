"""Reference row pointer: numpy's cumulative sum."""

from __future__ import annotations

import numpy as np

__all__ = ["row_pointer_reference"]


def row_pointer_reference(counts: np.ndarray) -> np.ndarray:
    """``(n_rows,)`` int64 counts -> ``(n_rows + 1,)`` int64 row pointer."""
    row_ptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    return row_ptr
