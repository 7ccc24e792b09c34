"""Readable torch reference of the two-centre kernels (the oracle of the tests; runs on CPU and CUDA).

``program_blocks``: per pair type, gather the pairs, interpolate the type's tables at ``|R|``,
evaluate the real harmonics of ``R^`` and contract with the program's terms.
``separable_contract``: for every output pair, the projector atoms seen by both atoms (matched by
atom and lattice image), ``sum_k L(i, k) R(j, k)^T`` (``P diag(E_k) P^T`` for the KB part).
``separable_blocks``: the same sum in torch for a learned ``D_k`` per atom, differentiable in ``D``.
``pack_projections`` / ``operator_contract``: the packed layout of inference (every entry's rows in
reach order, padded) and the separable operator on it, unpacked and summed by ``separable_contract``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = [
    "operator_contract", "pack_projections", "program_block_sums", "program_blocks", "program_packed", "real_harmonics_torch",
    "separable_blocks", "separable_contract",
]

_CHUNK = 4096  # pairs per step of program_blocks (temporaries: chunk x terms of the pair type)


def real_harmonics_torch(lmax: int, vectors: torch.Tensor) -> torch.Tensor:
    """SIESTA's real harmonics up to ``lmax`` of ``vectors (E, 3)``: ``(E, (lmax+1)^2)``, the
    recursion of :func:`hforge.basis.conventions.real_harmonics`; a zero vector gives ``Y_00`` only."""
    norm = torch.linalg.norm(vectors, dim=1, keepdim=True)
    zero = norm[:, 0] == 0
    v = vectors / torch.where(norm == 0, torch.ones_like(norm), norm)
    x, y, z = v.unbind(1)
    out = vectors.new_zeros(len(vectors), (lmax + 1) ** 2)
    re, im = torch.ones_like(x), torch.zeros_like(x)
    for m in range(lmax + 1):
        p_prev = torch.zeros_like(z)
        p = torch.full_like(z, float(np.prod(np.arange(1, 2 * m, 2))))
        for l in range(m, lmax + 1):
            if l > m:
                p, p_prev = ((2 * l - 1) * z * p - (l + m - 1) * p_prev) / (l - m), p
            norm_lm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
            if m == 0:
                out[:, l * l + l] = norm_lm * p
            else:
                c = (-1) ** m * math.sqrt(2.0) * norm_lm * p
                out[:, l * l + l + m] = c * re
                out[:, l * l + l - m] = c * im
        re, im = re * x - im * y, re * y + im * x
    out[zero] = 0.0
    out[zero, 0] = 0.5 / math.sqrt(math.pi)
    return out


def _interpolate(tables: RadialTables, table: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite interpolation of ``tables[table[s]]`` at ``r (E,)``: ``(E, S)``."""
    values, reach = tables.tensors(r.device, r.dtype)
    reach = reach[table]
    x = r / tables.step
    k = torch.clamp(torch.floor(x).to(torch.int64), 0, values.shape[1] - 2)
    t = (x - k)[:, None]
    rows = values[table]  # (S, n_points, 2)
    f0, d0 = rows[:, k, 0].T, rows[:, k, 1].T * tables.step
    f1, d1 = rows[:, k + 1, 0].T, rows[:, k + 1, 1].T * tables.step
    out = (2 * t**3 - 3 * t**2 + 1) * f0 + (t**3 - 2 * t**2 + t) * d0 + (-2 * t**3 + 3 * t**2) * f1 + (t**3 - t**2) * d1
    return torch.where(r[:, None] < reach[None, :], out, torch.zeros_like(out))


