"""CSR row pointer from per-row counts: ``row_ptr[0] = 0``, ``row_ptr[r + 1] = row_ptr[r] + counts[r]``.

Used by the CSR assembly of H and S (count nonzeros per row, prefix-sum, fill).  Backends:
``torch`` (numpy ``cumsum``; the reference), ``numba`` (parallel chunked scan) and
``cupy`` (``kernels/row_pointer.cu``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hforge.ops.backends import resolve_backend

__all__ = ["row_pointer"]

_IMPLEMENTED = ("cupy", "numba", "torch")


def row_pointer(counts: Any, *, backend: str = "auto") -> Any:
    """Exclusive prefix sum with the total appended.

    Args:
        counts: 1-D integer array of shape ``(n_rows,)``, non-negative; a numpy array
            (CPU backends) or a cupy array (``cupy`` backend).
        backend: ``"auto"``, ``"torch"``, ``"numba"`` or ``"cupy"``.

    Returns:
        int64 array of shape ``(n_rows + 1,)`` of the same array library as ``counts``.
    """
    on_gpu = type(counts).__module__.startswith("cupy")
    name = resolve_backend(backend, on_gpu=on_gpu, implemented=_IMPLEMENTED, op="row_pointer")
    if name == "cupy":
        from hforge.ops.row_pointer.cupy import row_pointer_cupy

        return row_pointer_cupy(counts)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.ndim != 1:
        raise ValueError(f"row_pointer: counts must be 1-D, got shape {counts.shape}")
    if name == "numba":
        from hforge.ops.row_pointer.numba import row_pointer_numba

        return row_pointer_numba(counts)
    from hforge.ops.row_pointer.reference import row_pointer_reference

    return row_pointer_reference(counts)
