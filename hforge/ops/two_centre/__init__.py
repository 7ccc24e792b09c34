r"""Exact two-centre integrals of a SIESTA basis: the overlap S and a physical baseline H0.

S is not learned: it is a two-centre integral of the basis' radial functions, and so are the
kinetic matrix T, the projections of the orbitals on the Kleinman-Bylander projectors and the
two-centre terms of the neutral-atom potential.  :mod:`.tables` holds the method (SIESTA's
``matel``: radial Fourier-Bessel transforms, real Gaunt coefficients), :mod:`.descriptor` the
tables and programs of a basis (built once, cached), the backends only execute programs:

``torch``  :mod:`.reference` (readable; CPU and CUDA tensors), the oracle of the tests;
``numba``  :mod:`.numba` (parallel CPU);
``cpp``    :mod:`.cpp` (compiled, SIMD; the inference hot spots: :func:`program_blocks`,
           :func:`program_packed`, :func:`operator_contract`).

Public functions (lengths in Å, results in SIESTA's convention: S dimensionless, energies eV):

:func:`overlap_blocks`   S blocks of atom pairs ``(i, j, n)``; positive definite by construction.
:func:`baseline_blocks`  H0, a weighted sum of T, V_KB, the two-centre neutral-atom terms
                         (``<i|V_i + V_j|j>`` for pairs, ``<i|V_i|i'>`` plus the crystal field
                         ``sum_k <i|V_k|i'>`` for onsite blocks) and S: every part of SIESTA's
                         H that is exactly a sum of two-centre integrals, with one coefficient
                         per part and block type (fitted to training data by the models,
                         ``ModelConfig.baseline``); what is left (the three-centre V_NA terms,
                         the Hartree and exchange-correlation potentials of the SCF density)
                         is what a model learns on top.

Conventions: pair ``(i, j, n)`` has ``R = positions[j] + n @ cell - positions[i]`` (Å, converted
to Bohr as sisl reads SIESTA files, :data:`hforge.basis.radial.BOHR_TO_ANG`); blocks are flat-packed
row-major in SIESTA's orbital order on a ``block_ptr`` (docs/design.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.basis.radial import ANG_TO_BOHR
from hforge.errors import InputError
from hforge.ops.backends import resolve_backend
from hforge.ops.two_centre.descriptor import PROGRAMS, TwoCentreDescriptor, two_centre_descriptor
from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = [
    "BaselineContext",
    "program_block_sums",
    "PROGRAMS",
    "TwoCentreDescriptor",
    "two_centre_descriptor",
    "program_blocks",
    "separable_contract",
    "operator_contract",
    "pack_projections",
    "program_packed",
    "overlap_blocks",
    "baseline_blocks",
    "baseline_parts",
    "plain_coefficients",
    "operator_coefficients",
    "BASELINE_PARTS",
    "kb_blocks",
    "block_pointer",
]

_IMPLEMENTED = ("numba", "torch")
_IMPLEMENTED_COMPILED = ("cpp", "numba", "torch")


def block_pointer(program: BlockProgram, pair_type: np.ndarray) -> np.ndarray:
    """``(E + 1,)`` int64 offsets of the flat blocks of pairs of types ``pair_type``."""
    ptr = np.zeros(len(pair_type) + 1, dtype=np.int64)
    np.cumsum(program.block_size[pair_type], out=ptr[1:])
    return ptr


def program_blocks(
    program: BlockProgram,
    tables: RadialTables,
    pair_type: np.ndarray,
    vectors: np.ndarray,
    block_ptr: np.ndarray | None = None,
    *,
    backend: str = "auto",
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """Flat float64 blocks of ``program`` for pairs of types ``pair_type (E,)`` at ``vectors (E, 3)`` (Bohr).

    ``out``: a float64 buffer of ``block_ptr[-1]`` values to write into (cpp, numba; no copy), or with
    ``accumulate`` to add to.

    Raises:
        InputError: pair types outside the program, a ``block_ptr`` of other block sizes.
    """
    pair_type = np.asarray(pair_type, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    n_types = len(program.rows)
    if len(pair_type) != len(vectors):
        raise InputError(f"{len(pair_type)} pair types for {len(vectors)} vectors")
    if len(pair_type) and (pair_type.min() < 0 or pair_type.max() >= n_types):
        raise InputError(f"pair types outside 0..{n_types - 1} of the two-centre program {program.name!r}")
    expected = block_pointer(program, pair_type)
    if block_ptr is None:
        block_ptr = expected
    elif not np.array_equal(np.asarray(block_ptr), expected):
        raise InputError(f"block_ptr does not match the block sizes of program {program.name!r}")
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED_COMPILED, op="two_centre")
    if name == "cpp":
        from hforge.ops.two_centre import cpp as compiled

        return compiled.program_blocks(program, tables, pair_type, vectors, block_ptr, out=out, accumulate=accumulate)
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.program_blocks(program, tables, pair_type, vectors, block_ptr, out=out, accumulate=accumulate)
    from hforge.ops.two_centre import reference

    result = reference.program_blocks(
        program, tables, torch.from_numpy(pair_type), torch.from_numpy(vectors), torch.from_numpy(block_ptr)
    ).numpy()
    return _into(out, result, accumulate)


def _into(out: np.ndarray | None, result: np.ndarray, accumulate: bool) -> np.ndarray:
    """``result`` written into (or added to) ``out`` when one is given: what the numba kernels do in place."""
    if out is None:
        return result
    if accumulate:
        out += result
    else:
        out[:] = result
    return out


def program_block_sums(
    program: BlockProgram,
    tables: RadialTables,
    pair_type: np.ndarray,
    vectors: np.ndarray,
    segment_ptr: np.ndarray,
    out_ptr: np.ndarray,
    *,
    backend: str = "auto",
) -> np.ndarray:
    """Sums of the blocks of consecutive pairs (segment ``g``: pairs ``segment_ptr[g]:segment_ptr[g+1]``,
    blocks of one shape) into ``out[out_ptr[g]:out_ptr[g+1]]``, float64 (e.g. the crystal field of an
    atom: the blocks of all its neighbours' potentials)."""
    pair_type = np.asarray(pair_type, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    segment_ptr, out_ptr = np.asarray(segment_ptr, dtype=np.int64), np.asarray(out_ptr, dtype=np.int64)
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED, op="two_centre")
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.program_block_sums(program, tables, pair_type, vectors, segment_ptr, out_ptr)
    from hforge.ops.two_centre import reference

    return reference.program_block_sums(
        program, tables, torch.from_numpy(pair_type), torch.from_numpy(vectors), torch.from_numpy(segment_ptr),
        torch.from_numpy(out_ptr),
    ).numpy()


def separable_contract(*args: Any, backend: str = "auto", **kwargs: Any) -> np.ndarray:
    """``sum_k L(i, k) R(j, k)^T`` per output pair (arguments of
    :func:`hforge.ops.two_centre.reference.separable_contract`): the Kleinman-Bylander part
    (``L = P diag(E_k)``, ``R = P``) and learned separable operators (``L = P D_k``)."""
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED, op="two_centre")
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.separable_contract(*args, **kwargs)
    from hforge.ops.two_centre import reference

    out, accumulate = kwargs.pop("out", None), kwargs.pop("accumulate", False)
    return _into(out, reference.separable_contract(*args, **kwargs), accumulate)