def program_blocks(
    program: BlockProgram, tables: RadialTables, pair_type: torch.Tensor, vectors: torch.Tensor, block_ptr: torch.Tensor
) -> torch.Tensor:
    """Flat blocks of ``program`` for pairs of types ``pair_type (E,)`` at ``vectors (E, 3)`` (Bohr).

    Returns ``(block_ptr[-1],)`` in the dtype of ``vectors`` (float64 for exactness)."""
    out = vectors.new_zeros(int(block_ptr[-1]))
    r = torch.linalg.norm(vectors, dim=1)
    y = real_harmonics_torch(program.lmax, vectors)
    device = vectors.device
    for t in range(len(program.rows)):
        size = int(program.rows[t] * program.cols[t])
        of_type = torch.nonzero(pair_type == t).flatten()
        if len(of_type) == 0 or size == 0:
            continue
        slots = torch.as_tensor(program.slot_table[program.slot_ptr[t] : program.slot_ptr[t + 1]], device=device)
        e0, e1 = int(program.entry_ptr[t]), int(program.entry_ptr[t + 1])
        k0, k1 = int(program.term_ptr[e0]), int(program.term_ptr[e1])
        term_entry = torch.as_tensor(np.repeat(np.arange(e1 - e0), np.diff(program.term_ptr[e0 : e1 + 1])), device=device)
        term_slot = torch.as_tensor(program.term_slot[k0:k1], device=device)
        term_lm = torch.as_tensor(program.term_lm[k0:k1], device=device)
        coef = torch.as_tensor(program.term_coef[k0:k1], device=device, dtype=vectors.dtype)
        for pairs in torch.split(of_type, _CHUNK):  # bounded temporaries: (chunk, terms)
            radial = _interpolate(tables, slots, r[pairs])  # (P, S)
            contributions = coef * radial[:, term_slot] * y[pairs][:, term_lm]  # (P, terms)
            blocks = vectors.new_zeros(len(pairs), size).index_add_(1, term_entry, contributions)
            index = block_ptr[pairs][:, None] + torch.arange(size, device=device)
            out[index.flatten()] = blocks.flatten()
    return out


def program_block_sums(
    program: BlockProgram, tables: RadialTables, pair_type: torch.Tensor, vectors: torch.Tensor,
    segment_ptr: torch.Tensor, out_ptr: torch.Tensor,
) -> torch.Tensor:
    """``out[out_ptr[g]:out_ptr[g+1]] = sum`` of the blocks of the pairs ``segment_ptr[g]:segment_ptr[g+1]``
    (blocks of one segment share a shape), e.g. every neighbour's crystal-field block of one atom."""
    sizes = torch.as_tensor(program.block_size, device=vectors.device)[pair_type]
    block_ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
    blocks = program_blocks(program, tables, pair_type, vectors, block_ptr)
    segment_of_pair = torch.repeat_interleave(torch.arange(len(segment_ptr) - 1, device=vectors.device), torch.diff(segment_ptr))
    local = torch.arange(int(block_ptr[-1]), device=vectors.device) - torch.repeat_interleave(block_ptr[:-1], sizes)
    index = torch.repeat_interleave(out_ptr[segment_of_pair], sizes) + local
    return vectors.new_zeros(int(out_ptr[-1])).index_add_(0, index, blocks)


def separable_contract(
    pairs: np.ndarray,
    shifts: np.ndarray,
    proj_atoms: np.ndarray,
    proj_shifts: np.ndarray,
    proj_ptr: np.ndarray,
    proj_block_ptr: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    n_orb: np.ndarray,
    n_proj: np.ndarray,
    species: np.ndarray,
    block_ptr: np.ndarray,
    scale: np.ndarray | None = None,
    scale_ptr: np.ndarray | None = None,
) -> np.ndarray:
    """``V(i, j, n) = sum_{(k, m)} L(i; k, m) R(j; k, m - n)^T`` for output pairs ``(i, j, n)`` =
    ``pairs (2, E)``, ``shifts (E, 3)``.

    The projector entries of atom ``i`` are ``a in proj_ptr[i]:proj_ptr[i+1]``: projector atom
    ``proj_atoms[a]`` in image ``proj_shifts[a]`` (relative to ``i``'s home cell), with blocks
    ``left[proj_block_ptr[a]:proj_block_ptr[a+1]]`` and ``right[...]`` of shape
    ``(n_orb[s_i], n_proj[s_k])``: ``L = R = P`` (the projections ``<phi_i|chi_k>``) times
    ``diag(E_k)`` on the left for the Kleinman-Bylander part, ``L = P D_k`` for a separable
    operator with a matrix ``D_k`` per atom.  With ``scale`` (``(2, n_entries)``: hopping and
    onsite rows, entries of pair type ``t`` at ``scale_ptr[t]:``) every block entry is multiplied
    by its coefficient.  Returns the flat blocks on ``block_ptr`` (float64)."""
    out = np.zeros(int(block_ptr[-1]))
    lookup = {}
    for i in range(len(proj_ptr) - 1):
        for a in range(proj_ptr[i], proj_ptr[i + 1]):
            lookup[(i, int(proj_atoms[a]), *map(int, proj_shifts[a]))] = a

    def block(values: np.ndarray, a: int, rows: int, cols: int) -> np.ndarray:
        return values[proj_block_ptr[a] : proj_block_ptr[a + 1]].reshape(rows, cols)

    for e, (i, j) in enumerate(pairs.T):
        si, sj = species[i], species[j]
        acc = np.zeros((n_orb[si], n_orb[sj]))
        for a in range(proj_ptr[i], proj_ptr[i + 1]):
            k = int(proj_atoms[a])
            b = lookup.get((int(j), k, *map(int, proj_shifts[a] - shifts[e])))
            if b is None:
                continue
            sk = species[k]
            acc += block(left, a, n_orb[si], n_proj[sk]) @ block(right, b, n_orb[sj], n_proj[sk]).T
        if scale is not None:
            onsite = int(i == j and not shifts[e].any())
            t = si * len(n_orb) + sj
            acc *= scale[onsite, scale_ptr[t] : scale_ptr[t] + acc.size].reshape(acc.shape)
        out[block_ptr[e] : block_ptr[e + 1]] = acc.reshape(-1)
    return out


