"""GPU row pointer: launches ``kernels/row_pointer.cu`` through CuPy."""

from __future__ import annotations

from typing import Any

from hforge.ops._cuda import load_module

__all__ = ["row_pointer_cupy"]

_THREADS_PER_BLOCK = 256
_ROWS_PER_THREAD = 64


def row_pointer_cupy(counts: Any) -> Any:
    """``(n_rows,)`` cupy int64 counts -> ``(n_rows + 1,)`` cupy int64 row pointer."""
    import cupy

    counts = cupy.ascontiguousarray(counts, dtype=cupy.int64)
    n_rows = counts.shape[0]
    n_chunks = max(1, -(-n_rows // _ROWS_PER_THREAD))
    blocks = -(-n_chunks // _THREADS_PER_BLOCK)
    module = load_module("row_pointer")
    totals = cupy.zeros(n_chunks, dtype=cupy.int64)
    row_ptr = cupy.empty(n_rows + 1, dtype=cupy.int64)
    args_common = (counts, cupy.int64(n_rows), cupy.int64(_ROWS_PER_THREAD), cupy.int64(n_chunks))
    module.get_function("hf_chunk_totals")((blocks,), (_THREADS_PER_BLOCK,), (*args_common, totals))
    module.get_function("hf_exclusive_scan")((1,), (1,), (totals, cupy.int64(n_chunks)))
    module.get_function("hf_write_row_pointer")((blocks,), (_THREADS_PER_BLOCK,), (*args_common, totals, row_ptr))
    return row_ptr
