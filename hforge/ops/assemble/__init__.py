"""CSR scatter-assembly of H and S from flat-packed blocks, straight into sisl's layout.

Input (docs/design.md): the canonical half of a pair list (``i < j``, or ``i == j`` with ``n``
lexicographically positive) plus the onsite pairs ``(i, i, 0)``; K flat value arrays (e.g. H in
eV and S) on one ``block_ptr``; optionally a bool mask in the same flat layout.  The partner
``(j, i, -n)`` of every non-onsite pair is written from the transpose of its block, so the
matrices are symmetric by construction; onsite blocks are written once.

Output (:class:`AssembledCSR`): rows = orbitals, columns = ``orbital + n_orbitals * isc`` with
``isc`` sisl's supercell index, sorted within each row; values ``(nnz, K)`` as sisl's
``SparseCSR._D`` (S last), handed to ``sisl.Hamiltonian`` without a copy (:meth:`AssembledCSR.to_sisl`).

Algorithm: count nonzeros per row from the pairs, prefix-sum them into the row pointer
(the array library's cumsum), sort each atom's pairs by output column (a sort over pairs,
not nonzeros), then every block writes its entries at precomputed offsets; no COO
intermediate, no sort over nonzeros, no atomics; output buffers allocated once.

Backends: ``torch`` (the reference: numpy/scipy COO -> CSR, the oracle), ``numba`` (parallel CPU), ``cupy``
(``kernels/assemble.cu``).  Whole matrices: :func:`assemble_csr`.  Row ranges into
caller-provided buffers (chunked inference of huge cells): :func:`plan_csr_assembly` with
``atoms=(begin, end)``, then :meth:`AssemblyPlan.fill`.  Pair by pair into the final buffers
(streamed inference: each pair evaluated once, written to its rows and its partner's):
``plan.fill(blocks_of_those_pairs, pairs=..., indices_out=..., data_out=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hforge.errors import InputError
from hforge.ops.assemble.csr import AssembledCSR
from hforge.ops.assemble.layout import (
    INT32_MAX,
    AssemblyInputs,
    array_module,
    check_assembly_inputs,
    check_blocks,
    default_index_dtype,
    is_canonical,
)
from hforge.ops.backends import resolve_backend

__all__ = ["AssembledCSR", "AssemblyPlan", "assemble_csr", "is_canonical", "plan_csr_assembly"]

_IMPLEMENTED = ("cupy", "numba", "torch")


@dataclass(frozen=True, eq=False)
class AssemblyPlan:
    """The CSR pattern of the rows of an atom range: everything but the values.

    Attributes:
        inputs: the validated problem.
        backend: the backend that planned and fills it.
        indptr: ``(n_rows + 1,)`` int64 row pointer of the range, starting at 0.
        state: backend-specific sorted pair arrays (None for the reference).
    """

    inputs: AssemblyInputs
    backend: str
    indptr: Any
    state: Any

    @property
    def nnz(self) -> int:
        """Nonzeros of the range: the length of the ``indices`` and ``data`` buffers."""
        return int(self.indptr[-1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows of the range, n_orbitals * prod(nsc))``."""
        return self.inputs.n_rows, self.inputs.n_cols

    @property
    def row_offset(self) -> int:
        """First orbital row of the range."""
        return self.inputs.row_begin

    @property
    def nsc(self) -> tuple[int, int, int]:
        """Supercells per lattice direction (given, or chosen from the pairs)."""
        return self.inputs.nsc

    def fill(
        self,
        blocks: Sequence[Any] | Any,
        *,
        pairs: Any | None = None,
        indices_out: Any | None = None,
        data_out: Any | None = None,
        index_dtype: Any | None = None,
    ) -> AssembledCSR:
        """Write the values (and column indices) of the planned rows.

        Args:
            blocks: K flat value arrays of shape ``(block_ptr[-1],)`` on the planned pairs (a
                sequence, or one ``(K, block_ptr[-1])`` array), e.g. ``(H, S)``; one dtype
                avoids a converted copy.  With ``pairs``: the blocks of those pairs alone, in
                their order (flat, ``sum of n_orb[i] * n_orb[j]`` values).
            pairs: optional ``(M,)`` int64 indices of canonical pairs of the plan: write only
                the entries of their blocks and of their transposes that lie in the planned
                rows, into ``indices_out`` and ``data_out`` (both required, the range's whole
                buffers); the other entries are left as they are.  Filling every pair once, in
                any number of calls and any grouping, writes what one call without ``pairs``
                does: streamed inference evaluates each pair once and writes both its rows and
                its partner's (unmasked plans only).
            indices_out: optional ``(nnz,)`` int32/int64 buffer for the column indices (e.g. a
                slice of a whole-matrix buffer or a memory map); allocated if None.
            data_out: optional ``(nnz, K)`` C-contiguous buffer of the blocks' dtype.
            index_dtype: dtype of allocated indices; default int32 when the column count and
                nnz fit (sisl's rule), else int64.  Pass the whole matrix's dtype for a range.

        Returns:
            The CSR of the rows, sharing ``indices_out`` and ``data_out`` when given.

        Raises:
            InputError: blocks or buffers of the wrong shape or dtype; ``pairs`` without output
                buffers, outside the plan, or on a masked plan.
        """
        inputs = self.inputs
        xp = array_module(inputs.edge_index)
        local_ptr = None
        if pairs is not None:
            pairs, local_ptr = self._check_pairs(pairs, indices_out, data_out, xp)
        blocks = check_blocks(inputs, blocks, n_values=None if local_ptr is None else int(local_ptr[-1]))
        nnz, n_matrices, dtype = self.nnz, len(blocks), blocks[0].dtype
        if indices_out is None:
            index_dtype = default_index_dtype(inputs.n_cols, nnz) if index_dtype is None else np.dtype(index_dtype)
            indices_out = xp.empty(nnz, dtype=index_dtype)
        if data_out is None:
            data_out = xp.empty((nnz, n_matrices), dtype=dtype)
        _check_output(indices_out, data_out, nnz, n_matrices, dtype, inputs.n_cols, xp)
        if pairs is not None:
            self._fill_pairs(pairs, local_ptr, blocks, indices_out, data_out)
        elif self.backend == "torch":
            from hforge.ops.assemble.reference import assemble_reference

            _, indices, data = assemble_reference(inputs, blocks)
            indices_out[:] = indices
            data_out[:] = data
        elif self.backend == "numba":
            from hforge.ops.assemble.numba import fill_numba

            fill_numba(inputs, self.state, self.indptr, blocks, indices_out, data_out)
        else:
            from hforge.ops.assemble.cupy import fill_cupy

            fill_cupy(inputs, self.state, self.indptr, blocks, indices_out, data_out)
        return AssembledCSR(
            indptr=self.indptr.astype(indices_out.dtype, copy=False),
            indices=indices_out,
            data=data_out,
            shape=self.shape,
            nsc=inputs.nsc,
            row_offset=self.row_offset,
        )

    def _check_pairs(self, pairs: Any, indices_out: Any, data_out: Any, xp: Any) -> tuple[Any, Any]:
        """``pairs`` as int64 and the ``(M + 1,)`` offsets of their blocks in the given values."""
        inputs = self.inputs
        if inputs.mask is not None:
            raise InputError("assemble_csr: filling by pairs needs an unmasked (block-dense) plan")
        if indices_out is None or data_out is None:
            raise InputError("assemble_csr: filling by pairs writes into given indices_out and data_out")
        pairs = xp.ascontiguousarray(xp.asarray(pairs), dtype=xp.int64)
        if pairs.ndim != 1 or (pairs.size and (int(pairs.min()) < 0 or int(pairs.max()) >= inputs.n_pairs)):
            raise InputError(f"assemble_csr: pairs must be a 1-D array of pair indices in [0, {inputs.n_pairs})")
        local_ptr = xp.zeros(pairs.shape[0] + 1, dtype=xp.int64)
        xp.cumsum(inputs.block_ptr[pairs + 1] - inputs.block_ptr[pairs], out=local_ptr[1:])
        return pairs, local_ptr

    def _fill_pairs(self, pairs: Any, local_ptr: Any, blocks: tuple[Any, ...], indices_out: Any, data_out: Any) -> None:
        if self.backend == "torch":
            from hforge.ops.assemble.reference import fill_pairs_reference

            fill_pairs_reference(self.inputs, pairs, local_ptr, blocks, indices_out, data_out)
        elif self.backend == "numba":
            from hforge.ops.assemble.numba import fill_pairs_numba

            fill_pairs_numba(self.inputs, self.state, self.indptr, pairs, local_ptr, blocks, indices_out, data_out)
        else:
            from hforge.ops.assemble.cupy import fill_pairs_cupy

            fill_pairs_cupy(self.inputs, self.state, self.indptr, pairs, local_ptr, blocks, indices_out, data_out)