def separable_blocks(
    matches: torch.Tensor,
    projections: torch.Tensor,
    operators: torch.Tensor,
    proj_atoms: torch.Tensor,
    entry_rows: torch.Tensor,
    pair_rows: torch.Tensor,
    pair_cols: torch.Tensor,
    block_ptr: torch.Tensor,
) -> torch.Tensor:
    """Differentiable blocks of the separable operator ``sum_k P(i, k) D_k P(j, k)^T`` (one shared
    projector set: ``n_p`` functions on every atom).

    Args:
        matches: ``(3, T)`` int64 ``(e, a, b)``: output pair ``e`` gets ``P_a D_{k_a} P_b^T``
            (:func:`hforge.ops.two_centre.numba.separable_matches`).
        projections: ``(A, n_max, n_p)`` projections of every projector entry, rows beyond the
            entry's ``entry_rows[a]`` orbitals zero.
        operators: ``(N, n_p, n_p)`` symmetric ``D_k`` of every atom (eV); gradients flow here.
        proj_atoms: ``(A,)`` projector atom of every entry.
        entry_rows: ``(A,)`` orbitals of every entry's orbital atom.
        pair_rows, pair_cols: ``(E,)`` orbitals of the row and column atom of every output pair.
        block_ptr: ``(E + 1,)`` flat offsets of the output blocks (row-major ``rows x cols``).

    Returns:
        ``(block_ptr[-1],)`` flat blocks in the dtype of ``operators``.
    """
    e, a, b = matches
    P = projections.to(operators.dtype)
    left = torch.bmm(P, operators[proj_atoms])  # (A, n_max, n_p): P_a D_k once per entry
    terms = torch.bmm(left[a], P[b].transpose(1, 2))  # (T, n_max, n_max)
    n_max = P.shape[1]
    summed = terms.new_zeros(len(pair_rows), n_max, n_max).index_add_(0, e, terms)
    u = torch.arange(n_max, device=P.device)
    keep = (u[None, :, None] < pair_rows[:, None, None]) & (u[None, None, :] < pair_cols[:, None, None])
    return summed[keep.expand_as(summed)] if int(block_ptr[-1]) else summed.new_zeros(0)


def program_packed(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, entry_species: np.ndarray,
    rank: np.ndarray, col0: int, entry_row: np.ndarray, entry_rows: np.ndarray, out: np.ndarray,
) -> None:
    """The blocks of ``program`` for the entries ``(pair_type, vectors)`` (Bohr) into the packed rows of
    ``out`` (:func:`pack_projections`' layout; ``rank[s, orbital]`` an orbital's row in reach order, its
    inverse ``order``): :func:`program_blocks`, then :func:`pack_projections`."""
    ptr = np.zeros(len(pair_type) + 1, dtype=np.int64)
    np.cumsum(program.block_size[pair_type], out=ptr[1:])
    blocks = program_blocks(program, tables, torch.from_numpy(pair_type), torch.from_numpy(vectors), torch.from_numpy(ptr))
    order = np.full((rank.shape[0], rank.shape[1] + rank.shape[1] % 2), -1, dtype=np.int64)
    for s in range(rank.shape[0]):
        for orbital, row in enumerate(rank[s]):
            if row >= 0:
                order[s, row] = orbital
    pack_projections(blocks.numpy(), ptr, program.cols[pair_type], col0, entry_species, order, entry_row, entry_rows, out)


