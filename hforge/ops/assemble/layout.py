"""Checked inputs of the CSR assembly, shared by every backend.

:class:`AssemblyInputs` holds the validated pair list, block layout and supercell description
as arrays of one array library (numpy for the CPU backends, cupy for the GPU one).  Building it
costs O(E + n_atoms) vectorised work; the backends trust it.

Supercell numbering is sisl's: the image of shift ``n`` is ``Lattice(nsc=nsc).sc_index(n)``
(``sc_off`` order).  Kernels read it from :attr:`AssemblyInputs.sc_lookup`, the flattened
``Lattice.isc_off`` table indexed by ``((n0 mod nsc0) * nsc1 + n1 mod nsc1) * nsc2 + n2 mod nsc2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hforge.errors import InputError
from hforge.io.pairs import is_canonical

__all__ = [
    "AssemblyInputs",
    "INT32_MAX",
    "array_module",
    "check_assembly_inputs",
    "check_blocks",
    "default_index_dtype",
    "is_canonical",
    "offsets",
    "supercell_lookup",
]

INT32_MAX = int(np.iinfo(np.int32).max)


def array_module(array: Any) -> Any:
    """``cupy`` for cupy arrays, else ``numpy``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def offsets(counts: Any) -> Any:
    """``(n + 1,)`` int64 ``[0, c_0, c_0 + c_1, ...]`` of ``(n,)`` counts (a row pointer from row
    counts, orbital offsets from orbital counts): the array library's cumsum, numpy or cupy."""
    xp = array_module(counts)
    out = xp.zeros(counts.shape[0] + 1, dtype=xp.int64)
    xp.cumsum(counts, out=out[1:])
    return out


def supercell_lookup(nsc: Sequence[int]) -> np.ndarray:
    """sisl's supercell index of every shift, flattened: ``(prod(nsc),)`` int64 (see module docstring)."""
    import sisl

    return np.ascontiguousarray(sisl.Lattice(np.eye(3), nsc=list(nsc)).isc_off.reshape(-1), dtype=np.int64)


def default_index_dtype(n_cols: int, nnz: int) -> np.dtype:
    """sisl's rule for ``ptr``/``col``: int32 when both the column count and nnz fit, else int64."""
    return np.dtype(np.int32) if max(n_cols, nnz) <= INT32_MAX else np.dtype(np.int64)