def _check_output(indices: Any, data: Any, nnz: int, n_matrices: int, dtype: Any, n_cols: int, xp: Any) -> None:
    if array_module(indices) is not xp or array_module(data) is not xp:
        raise InputError("assemble_csr: output buffers must live where the inputs do (numpy or cupy)")
    if indices.shape != (nnz,) or indices.dtype not in (np.int32, np.int64) or not indices.flags.c_contiguous:
        raise InputError(f"assemble_csr: indices_out must be C-contiguous int32/int64 of shape ({nnz},)")
    if indices.dtype == np.int32 and max(n_cols, nnz) > INT32_MAX:
        raise InputError(f"assemble_csr: {n_cols} columns or {nnz} nonzeros do not fit int32 indices")
    if data.shape != (nnz, n_matrices) or data.dtype != dtype or not data.flags.c_contiguous:
        raise InputError(f"assemble_csr: data_out must be C-contiguous {dtype} of shape ({nnz}, {n_matrices})")


def plan_csr_assembly(
    edge_index: Any,
    cell_shift: Any,
    block_ptr: Any,
    orbitals_per_atom: Any,
    *,
    nsc: Sequence[int] | None = None,
    mask: Any | None = None,
    atoms: tuple[int, int] | None = None,
    backend: str = "auto",
) -> AssemblyPlan:
    """Plan the CSR pattern of all rows, or of the rows of the atoms ``[atoms[0], atoms[1])``.

    Args:
        edge_index: ``(2, E)`` int64 pairs, canonical half plus onsite pairs (docs/design.md).
            For a row range, every canonical pair with an atom in the range must be present
            (others are ignored).
        cell_shift: ``(E, 3)`` int64 lattice translation ``n`` of each pair's column atom.
        block_ptr: ``(E + 1,)`` int64 offsets of the flat-packed blocks.
        orbitals_per_atom: ``(n_atoms,)`` orbital count of every atom (SIESTA order inside).
        nsc: supercells per lattice direction; default ``2 * max|n| + 1`` from the pairs.  Give
            the whole cell's value for a row range, or to match a file's nsc.
        mask: ``(block_ptr[-1],)`` bool, the block entries to store (a file's sparsity); None
            stores every entry (block-dense).
        atoms: ``(begin, end)`` row atoms; None for all.
        backend: ``"auto"``, ``"torch"`` (this op's reference: scipy's COO -> CSR on numpy
            arrays, no torch involved), ``"numba"`` or ``"cupy"`` (cupy arrays in, cupy out).

    Raises:
        InputError: invalid pairs or layout (see :func:`~hforge.ops.assemble.layout.check_assembly_inputs`),
            or a pair given twice.
        BackendUnavailableError: an explicit backend that cannot run here.
    """
    inputs = check_assembly_inputs(
        edge_index, cell_shift, block_ptr, orbitals_per_atom, nsc=nsc, mask=mask, atoms=atoms
    )
    on_gpu = array_module(inputs.edge_index) is not np
    name = resolve_backend(backend, on_gpu=on_gpu, implemented=_IMPLEMENTED, op="assemble_csr")
    if on_gpu != (name == "cupy"):
        raise InputError(f"assemble_csr: backend {name!r} needs {'cupy' if name == 'cupy' else 'numpy'} arrays")
    if name == "torch":
        from hforge.ops.assemble.reference import assemble_reference

        indptr, state = assemble_reference(inputs, ())[0], None
    elif name == "numba":
        from hforge.ops.assemble.numba import plan_numba

        indptr, state = plan_numba(inputs)
    else:
        from hforge.ops.assemble.cupy import plan_cupy

        indptr, state = plan_cupy(inputs)
    return AssemblyPlan(inputs=inputs, backend=name, indptr=indptr, state=state)


