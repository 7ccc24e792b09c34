"""Parallel CPU kernels of the two-centre ops (numba, float64).

``program_blocks``: parallel over pairs; per pair the real harmonics of ``R^`` (the Cartesian
recursion of :func:`hforge.basis.conventions.real_harmonics`), the cubic Hermite interpolation
of the pair type's slots at ``|R|``, then every block entry as the sum of its terms, written
straight into the flat output.  Per-thread scratch only (harmonics and slot values).

``separable_contract``: parallel over output pairs ``(i, j, n)``; the projector atoms of ``i`` and
of ``j`` are sorted by ``(atom, image)``, so every common projector atom ``(k, m)`` of ``i`` and
``(k, m - n)`` of ``j`` is found by a merge of the two sorted lists; the block accumulates
``L(i, k) R(j, k)^T`` (``L = P diag(E_k)``, ``R = P`` for the Kleinman-Bylander part;
``L = P D_k`` for a learned separable operator).  ``separable_matches`` lists the same matches.
"""

from __future__ import annotations

import math

import numpy as np

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = [
    "operator_contract", "pack_projections", "program_block_sums", "program_blocks", "program_packed", "separable_contract",
    "separable_matches",
]

_FASTMATH = {"reassoc", "contract", "nsz"}


def _n_chunks(n_items: int) -> int:
    return max(1, min(n_items, 64 * numba.get_num_threads()))


@numba.njit(cache=True)
def _legendre_norms(lmax):  # pragma: no cover
    """``N_lm`` (times ``sqrt(2) (-1)^m`` for ``m > 0``) and ``(2m-1)!!`` of the recursion."""
    norms = np.zeros((lmax + 1, lmax + 1))
    dfact = np.ones(lmax + 1)
    for m in range(1, lmax + 1):
        dfact[m] = dfact[m - 1] * (2 * m - 1)
    for l in range(lmax + 1):
        for m in range(l + 1):
            ratio = 1.0
            for q in range(l - m + 1, l + m + 1):
                ratio /= q
            c = math.sqrt((2 * l + 1) / (4 * math.pi) * ratio)
            norms[l, m] = c if m == 0 else c * math.sqrt(2.0) * (-1.0) ** m
    return norms, dfact


@numba.njit(inline="always")
def _harmonics(x, y, z, lmax, norms, dfact, out):  # pragma: no cover
    """SIESTA's real harmonics up to ``lmax`` of the unit vector ``(x, y, z)`` into ``out``."""
    re, im = 1.0, 0.0
    for m in range(lmax + 1):
        p_prev, p = 0.0, dfact[m]
        for l in range(m, lmax + 1):
            if l > m:
                p, p_prev = ((2 * l - 1) * z * p - (l + m - 1) * p_prev) / (l - m), p
            c = norms[l, m] * p
            if m == 0:
                out[l * l + l] = c
            else:
                out[l * l + l + m] = c * re
                out[l * l + l - m] = c * im
        re, im = re * x - im * y, re * y + im * x


@numba.njit(inline="always")
def _pair_terms(
    t, vx, vy, vz, lmax, norms, dfact, slot_ptr, slot_table, values, reach, step, y, radial,
):  # pragma: no cover
    """The harmonics ``y`` of ``R^`` and the slot values ``radial`` at ``|R|`` of a pair of type ``t``
    at ``(vx, vy, vz)`` (Bohr): what every entry of its block sums over (both are scratch)."""
    r = math.sqrt(vx * vx + vy * vy + vz * vz)
    if r > 0.0:
        _harmonics(vx / r, vy / r, vz / r, lmax, norms, dfact, y)
    else:
        y[:] = 0.0
        y[0] = 0.5 / math.sqrt(math.pi)
    x = r / step
    k = min(int(x), values.shape[1] - 2)
    u = x - k
    h00 = (2.0 * u - 3.0) * u * u + 1.0
    h10 = ((u - 2.0) * u + 1.0) * u * step
    h01 = (3.0 - 2.0 * u) * u * u
    h11 = (u - 1.0) * u * u * step
    s0 = slot_ptr[t]
    for s in range(slot_ptr[t + 1] - s0):
        table = slot_table[s0 + s]
        if r < reach[table]:
            radial[s] = (
                h00 * values[table, k, 0] + h10 * values[table, k, 1] + h01 * values[table, k + 1, 0]
                + h11 * values[table, k + 1, 1]
            )
        else:
            radial[s] = 0.0


