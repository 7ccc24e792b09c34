"""The assembled CSR matrices, and their zero-copy hand-over to sisl and scipy."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from hforge.errors import BasisMismatchError, InputError

__all__ = ["AssembledCSR"]


def _host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else array


@dataclass(frozen=True, eq=False)
class AssembledCSR:
    """K sparse matrices on one CSR pattern, laid out as sisl's ``SparseCSR``.

    Rows are the orbitals of the assembled atoms (all atoms, or a row range starting at orbital
    ``row_offset``); columns are ``orbital + n_orbitals * isc`` with ``isc`` sisl's supercell
    index of the column atom's cell (``sisl.Lattice(nsc=nsc).sc_off`` order), sorted in each row.

    Attributes:
        indptr: ``(n_rows + 1,)`` row pointer, starting at 0; same dtype as ``indices``.
        indices: ``(nnz,)`` int32 or int64 column indices.
        data: ``(nnz, K)`` C-contiguous values (e.g. H in eV then S); sisl's ``_D`` layout.
        shape: ``(n_rows, n_orbitals * prod(nsc))``.
        nsc: supercells per lattice direction.
        row_offset: first orbital row held (0 for a whole matrix).
    """

    indptr: Any
    indices: Any
    data: Any
    shape: tuple[int, int]
    nsc: tuple[int, int, int]
    row_offset: int = 0

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of ``indptr``, ``indices`` and ``data`` together."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)

    def to_scipy(self, k: int = 0) -> Any:
        """Matrix ``k`` as a ``scipy.sparse.csr_matrix`` sharing ``indices``, ``indptr`` and ``data[:, k]``."""
        import scipy.sparse

        matrix = scipy.sparse.csr_matrix(
            (_host(self.data)[:, k], _host(self.indices), _host(self.indptr)), shape=self.shape, copy=False
        )
        matrix.has_sorted_indices = True
        return matrix

    def to_cupy(self, k: int = 0) -> Any:
        """Matrix ``k`` as a ``cupyx.scipy.sparse.csr_matrix`` on the GPU (e.g. for GPU
        eigensolvers), sharing ``indices`` and ``indptr``; ``data[:, k]`` is copied contiguous.
        Host buffers are copied to the device first."""
        import cupy
        import cupyx.scipy.sparse

        matrix = cupyx.scipy.sparse.csr_matrix(
            (cupy.ascontiguousarray(cupy.asarray(self.data)[:, k]), cupy.asarray(self.indices), cupy.asarray(self.indptr)),
            shape=self.shape, copy=False,
        )
        matrix.has_sorted_indices = True
        return matrix

    def to_sisl(self, geometry: Any, *, orthogonal: bool = False) -> Any:
        """A ``sisl.Hamiltonian`` whose sparse storage *is* these buffers (no copy of ``indices`` or ``data``).

        Args:
            geometry: ``sisl.Geometry`` of the whole structure, its atoms in the assembly's order
                with the assembly's orbital counts; it is copied and given ``nsc``.
            orthogonal: False (default) when the last of the K matrices is S, as in sisl and
                SIESTA files: H has K - 1 spin components (1 unpolarized, 2 polarized, 4
                non-colinear, 8 spin-orbit).  True when all K matrices are H components.

        Raises:
            InputError: a row range, not a whole matrix.
            BasisMismatchError: the geometry's orbital count disagrees with the matrix.

        The buffers are installed through ``SparseCSR.__setstate__`` (the pickle protocol, which
        keeps ``col`` and ``D`` as given when their dtypes fit sisl's index rule: int32 when
        ``max(n_cols, nnz) < 2**31``, int64 past it, which is what :func:`assemble_csr` writes)
        and handed to the Hamiltonian as ``sisl.Hamiltonian.fromsp`` does with its own copy.
        GPU buffers are copied to the host first.
        """
        import sisl

        n_rows = self.shape[0]
        if self.row_offset != 0 or n_rows != geometry.no:
            raise (InputError if self.row_offset else BasisMismatchError)(
                f"to_sisl: matrix rows [{self.row_offset}, {self.row_offset + n_rows}) are not the "
                f"{geometry.no} orbitals of the geometry"
            )
        geometry = geometry.copy()
        geometry.set_nsc(self.nsc)
        indices, data = _host(self.indices), _host(self.data)
        n_matrices = data.shape[1]
        if not orthogonal and n_matrices < 2:
            raise InputError("to_sisl: a non-orthogonal Hamiltonian needs H and S (K >= 2 matrices)")
        csr = sisl.SparseCSR((n_rows, self.shape[1], n_matrices), dtype=data.dtype, nnz=1)
        csr.__setstate__(
            {
                "shape": (n_rows, self.shape[1], n_matrices),
                "ncol": np.diff(_host(self.indptr)),
                "col": indices,
                "D": data,
                "finalized": True,
            }
        )
        if csr.col is not indices or csr._D is not data:  # correct, but a copy: a sisl with another index rule
            warnings.warn("to_sisl: this sisl copied the CSR buffers (index dtype rule changed?)", stacklevel=2)
        hamiltonian = sisl.Hamiltonian(
            geometry, dim=n_matrices if orthogonal else n_matrices - 1, dtype=data.dtype, nnzpr=1,
            orthogonal=orthogonal,
        )
        hamiltonian._csr = csr
        hamiltonian._reset()
        return hamiltonian
