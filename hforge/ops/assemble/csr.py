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

        The buffers are installed through sisl internals (:func:`_sisl_sharing_buffers`): the
        pickle protocol of ``SparseCSR``, which keeps ``col`` and ``D`` as given when their
        dtypes fit sisl's index rule (int32 when ``max(n_cols, nnz) < 2**31``, int64 past it,
        which is what :func:`assemble_csr` writes), handed to the Hamiltonian as
        ``sisl.Hamiltonian.fromsp`` does with its own copy.  The hand-over is checked on sisl
        0.15.2, 0.16.0, 0.16.4 and 0.20.0 (pyproject.toml keeps sisl at 0.20.x: the older ones'
        k-space kernels take no int64 indices); should a sisl change them, the same matrices come through
        sisl's public ``Hamiltonian.fromsp`` from scipy matrices instead (a copy; explicit zeros
        of the pattern dropped), with a warning.  GPU buffers are copied to the host first.
        """
        n_rows = self.shape[0]
        if self.row_offset != 0 or n_rows != geometry.no:
            raise (InputError if self.row_offset else BasisMismatchError)(
                f"to_sisl: matrix rows [{self.row_offset}, {self.row_offset + n_rows}) are not the "
                f"{geometry.no} orbitals of the geometry"
            )
        n_matrices = self.data.shape[1]
        if not orthogonal and n_matrices < 2:
            raise InputError("to_sisl: a non-orthogonal Hamiltonian needs H and S (K >= 2 matrices)")
        geometry = geometry.copy()
        geometry.set_nsc(self.nsc)
        try:
            return _sisl_sharing_buffers(self, geometry, orthogonal)
        except _SISL_INTERNALS_CHANGED as exc:
            warnings.warn(
                f"to_sisl: this sisl's SparseCSR internals differ ({type(exc).__name__}: {exc}); "
                "building the Hamiltonian through Hamiltonian.fromsp (a copy)",
                stacklevel=2,
            )
        return _sisl_from_scipy(self, geometry, orthogonal)


#: What a sisl whose ``SparseCSR`` / ``SparseGeometry`` internals changed raises in :func:`_sisl_sharing_buffers`.
_SISL_INTERNALS_CHANGED = (AttributeError, KeyError, TypeError, ValueError)


def _sisl_sharing_buffers(csr: AssembledCSR, geometry: Any, orthogonal: bool) -> Any:
    """The Hamiltonian on ``csr``'s own buffers, through sisl internals (``SparseCSR.__setstate__``,
    ``_csr``, ``_reset``).

    Raises:
        AttributeError, KeyError, TypeError, ValueError: the internals are not what this was
            written for (checked: the result must hold the pattern it was given).
    """
    import sisl

    indices, data, indptr = _host(csr.indices), _host(csr.data), _host(csr.indptr)
    n_rows, n_cols = csr.shape
    n_matrices = data.shape[1]
    sparse = sisl.SparseCSR((n_rows, n_cols, n_matrices), dtype=data.dtype, nnz=1)
    sparse.__setstate__(
        {"shape": (n_rows, n_cols, n_matrices), "ncol": np.diff(indptr), "col": indices, "D": data, "finalized": True}
    )
    hamiltonian = sisl.Hamiltonian(
        geometry, dim=n_matrices if orthogonal else n_matrices - 1, dtype=data.dtype, nnzpr=1, orthogonal=orthogonal,
    )
    hamiltonian._csr = sparse
    hamiltonian._reset()
    kept = tuple(hamiltonian.shape) == (n_rows, n_cols, n_matrices) and hamiltonian.nnz == csr.nnz
    if not (kept and np.array_equal(hamiltonian._csr.ptr, indptr)):
        raise ValueError("sisl did not keep the CSR pattern it was given")
    if sparse.col is not indices or sparse._D is not data:  # correct, but a copy: a sisl with another index rule
        warnings.warn("to_sisl: this sisl copied the CSR buffers (index dtype rule changed?)", stacklevel=3)
    return hamiltonian


def _sisl_from_scipy(csr: AssembledCSR, geometry: Any, orthogonal: bool) -> Any:
    """The Hamiltonian through sisl's public API: ``Hamiltonian.fromsp`` of one scipy matrix per component."""
    import sisl

    matrices = [csr.to_scipy(k) for k in range(csr.data.shape[1])]
    if orthogonal:
        return sisl.Hamiltonian.fromsp(geometry, matrices)
    return sisl.Hamiltonian.fromsp(geometry, matrices[:-1], S=matrices[-1])