@dataclass(frozen=True, eq=False)
class AssemblyInputs:
    """A validated assembly problem (all arrays C-contiguous, of one array library).

    Attributes:
        edge_index: ``(2, E)`` int64, canonical half of the pairs plus onsite pairs.
        cell_shift: ``(E, 3)`` int64 lattice translations ``n`` of the column atoms.
        block_ptr: ``(E + 1,)`` int64 offsets of the flat-packed blocks.
        orbitals_per_atom: ``(n_atoms,)`` int64.
        orbital_offset: ``(n_atoms + 1,)`` int64, first orbital of every atom.
        nsc: supercells per lattice direction (odd).
        sc_lookup: ``(prod(nsc),)`` int64, sisl's supercell index (see module docstring).
        mask: ``(block_ptr[-1],)`` bool entries to store, or None to store every entry.
        atom_begin, atom_end: the row atoms assembled, ``[atom_begin, atom_end)``.
    """

    edge_index: Any
    cell_shift: Any
    block_ptr: Any
    orbitals_per_atom: Any
    orbital_offset: Any
    nsc: tuple[int, int, int]
    sc_lookup: Any
    mask: Any | None
    atom_begin: int
    atom_end: int

    @property
    def n_pairs(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def n_atoms(self) -> int:
        return int(self.orbitals_per_atom.shape[0])

    @property
    def n_orbitals(self) -> int:
        return int(self.orbital_offset[-1])

    @property
    def n_supercells(self) -> int:
        return int(np.prod(self.nsc))

    @property
    def n_values(self) -> int:
        return int(self.block_ptr[-1])

    @property
    def max_orbitals(self) -> int:
        return int(self.orbitals_per_atom.max()) if self.n_atoms else 0

    @property
    def row_begin(self) -> int:
        """First orbital row of the range."""
        return int(self.orbital_offset[self.atom_begin])

    @property
    def n_rows(self) -> int:
        return int(self.orbital_offset[self.atom_end]) - self.row_begin

    @property
    def n_cols(self) -> int:
        return self.n_orbitals * self.n_supercells


def _int_array(xp: Any, array: Any, name: str, ndim: int) -> Any:
    array = xp.asarray(array)
    if array.dtype.kind not in "iu":
        raise InputError(f"assemble_csr: {name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise InputError(f"assemble_csr: {name} must be {ndim}-D, got shape {array.shape}")
    return xp.ascontiguousarray(array, dtype=xp.int64)


def _check_canonical(xp: Any, edge_index: Any, cell_shift: Any) -> None:
    bad = ~is_canonical(edge_index, cell_shift)
    if bool(bad.any()):
        i, j = edge_index
        e = int(xp.argmax(bad))
        raise InputError(
            f"assemble_csr: {int(bad.sum())} pair(s) outside the canonical half, first pair {e}: "
            f"(i={int(i[e])}, j={int(j[e])}, n={cell_shift[e].tolist()}); keep i < j, or i == j with n "
            "lexicographically positive (the partner (j, i, -n) is written from the transpose)"
        )


def _choose_nsc(xp: Any, cell_shift: Any, nsc: Sequence[int] | None) -> tuple[int, int, int]:
    reach = xp.abs(cell_shift).max(axis=0).tolist() if cell_shift.shape[0] else [0, 0, 0]
    if nsc is None:
        return tuple(2 * int(r) + 1 for r in reach)
    nsc = tuple(int(n) for n in nsc)
    if len(nsc) != 3 or any(n < 1 or n % 2 == 0 for n in nsc):
        raise InputError(f"assemble_csr: nsc must be 3 odd positive integers, got {nsc}")
    if any(int(r) > n // 2 for r, n in zip(reach, nsc)):
        raise InputError(f"assemble_csr: cell shifts reach {reach} cells, beyond nsc={list(nsc)}")
    return nsc


def check_assembly_inputs(
    edge_index: Any,
    cell_shift: Any,
    block_ptr: Any,
    orbitals_per_atom: Any,
    *,
    nsc: Sequence[int] | None,
    mask: Any | None,
    atoms: tuple[int, int] | None,
) -> AssemblyInputs:
    """Validate and normalise the arguments of :func:`hforge.ops.assemble.assemble_csr`.

    Raises:
        InputError: wrong shapes or dtypes, atom indices out of range, pairs outside the
            canonical half, block sizes that disagree with the orbital counts, shifts beyond
            ``nsc``, or an atom range outside the structure.
    """
    xp = array_module(edge_index)
    edge_index = _int_array(xp, edge_index, "edge_index", 2)
    cell_shift = _int_array(xp, cell_shift, "cell_shift", 2)
    orbitals_per_atom = _int_array(xp, orbitals_per_atom, "orbitals_per_atom", 1)
    block_ptr = _int_array(xp, block_ptr, "block_ptr", 1)
    n_pairs, n_atoms = edge_index.shape[1], orbitals_per_atom.shape[0]
    if edge_index.shape[0] != 2 or cell_shift.shape != (n_pairs, 3) or block_ptr.shape != (n_pairs + 1,):
        raise InputError(
            f"assemble_csr: expected edge_index (2, E), cell_shift (E, 3), block_ptr (E + 1,); got "
            f"{edge_index.shape}, {cell_shift.shape}, {block_ptr.shape}"
        )
    if n_atoms and bool((orbitals_per_atom < 0).any()):
        raise InputError("assemble_csr: orbitals_per_atom must be non-negative")
    if n_pairs and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n_atoms):
        raise InputError(f"assemble_csr: edge_index holds atoms outside [0, {n_atoms})")
    _check_canonical(xp, edge_index, cell_shift)
    sizes = orbitals_per_atom[edge_index[0]] * orbitals_per_atom[edge_index[1]]
    if int(block_ptr[0]) != 0 or bool((xp.diff(block_ptr) != sizes).any()):
        raise InputError("assemble_csr: block_ptr must start at 0 and step by n_orb[i] * n_orb[j] per pair")
    nsc = _choose_nsc(xp, cell_shift, nsc)
    atom_begin, atom_end = (0, n_atoms) if atoms is None else (int(atoms[0]), int(atoms[1]))
    if not 0 <= atom_begin <= atom_end <= n_atoms:
        raise InputError(f"assemble_csr: atom range {atoms} outside [0, {n_atoms}]")
    if mask is not None:
        mask = xp.ascontiguousarray(xp.asarray(mask))
        if mask.dtype != xp.bool_ or mask.shape != (int(block_ptr[-1]),):
            raise InputError(
                f"assemble_csr: mask must be bool of shape ({int(block_ptr[-1])},), got {mask.dtype} {mask.shape}"
            )
    orbital_offset = offsets(orbitals_per_atom)
    return AssemblyInputs(
        edge_index=edge_index,
        cell_shift=cell_shift,
        block_ptr=block_ptr,
        orbitals_per_atom=orbitals_per_atom,
        orbital_offset=orbital_offset,
        nsc=nsc,
        sc_lookup=xp.asarray(supercell_lookup(nsc)),
        mask=mask,
        atom_begin=atom_begin,
        atom_end=atom_end,
    )


def check_blocks(inputs: AssemblyInputs, blocks: Any, *, n_values: int | None = None) -> tuple[Any, ...]:
    """The K value arrays as a tuple of C-contiguous 1-D arrays of one floating dtype.

    Args:
        blocks: a sequence of K arrays of shape ``(n_values,)``, or one ``(K, n_values)`` array.
        n_values: values per array; default ``block_ptr[-1]`` (every planned pair).
    """
    xp = array_module(inputs.edge_index)
    n_values = inputs.n_values if n_values is None else n_values
    arrays = [xp.asarray(b) for b in blocks]
    if not arrays:
        raise InputError("assemble_csr: blocks must hold at least one matrix (e.g. H and S)")
    dtype = np.result_type(*(a.dtype for a in arrays))
    if dtype.kind not in "fc":
        raise InputError(f"assemble_csr: blocks must be floating point, got {dtype}")
    for k, a in enumerate(arrays):
        if a.shape != (n_values,):
            raise InputError(f"assemble_csr: blocks[{k}] has shape {a.shape}, expected ({n_values},)")
    return tuple(xp.ascontiguousarray(a, dtype=dtype) for a in arrays)