def operator_contract(*args: Any, backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
    """The separable operator ``sum_k P D'_k P^T`` on packed projections (arguments of
    :func:`hforge.ops.two_centre.reference.operator_contract`), in the dtype of ``packed`` (cpp, numba;
    float64 for the reference), written into ``out`` when given."""
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED_COMPILED, op="two_centre")
    if name == "cpp":
        from hforge.ops.two_centre import cpp as compiled

        return compiled.operator_contract(*args, out=out)
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.operator_contract(*args, out=out)
    from hforge.ops.two_centre import reference

    return _into(out, reference.operator_contract(*args), False)


def program_packed(*args: Any, backend: str = "auto") -> None:
    """Blocks of a program straight into the packed layout of :func:`operator_contract`, only the rows
    each entry keeps (arguments of :func:`hforge.ops.two_centre.reference.program_packed`)."""
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED_COMPILED, op="two_centre")
    if name == "cpp":
        from hforge.ops.two_centre import cpp as compiled

        compiled.program_packed(*args)
        return
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        kernels.program_packed(*args)
        return
    from hforge.ops.two_centre import reference

    reference.program_packed(*args)


def pack_projections(*args: Any, backend: str = "auto") -> None:
    """Projection blocks into the packed layout of :func:`operator_contract` (arguments of
    :func:`hforge.ops.two_centre.reference.pack_projections`)."""
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED, op="two_centre")
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        kernels.pack_projections(*args)
        return
    from hforge.ops.two_centre import reference

    reference.pack_projections(*args)


def _pair_vectors(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, cell_shift: np.ndarray) -> np.ndarray:
    i, j = edge_index
    return (positions[j] + cell_shift @ cell - positions[i]) * ANG_TO_BOHR


def overlap_blocks(
    basis: BasisSet,
    species: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    *,
    block_ptr: np.ndarray | None = None,
    backend: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Exact S blocks of the pairs ``(i, j, n)`` (flat float64 on ``block_ptr``, SIESTA's orbital order).

    Args:
        basis: a basis with radial tables (read from ion files).
        species: ``(N,)`` species index of every atom into ``basis``.
        positions, cell: Å (cell rows are lattice vectors).
        edge_index, cell_shift: ``(2, E)`` and ``(E, 3)`` int64 pairs (onsite pairs are ``(i, i, 0)``).

    Raises:
        BasisMismatchError: a species without radial tables.
    """
    desc = two_centre_descriptor(basis)
    species = np.asarray(species, dtype=np.int64)
    pair_type = species[edge_index[0]] * len(basis) + species[edge_index[1]]
    vectors = _pair_vectors(np.asarray(positions, dtype=np.float64), np.asarray(cell, dtype=np.float64), edge_index, cell_shift)
    return program_blocks(desc.program("overlap"), desc.tables, pair_type, vectors, block_ptr, backend=backend, out=out)


# the baseline H0 (kept last: it builds on the functions above)
from hforge.ops.two_centre.baseline import (  # noqa: E402
    BASELINE_PARTS,
    BaselineContext,
    baseline_blocks,
    baseline_parts,
    kb_blocks,
    operator_coefficients,
    plain_coefficients,
)
