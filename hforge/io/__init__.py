"""SIESTA files in and out, and the dataset store.

:class:`HSData` (one structure, block-sparse H and S), :func:`read_hs`, :func:`write_hs`;
:func:`write_csr_hamiltonian` (H and S in CSR buffers to a TSHS / nc, streamed);
:func:`convert` (SIESTA runs -> store), :class:`HSStore` (lazy reading), :class:`SplitRule`.
"""

from __future__ import annotations

from hforge.io.block_statistics import StoreStatistics, block_type_shape, value_block_types
from hforge.io.csr_files import write_csr_hamiltonian
from hforge.io.hsdata import HSData
from hforge.io.runs import find_runs, run_output
from hforge.io.siesta import find_hs_file, read_hs, write_hs
from hforge.io.store import ConversionReport, HSStore, SplitRule, convert, write_store

__all__ = [
    "HSData",
    "read_hs",
    "write_hs",
    "write_csr_hamiltonian",
    "find_hs_file",
    "find_runs",
    "run_output",
    "HSStore",
    "SplitRule",
    "StoreStatistics",
    "block_type_shape",
    "value_block_types",
    "ConversionReport",
    "convert",
    "write_store",
]
