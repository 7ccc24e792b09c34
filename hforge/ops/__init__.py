"""Kernels of HForge: one folder per op with a torch reference beside its numba/triton/cupy backends.

Each op takes ``backend="auto" | "torch" | "numba" | "triton" | "cupy"``; see :mod:`hforge.ops.backends`.
"""

from hforge.ops.assemble import AssembledCSR, AssemblyPlan, assemble_csr, plan_csr_assembly
from hforge.ops.backends import BACKENDS, BackendStatus, backend_status, resolve_backend
from hforge.ops.cg_blocks import blocks_to_irreps, cg_descriptor, edge_blocks, irreps_to_blocks, onsite_blocks

__all__ = [
    "BACKENDS",
    "AssembledCSR",
    "AssemblyPlan",
    "BackendStatus",
    "assemble_csr",
    "backend_status",
    "plan_csr_assembly",
    "blocks_to_irreps",
    "cg_descriptor",
    "edge_blocks",
    "irreps_to_blocks",
    "onsite_blocks",
    "resolve_backend",
]