def assemble_csr(
    edge_index: Any,
    cell_shift: Any,
    block_ptr: Any,
    blocks: Sequence[Any] | Any,
    orbitals_per_atom: Any,
    *,
    nsc: Sequence[int] | None = None,
    mask: Any | None = None,
    index_dtype: Any | None = None,
    backend: str = "auto",
) -> AssembledCSR:
    """CSR of K matrices (e.g. H and S) from their blocks on the canonical half of the pairs.

    Args:
        edge_index, cell_shift, block_ptr, orbitals_per_atom, nsc, mask, backend: as in
            :func:`plan_csr_assembly`.
        blocks: K flat value arrays on ``block_ptr`` (a sequence or a ``(K, block_ptr[-1])``
            array), e.g. ``(H, S)`` with S last for :meth:`AssembledCSR.to_sisl`.
        index_dtype: column index dtype; default int32 when it fits (sisl's rule), else int64.

    Returns:
        The whole matrices; ``result.to_sisl(geometry)`` gives a ``sisl.Hamiltonian`` on the
        same buffers.

    Example:
        >>> csr = assemble_csr(edge_index, cell_shift, block_ptr, (h_blocks, s_blocks), n_orb)
        >>> H = csr.to_sisl(geometry)     # sisl.Hamiltonian, orthogonal=False, no copy
    """
    plan = plan_csr_assembly(
        edge_index, cell_shift, block_ptr, orbitals_per_atom, nsc=nsc, mask=mask, backend=backend
    )
    return plan.fill(blocks, index_dtype=index_dtype)