def pack_projections(
    values: np.ndarray, value_ptr: np.ndarray, n_cols: np.ndarray, col0: int, entry_species: np.ndarray,
    order: np.ndarray, entry_row: np.ndarray, entry_rows: np.ndarray, out: np.ndarray,
) -> None:
    """Write projection blocks into the packed layout: entry ``a``'s flat block
    ``values[value_ptr[a]:value_ptr[a+1]]`` (rows: the orbitals of its atom, species
    ``entry_species[a]``; ``n_cols[a]`` columns) goes to ``out[entry_row[a] + r, col0:col0 + n_cols[a]]``
    for its rows ``r < entry_rows[a]`` in reach order, row ``r`` holding orbital ``order[s, r]``
    (``-1``: a padding row, left as it is)."""
    for a in range(len(value_ptr) - 1):
        block = values[value_ptr[a] : value_ptr[a + 1]].reshape(-1, n_cols[a])
        for r in range(entry_rows[a]):
            orbital = order[entry_species[a], r]
            if orbital >= 0:
                out[entry_row[a] + r, col0 : col0 + n_cols[a]] = block[orbital]


def operator_contract(
    pairs: np.ndarray, shifts: np.ndarray, swap: np.ndarray, species: np.ndarray, proj_atoms: np.ndarray,
    proj_shifts: np.ndarray, proj_ptr: np.ndarray, entry_row: np.ndarray, entry_rows: np.ndarray, entry_cols: np.ndarray,
    packed: np.ndarray, operators: np.ndarray, energies: np.ndarray, order: np.ndarray, n_orb: np.ndarray,
    block_ptr: np.ndarray,
) -> np.ndarray:
    """``O(i, j, n) = sum_{(k, m)} P(i; k, m) D'_k P(j; k, m - n)^T`` from packed projections (float64).

    ``packed`` rows ``entry_row[a]:entry_row[a] + entry_rows[a]`` hold entry ``a``'s projections
    ``P(i; k, m)`` in reach order (:func:`pack_projections`; ``order[s, r]`` the orbital of row ``r``);
    its first ``n_op = operators.shape[1]`` columns are the functions of ``D_k = operators[k]``, the
    others (if any) more projectors of atom ``k`` with the diagonal ``energies[s_k]`` (e.g. the
    Kleinman-Bylander ones): ``D'_k = blockdiag(D_k, diag(energies[s_k]))``; an entry's values beyond
    its ``entry_cols`` columns are zero (kernels may skip them).  Every entry is unpacked to its block
    in the orbitals' order and summed by :func:`separable_contract`; ``swap`` (which atom a kernel
    starts from) does not change the value.  Returns the flat blocks on ``block_ptr``."""
    del swap
    if any(np.any(packed[entry_row[a] : entry_row[a] + entry_rows[a], entry_cols[a] :]) for a in range(len(entry_row))):
        raise ValueError("operator_contract: nonzero packed values beyond an entry's entry_cols")
    width, n_op = packed.shape[1], operators.shape[1]
    atom_of = np.repeat(np.arange(len(proj_ptr) - 1), np.diff(proj_ptr))
    entry_species = species[atom_of]
    rows_of = n_orb[entry_species]
    block_of = np.zeros(len(atom_of) + 1, dtype=np.int64)
    np.cumsum(rows_of * width, out=block_of[1:])
    right = np.zeros(int(block_of[-1]))
    left = np.zeros(int(block_of[-1]))
    for a in range(len(atom_of)):
        block = np.zeros((rows_of[a], width))
        for r in range(entry_rows[a]):
            orbital = order[entry_species[a], r]
            if orbital >= 0:
                block[orbital] = packed[entry_row[a] + r]
        k = proj_atoms[a]
        weighed = np.concatenate([block[:, :n_op] @ operators[k], block[:, n_op:] * energies[species[k]]], axis=1)
        right[block_of[a] : block_of[a + 1]] = block.reshape(-1)
        left[block_of[a] : block_of[a + 1]] = weighed.reshape(-1)
    n_proj = np.full(len(n_orb), width, dtype=np.int64)
    return separable_contract(
        pairs, shifts, proj_atoms, proj_shifts, proj_ptr, block_of, left, right, n_orb, n_proj, species, block_ptr
    )
