"""Kernels of HForge: one folder per op with a torch reference beside its numba/triton/cupy backends.

Each op takes ``backend="auto" | "torch" | "numba" | "triton" | "cupy"``; see :mod:`hforge.ops.backends`.
"""

from hforge.ops.backends import BACKENDS, BackendStatus, backend_status, resolve_backend
from hforge.ops.cg_blocks import blocks_to_irreps, cg_descriptor, edge_blocks, irreps_to_blocks, onsite_blocks
from hforge.ops.row_pointer import row_pointer

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "backend_status",
    "blocks_to_irreps",
    "cg_descriptor",
    "edge_blocks",
    "irreps_to_blocks",
    "onsite_blocks",
    "resolve_backend",
    "row_pointer",
]