@numba.njit(inline="always")
def _entry(e, term_ptr, term_slot, term_lm, term_coef, y, radial):  # pragma: no cover
    """Block entry ``e`` (flat, ``entry_ptr`` layout): the sum of its terms."""
    acc = 0.0
    for term in range(term_ptr[e], term_ptr[e + 1]):
        acc += term_coef[term] * radial[term_slot[term]] * y[term_lm[term]]
    return acc


@numba.njit(inline="always")
def _pair_block(
    t, vx, vy, vz, lmax, norms, dfact, slot_ptr, slot_table, entry_ptr, term_ptr, term_slot, term_lm, term_coef,
    values, reach, step, y, radial, out, base, accumulate,
):  # pragma: no cover
    """The block of one pair of type ``t`` at ``(vx, vy, vz)`` (Bohr) into ``out[base:]`` (added when
    ``accumulate``); ``y`` and ``radial`` are scratch."""
    _pair_terms(t, vx, vy, vz, lmax, norms, dfact, slot_ptr, slot_table, values, reach, step, y, radial)
    e0 = entry_ptr[t]
    for q in range(entry_ptr[t + 1] - e0):
        acc = _entry(e0 + q, term_ptr, term_slot, term_lm, term_coef, y, radial)
        if accumulate:
            out[base + q] += acc
        else:
            out[base + q] = acc


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _program_blocks(
    pair_type, vectors, block_ptr, lmax, slot_ptr, slot_table, entry_ptr, term_ptr, term_slot, term_lm, term_coef,
    values, reach, step, max_slots, accumulate, n_chunks, out,
):  # pragma: no cover
    n_pairs = pair_type.shape[0]
    norms, dfact = _legendre_norms(lmax)
    for chunk in numba.prange(n_chunks):
        y = np.zeros((lmax + 1) ** 2)
        radial = np.zeros(max(max_slots, 1))
        for e in range(chunk * n_pairs // n_chunks, (chunk + 1) * n_pairs // n_chunks):
            _pair_block(
                pair_type[e], vectors[e, 0], vectors[e, 1], vectors[e, 2], lmax, norms, dfact, slot_ptr, slot_table,
                entry_ptr, term_ptr, term_slot, term_lm, term_coef, values, reach, step, y, radial, out, block_ptr[e],
                accumulate,
            )


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _program_block_sums(
    pair_type, vectors, segment_ptr, out_ptr, lmax, slot_ptr, slot_table, entry_ptr, term_ptr, term_slot, term_lm,
    term_coef, values, reach, step, max_slots, n_chunks, out,
):  # pragma: no cover
    n_segments = segment_ptr.shape[0] - 1
    norms, dfact = _legendre_norms(lmax)
    for chunk in numba.prange(n_chunks):
        y = np.zeros((lmax + 1) ** 2)
        radial = np.zeros(max(max_slots, 1))
        for g in range(chunk * n_segments // n_chunks, (chunk + 1) * n_segments // n_chunks):
            for q in range(out_ptr[g], out_ptr[g + 1]):
                out[q] = 0.0
            for e in range(segment_ptr[g], segment_ptr[g + 1]):
                _pair_block(
                    pair_type[e], vectors[e, 0], vectors[e, 1], vectors[e, 2], lmax, norms, dfact, slot_ptr, slot_table,
                    entry_ptr, term_ptr, term_slot, term_lm, term_coef, values, reach, step, y, radial, out, out_ptr[g],
                    True,
                )


def program_block_sums(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, segment_ptr: np.ndarray,
    out_ptr: np.ndarray,
) -> np.ndarray:
    """Sums of the blocks of consecutive pairs: segment ``g`` (pairs ``segment_ptr[g]:segment_ptr[g+1]``,
    all blocks of one shape) -> ``out[out_ptr[g]:out_ptr[g+1]]`` (see the reference)."""
    out = np.empty(int(out_ptr[-1]))
    with numba.parallel_chunksize(1):
        _program_block_sums(
            np.ascontiguousarray(pair_type, dtype=np.int64), np.ascontiguousarray(vectors, dtype=np.float64),
            np.ascontiguousarray(segment_ptr, dtype=np.int64), np.ascontiguousarray(out_ptr, dtype=np.int64),
            program.lmax, program.slot_ptr, program.slot_table, program.entry_ptr, program.term_ptr, program.term_slot,
            program.term_lm, program.term_coef, tables.values, tables.reach, tables.step, program.max_slots,
            _n_chunks(len(segment_ptr) - 1), out,
        )
    return out


def program_blocks(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, block_ptr: np.ndarray,
    out: np.ndarray | None = None, accumulate: bool = False,
) -> np.ndarray:
    """Flat float64 blocks of ``program`` (see :func:`hforge.ops.two_centre.reference.program_blocks`),
    written into (``accumulate``: added to) ``out`` when given (a view of a larger buffer: no copy)."""
    if out is None:
        out = np.empty(int(block_ptr[-1]))
        accumulate = False
    with numba.parallel_chunksize(1):
        _program_blocks(
            np.ascontiguousarray(pair_type, dtype=np.int64), np.ascontiguousarray(vectors, dtype=np.float64),
            np.ascontiguousarray(block_ptr, dtype=np.int64), program.lmax, program.slot_ptr, program.slot_table,
            program.entry_ptr, program.term_ptr, program.term_slot, program.term_lm, program.term_coef,
            tables.values, tables.reach, tables.step, program.max_slots, accumulate, _n_chunks(len(pair_type)), out,
        )
    return out


@numba.njit(inline="always")
def _order(proj_atoms, proj_shifts, a, b, shift):  # pragma: no cover
    """Order of ``(k, m)`` of entry ``a`` against ``(k', m' + shift)`` of entry ``b``: -1, 0 (a match) or 1.
    Every atom's entries are sorted by ``(k, m)``, so the common projector atoms of two atoms are
    found by merging their two lists."""
    ka, kb = proj_atoms[a], proj_atoms[b]
    if ka != kb:
        return -1 if ka < kb else 1
    for d in range(3):
        ma, mb = proj_shifts[a, d], proj_shifts[b, d] + shift[d]
        if ma != mb:
            return -1 if ma < mb else 1
    return 0


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _separable_contract(
    pairs, shifts, species, proj_atoms, proj_shifts, proj_ptr, proj_block_ptr, left, right, n_orb, n_proj,
    block_ptr, scale, scale_ptr, n_species, accumulate, n_chunks, out,
):  # pragma: no cover
    n_pairs = pairs.shape[1]
    max_orb, max_proj = n_orb.max(), max(n_proj.max(), 1)
    for chunk in numba.prange(n_chunks):
        transposed = np.empty(max_orb * max_proj)  # right(j, k)^T of one match: rows contiguous
        block = np.empty(max_orb * max_orb)
        for e in range(chunk * n_pairs // n_chunks, (chunk + 1) * n_pairs // n_chunks):
            i, j = pairs[0, e], pairs[1, e]
            ni, nj = n_orb[species[i]], n_orb[species[j]]
            for q in range(ni * nj):
                block[q] = 0.0
            a, a_end = proj_ptr[i], proj_ptr[i + 1]
            b, b_end = proj_ptr[j], proj_ptr[j + 1]
            while a < a_end and b < b_end:
                order = _order(proj_atoms, proj_shifts, a, b, shifts[e])
                if order < 0:
                    a += 1
                elif order > 0:
                    b += 1
                else:
                    npk = n_proj[species[proj_atoms[a]]]
                    pa, pb = proj_block_ptr[a], proj_block_ptr[b]
                    for p in range(npk):
                        for v in range(nj):
                            transposed[p * nj + v] = right[pb + v * npk + p]
                    for u in range(ni):
                        row = u * nj
                        for p in range(npk):
                            w = left[pa + u * npk + p]
                            if w != 0.0:
                                for v in range(nj):
                                    block[row + v] += w * transposed[p * nj + v]
                    a += 1
                    b += 1
            if scale.shape[1] > 0:
                onsite = i == j and shifts[e, 0] == 0 and shifts[e, 1] == 0 and shifts[e, 2] == 0
                s0 = scale_ptr[species[i] * n_species + species[j]]
                row = 1 if onsite else 0
                for q in range(ni * nj):
                    block[q] *= scale[row, s0 + q]
            base = block_ptr[e]
            if accumulate:
                for q in range(ni * nj):
                    out[base + q] += block[q]
            else:
                for q in range(ni * nj):
                    out[base + q] = block[q]


@numba.njit(cache=True)
def _separable_matches(pairs, shifts, proj_atoms, proj_shifts, proj_ptr, count_only, triplets):  # pragma: no cover
    """The matches ``(e, a, b)`` of :func:`_separable_contract` in pair order (written when not ``count_only``)."""
    n = 0
    for e in range(pairs.shape[1]):
        i, j = pairs[0, e], pairs[1, e]
        a, a_end = proj_ptr[i], proj_ptr[i + 1]
        b, b_end = proj_ptr[j], proj_ptr[j + 1]
        while a < a_end and b < b_end:
            order = _order(proj_atoms, proj_shifts, a, b, shifts[e])
            if order < 0:
                a += 1
            elif order > 0:
                b += 1
            else:
                if not count_only:
                    triplets[0, n], triplets[1, n], triplets[2, n] = e, a, b
                n += 1
                a += 1
                b += 1
    return n


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def separable_contract(
    pairs: np.ndarray, shifts: np.ndarray, proj_atoms: np.ndarray, proj_shifts: np.ndarray, proj_ptr: np.ndarray,
    proj_block_ptr: np.ndarray, left: np.ndarray, right: np.ndarray, n_orb: np.ndarray, n_proj: np.ndarray,
    species: np.ndarray, block_ptr: np.ndarray, out: np.ndarray | None = None, scale: np.ndarray | None = None,
    scale_ptr: np.ndarray | None = None, accumulate: bool = False,
) -> np.ndarray:
    """As :func:`hforge.ops.two_centre.reference.separable_contract`; every atom's projector entries
    must be sorted by ``(atom, shift)`` (as :func:`hforge.graph.neighbour_list` gives them).
    ``out`` (with ``accumulate``: added to) avoids a separate output array."""
    if out is None:
        out = np.empty(int(block_ptr[-1]))
        accumulate = False
    if scale is None:
        scale, scale_ptr = np.zeros((2, 0)), np.zeros(len(n_orb) ** 2 + 1, dtype=np.int64)
    with numba.parallel_chunksize(1):
        _separable_contract(
            _i64(pairs), _i64(shifts), _i64(species), _i64(proj_atoms), _i64(proj_shifts), _i64(proj_ptr),
            _i64(proj_block_ptr), np.ascontiguousarray(left, dtype=np.float64), np.ascontiguousarray(right, dtype=np.float64),
            _i64(n_orb), _i64(n_proj), _i64(block_ptr), np.ascontiguousarray(scale, dtype=np.float64), _i64(scale_ptr),
            len(n_orb), accumulate, _n_chunks(pairs.shape[1]), out,
        )
    return out


def separable_matches(
    pairs: np.ndarray, shifts: np.ndarray, proj_atoms: np.ndarray, proj_shifts: np.ndarray, proj_ptr: np.ndarray
) -> np.ndarray:
    """``(3, T)`` int64 ``(e, a, b)``: every output pair ``e`` with each projector entry ``a`` of its
    row atom and ``b`` of its column atom on the same projector atom image (the terms of
    :func:`separable_contract`), in pair order."""
    args = (_i64(pairs), _i64(shifts), _i64(proj_atoms), _i64(proj_shifts), _i64(proj_ptr))
    n = _separable_matches(*args, True, np.zeros((3, 0), dtype=np.int64))
    triplets = np.empty((3, n), dtype=np.int64)
    _separable_matches(*args, False, triplets)
    return triplets


# ---- the separable operator of inference: packed projections, 2x2-blocked contraction ----------
@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _program_packed(
    pair_type, vectors, entry_species, rank, col0, entry_row, entry_rows, lmax, slot_ptr, slot_table, entry_ptr,
    term_ptr, term_slot, term_lm, term_coef, cols, values, reach, step, max_slots, n_chunks, out,
):  # pragma: no cover
    n_pairs = pair_type.shape[0]
    norms, dfact = _legendre_norms(lmax)
    for chunk in numba.prange(n_chunks):
        y = np.zeros((lmax + 1) ** 2)
        radial = np.zeros(max(max_slots, 1))
        for a in range(chunk * n_pairs // n_chunks, (chunk + 1) * n_pairs // n_chunks):
            t = pair_type[a]
            _pair_terms(
                t, vectors[a, 0], vectors[a, 1], vectors[a, 2], lmax, norms, dfact, slot_ptr, slot_table, values, reach,
                step, y, radial,
            )
            e0, n_cols, s = entry_ptr[t], cols[t], entry_species[a]
            for orbital in range((entry_ptr[t + 1] - e0) // n_cols):
                row = rank[s, orbital]
                if row < entry_rows[a]:  # the orbital reaches the projector atom
                    first = e0 + orbital * n_cols
                    for c in range(n_cols):
                        out[entry_row[a] + row, col0 + c] = _entry(first + c, term_ptr, term_slot, term_lm, term_coef, y, radial)


@numba.njit(parallel=True, cache=True)
def _pack_projections(
    values, value_ptr, n_cols, col0, entry_species, order, entry_row, entry_rows, n_chunks, out,
):  # pragma: no cover
    """Rows ``order[s_a, r]`` (``r < entry_rows[a]``, the orbitals in reach order) of every entry's flat
    block ``values[value_ptr[a]:]`` (``n_cols[a]`` columns) into ``out[entry_row[a] + r, col0:]``."""
    n_entries = value_ptr.shape[0] - 1
    for chunk in numba.prange(n_chunks):
        for a in range(chunk * n_entries // n_chunks, (chunk + 1) * n_entries // n_chunks):
            base, cols, s = value_ptr[a], n_cols[a], entry_species[a]
            for r in range(entry_rows[a]):
                orbital = order[s, r]
                if orbital < 0:  # a padding row
                    continue
                for c in range(cols):
                    out[entry_row[a] + r, col0 + c] = values[base + orbital * cols + c]


@numba.njit(inline="always")
def _owner_left(
    owner, proj_ptr, proj_atoms, species, entry_row, entry_rows, packed, operators, energies, left,
):  # pragma: no cover
    """``left`` rows of the owner atom's entries, one after the other: ``[P D_k, P_KB E_k]`` of every
    entry (columns ``< n_op`` times ``operators[k]``, the others times ``energies[s_k]``)."""
    n_op, width = operators.shape[1], packed.shape[1]
    local = 0
    for a in range(proj_ptr[owner], proj_ptr[owner + 1]):
        k, r0 = proj_atoms[a], entry_row[a]
        s = species[k]
        for u in range(entry_rows[a]):
            for q in range(width):
                left[local + u, q] = 0.0
            for p in range(n_op):
                w = packed[r0 + u, p]
                if w != 0.0:
                    for q in range(n_op):
                        left[local + u, q] += w * operators[k, p, q]
            for q in range(n_op, width):
                left[local + u, q] = packed[r0 + u, q] * energies[s, q - n_op]
        local += entry_rows[a]


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _operator_contract(
    pairs, shifts, swap, species, proj_atoms, proj_shifts, proj_ptr, entry_row, entry_rows, entry_cols, packed, operators,
    energies, order, n_orb, block_ptr, n_chunks, out,
):  # pragma: no cover
    n_pairs, width = pairs.shape[1], packed.shape[1]
    rows_pad = order.shape[1]
    max_entries = 1
    for atom in range(proj_ptr.shape[0] - 1):
        max_entries = max(max_entries, proj_ptr[atom + 1] - proj_ptr[atom])
    for chunk in numba.prange(n_chunks):
        left = np.zeros((max_entries * rows_pad, width), dtype=packed.dtype)
        local = np.zeros(max_entries + 1, dtype=np.int64)
        block = np.zeros((rows_pad, rows_pad), dtype=packed.dtype)
        shift = np.zeros(3, dtype=np.int64)
        zero = np.zeros(1, dtype=packed.dtype)[0]  # accumulators in the packed dtype (float32: 8 lanes)
        current = -1
        for e in range(chunk * n_pairs // n_chunks, (chunk + 1) * n_pairs // n_chunks):
            flip = swap[e]
            owner, other = (pairs[1, e], pairs[0, e]) if flip else (pairs[0, e], pairs[1, e])
            for d in range(3):
                shift[d] = -shifts[e, d] if flip else shifts[e, d]
            if owner != current:  # P D_k of the owner's entries, once for its consecutive pairs
                _owner_left(owner, proj_ptr, proj_atoms, species, entry_row, entry_rows, packed, operators, energies, left)
                for a in range(proj_ptr[owner], proj_ptr[owner + 1]):
                    local[a - proj_ptr[owner] + 1] = local[a - proj_ptr[owner]] + entry_rows[a]
                current = owner
            block[:, :] = 0.0
            a, a_end = proj_ptr[owner], proj_ptr[owner + 1]
            b, b_end = proj_ptr[other], proj_ptr[other + 1]
            while a < a_end and b < b_end:
                o = _order(proj_atoms, proj_shifts, a, b, shift)
                if o < 0:
                    a += 1
                elif o > 0:
                    b += 1
                else:
                    la, rb = local[a - proj_ptr[owner]], entry_row[b]
                    cols = min(entry_cols[a], entry_cols[b])  # beyond an entry's columns its values are zero
                    for u in range(0, entry_rows[a], 2):  # rows padded to even: 2 x 2 dot products at once
                        l0, l1 = left[la + u], left[la + u + 1]
                        for v in range(0, entry_rows[b], 2):
                            r0, r1 = packed[rb + v], packed[rb + v + 1]
                            s00 = s01 = s10 = s11 = zero
                            for p in range(cols):
                                s00 += l0[p] * r0[p]
                                s01 += l0[p] * r1[p]
                                s10 += l1[p] * r0[p]
                                s11 += l1[p] * r1[p]
                            block[u, v] += s00
                            block[u, v + 1] += s01
                            block[u + 1, v] += s10
                            block[u + 1, v + 1] += s11
                    a += 1
                    b += 1
            s_own, s_oth = species[owner], species[other]
            n_own, n_oth = n_orb[s_own], n_orb[s_oth]
            base = block_ptr[e]
            for u in range(n_own):  # reach order -> the orbitals' order; the canonical pair's orientation
                ou = order[s_own, u]
                for v in range(n_oth):
                    ov = order[s_oth, v]
                    if ou >= 0 and ov >= 0:
                        if flip:
                            out[base + ov * n_own + ou] = block[u, v]
                        else:
                            out[base + ou * n_oth + ov] = block[u, v]


def program_packed(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, entry_species: np.ndarray,
    rank: np.ndarray, col0: int, entry_row: np.ndarray, entry_rows: np.ndarray, out: np.ndarray,
) -> None:
    """The blocks of ``program`` for the entries ``(pair_type, vectors)`` written straight into the
    packed rows of ``out`` (:func:`pack_projections`' layout; ``rank[s, orbital]`` the row of an
    orbital in reach order): only the entries of the rows an entry keeps are computed."""
    with numba.parallel_chunksize(1):
        _program_packed(
            _i64(pair_type), np.ascontiguousarray(vectors, dtype=np.float64), _i64(entry_species), _i64(rank), int(col0),
            _i64(entry_row), _i64(entry_rows), program.lmax, program.slot_ptr, program.slot_table, program.entry_ptr,
            program.term_ptr, program.term_slot, program.term_lm, program.term_coef, _i64(program.cols), tables.values,
            tables.reach, tables.step, program.max_slots, _n_chunks(len(pair_type)), out,
        )


def pack_projections(
    values: np.ndarray, value_ptr: np.ndarray, n_cols: np.ndarray, col0: int, entry_species: np.ndarray,
    order: np.ndarray, entry_row: np.ndarray, entry_rows: np.ndarray, out: np.ndarray,
) -> None:
    """Write flat projection blocks into the packed rows of ``out`` (see
    :func:`hforge.ops.two_centre.reference.pack_projections`)."""
    with numba.parallel_chunksize(1):
        _pack_projections(
            np.ascontiguousarray(values), _i64(value_ptr), _i64(n_cols), int(col0), _i64(entry_species), _i64(order),
            _i64(entry_row), _i64(entry_rows), _n_chunks(len(value_ptr) - 1), out,
        )


def operator_contract(
    pairs: np.ndarray, shifts: np.ndarray, swap: np.ndarray, species: np.ndarray, proj_atoms: np.ndarray,
    proj_shifts: np.ndarray, proj_ptr: np.ndarray, entry_row: np.ndarray, entry_rows: np.ndarray, entry_cols: np.ndarray,
    packed: np.ndarray, operators: np.ndarray, energies: np.ndarray, order: np.ndarray, n_orb: np.ndarray,
    block_ptr: np.ndarray, out: np.ndarray | None = None,
) -> np.ndarray:
    """As :func:`hforge.ops.two_centre.reference.operator_contract`, in the dtype of ``packed``
    (float32 or float64): parallel over pairs, each pair's block from the 2 x 2-blocked dot products
    of its owner's ``P D_k`` rows (computed once per owner and thread) with the other atom's packed
    rows, over their common projector atoms (merge of the sorted entry lists); written into ``out``
    (a view of a larger buffer: no copy) when given."""
    dtype = packed.dtype
    if out is None:
        out = np.empty(int(block_ptr[-1]), dtype=dtype)
    with numba.parallel_chunksize(1):
        _operator_contract(
            _i64(pairs), _i64(shifts), np.ascontiguousarray(swap, dtype=np.bool_), _i64(species), _i64(proj_atoms),
            _i64(proj_shifts), _i64(proj_ptr), _i64(entry_row), _i64(entry_rows), _i64(entry_cols), np.ascontiguousarray(packed),
            np.ascontiguousarray(operators, dtype=dtype), np.ascontiguousarray(energies, dtype=dtype), _i64(order),
            _i64(n_orb), _i64(block_ptr), _n_chunks(pairs.shape[1]), out,
        )
    return out
