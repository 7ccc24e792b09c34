"""Parallel CPU kernels of the CG block ops (numba), float32 and float64.

``edge_blocks`` forward runs in parallel over chunks of edges.  Per edge, in per-chunk scratch
(``desc.key_tp_ptr[-1] * C`` floats, 31 kB for DZP B/N with 32 float32 channels):

0. the features ``x[i] (C, K)`` and ``x[j]`` of its two atoms are staged transposed, ``(K, C)``
   (skipped when the atom is the previous edge's), so ``x`` is read in the public ``(N, C, K)``
   layout without a transposed copy; the pair type comes from ``species[i], species[j]``;
1. for every path ``p`` the edge's pair type needs: ``A[m1, M] = sum_m2 cg[m1, m2, M] Y[e, m2]``
   (sparse), then the tensor product ``m[p, M, c] = R[e, p, c] sum_m1 A[m1, M] x[n_p, m1, c]``
   (vectorized over channels), stored *key-major*: ``m_k[M, r, c]`` with ``r`` the path's rank
   in its key, so that
2. every slot component is one contiguous dot product of length ``n_key_paths * C``:
   ``t[s, M] = sum_{r, c} W[mix_ptr[s] + r, c] m_k[M, r, c]`` (the rows of a slot are contiguous);
3. the block is gathered through the CSR change of basis ``Q`` (rows = block entries).

Nothing of size ``E x paths x C`` is written; the output is the forward's only allocation that
grows with the number of edges.  The backward runs *node-parallel* over a CSR of
edges grouped by their row atom (side-0 paths) and by their column atom (side-1 paths): every
(edge, side) is visited exactly once, maps the block gradient to the coupled irreps (``Q^T``,
per-chunk scratch) and touches only its side's half of each key's paths, so
``dR`` and ``dY`` are written without races, ``dx[n]`` is accumulated by the one thread that owns
node ``n``, and ``dW`` goes to one buffer per node chunk, summed in chunk order at the end.

Reproducibility: every result is bitwise the same for any number of threads and any scheduling.
The forward and ``dx``, ``dR``, ``dY`` have one writer per value, summing in a fixed order; the
node chunks of the backward are a fixed partition (:data:`BACKWARD_CHUNKS`, balanced in edges,
independent of the thread count), so each chunk's ``dW`` buffer is summed in the same order
whichever thread takes it, and the buffers are added in chunk order (:func:`_sum_rows`).  (With
one buffer per thread, as before, the chunks a thread happened to take decided the order of the
``dW`` sums: two identical training runs drifted apart after a few steps.)  Cost: the buffers of
the default model's two calls per training step on abn-small's 32-atom batch (32 x 24,320 and
64 x 4,480 floats) are zeroed and summed in 0.3 ms; forward+backward of those calls measured the
same before and after within the noise of the loaded 2-core machine (min of 30 steps, 4 runs each:
1 numba thread 98-110 ms CPU before, 99-103 ms after; 2 threads 199-238 ms wall before,
171-224 ms after).
"""

from __future__ import annotations

import numpy as np
import torch

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
from hforge.ops.cg_blocks.descriptor import CGDescriptor

__all__ = ["EdgeBlocksNumba", "apply_q_numba", "edge_blocks_forward_numba"]

_FASTMATH = {"reassoc", "contract", "nsz"}  # lets LLVM vectorize the channel reductions


#: Node chunks of the backward (fewer for fewer nodes): a fixed number, so that the ``dW`` sums do
#: not depend on the thread count; enough for 64 threads with dynamic load balancing.  Costs
#: ``BACKWARD_CHUNKS x W.numel()`` floats of buffers (64 x 24,320 at most for the default model).
BACKWARD_CHUNKS = 64


def _n_chunks(n_items: int) -> int:
    """Work items of a parallel loop; they are handed out one at a time (``parallel_chunksize(1)``),
    so that a thread slowed down by other processes does not hold the others back."""
    return max(1, min(n_items, 32 * numba.get_num_threads()))


@numba.njit(inline="always")
def _gather_rows(values, base, entry0, size, ptr, index, val, out):  # pragma: no cover
    """``out[base + k] = sum_q val[q] values[base + index[q]]`` over CSR row ``entry0 + k``."""
    for k in range(size):
        acc = 0.0
        for q in range(ptr[entry0 + k], ptr[entry0 + k + 1]):
            acc += val[q] * values[base + index[q]]
        out[base + k] = acc


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _apply_q(values, pair_type, block_ptr, pair_entry_ptr, ptr, index, val, out):  # pragma: no cover
    for e in numba.prange(pair_type.shape[0]):
        t = pair_type[e]
        _gather_rows(values, block_ptr[e], pair_entry_ptr[t], block_ptr[e + 1] - block_ptr[e], ptr, index, val, out)


def apply_q_numba(
    values: torch.Tensor, pair_type: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor, transpose: bool
) -> torch.Tensor:
    """Coupled irreps -> blocks through ``Q`` (``transpose=False``) or blocks -> coupled irreps through ``Q^T``."""
    values = values.contiguous()
    out = torch.empty_like(values)
    name = "qi" if transpose else "qb"
    with numba.parallel_chunksize(1):
        _apply_q(
            values.numpy(), pair_type.numpy(), block_ptr.numpy(), desc.pair_entry_ptr, getattr(desc, f"{name}_ptr"),
            getattr(desc, f"{name}_index"), desc.tables("cpu", values.dtype)[f"{name}_val"].numpy(), out.numpy(),
        )
    return out


@numba.njit(inline="always")
def _coupling(e, p, Y, path_l1, path_L, cg_ptr, cg_m1, cg_m2, cg_M, cg_val, A):  # pragma: no cover
    """``A[m1, M] = sum_m2 cg_p[m1, m2, M] Y[e, m2]`` for path ``p``."""
    for m1 in range(2 * path_l1[p] + 1):
        for M in range(2 * path_L[p] + 1):
            A[m1, M] = 0.0
    for q in range(cg_ptr[p], cg_ptr[p + 1]):
        A[cg_m1[q], cg_M[q]] += cg_val[q] * Y[e, cg_m2[q]]


@numba.njit(inline="always")
def _stage_node(x, node, xs):  # pragma: no cover
    """``xs[k, c] = x[node, c, k]``: one node's features, components first (channels contiguous)."""
    xn = x[node]
    for k in range(x.shape[2]):
        xs_row = xs[k]
        for c in range(x.shape[1]):
            xs_row[c] = xn[c, k]


@numba.njit(inline="always")
def _couple_node(xs, off, n1, nL, A, a):  # pragma: no cover
    """``a[M, c] = sum_m1 A[m1, M] xs[off + m1, c]`` (``xs``: a node's features from :func:`_stage_node`)."""
    C = xs.shape[1]
    for M in range(nL):
        for c in range(C):
            a[M, c] = 0.0
        for m1 in range(n1):
            coef = A[m1, M]
            if coef != 0.0:
                for c in range(C):
                    a[M, c] += coef * xs[off + m1, c]


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _edge_forward(
    x, Y, R, W, src, dst, species, n_species, block_ptr,
    slot_ptr, slot_key, slot_L, slot_offset, mix_ptr, key_path_ptr, key_tp_ptr, key_L, ptk_ptr, n_keys,
    path_side, path_l1, path_L, path_key, path_rank, path_node_offset, cg_ptr, cg_m1, cg_m2, cg_M, cg_val,
    pair_entry_ptr, qb_ptr, qb_index, qb_val, max_pair_size, max_n1, max_nL, n_chunks, out,
):  # pragma: no cover
    """``out[k]``: the blocks of weight set ``k`` (``W`` flat, ``K`` sets of ``n_mix x C``); the
    messages ``m`` of a pair are computed once for all sets."""
    n_edges = src.shape[0]
    n_paths = R.shape[1]
    C = x.shape[1]
    n_sets = out.shape[0]
    set_stride = W.shape[0] // n_sets
    chunk = (n_edges + n_chunks - 1) // n_chunks
    for ch in numba.prange(n_chunks):
        A = np.empty((max_n1, max_nL), dtype=x.dtype)
        a = np.empty((max_nL, C), dtype=x.dtype)
        m = np.empty(key_tp_ptr[-1] * C, dtype=x.dtype)
        t = np.empty((n_sets, max_pair_size), dtype=x.dtype)
        xs = np.empty((2, x.shape[2], C), dtype=x.dtype)  # the pair's two atoms, staged
        staged = np.full(2, -1, dtype=np.int64)
        for e in range(ch * chunk, min((ch + 1) * chunk, n_edges)):
            for side in range(2):
                node = src[e] if side == 0 else dst[e]
                if staged[side] != node:  # edges sorted by atom reuse the staged features
                    _stage_node(x, node, xs[side])
                    staged[side] = node
            pt = species[src[e]] * n_species + species[dst[e]]
            for p in range(n_paths):
                k = path_key[p]
                if ptk_ptr[pt * n_keys + k] == ptk_ptr[pt * n_keys + k + 1]:
                    continue  # no slot of this pair type needs the path
                nL = 2 * path_L[p] + 1
                _coupling(e, p, Y, path_l1, path_L, cg_ptr, cg_m1, cg_m2, cg_M, cg_val, A)
                _couple_node(xs[path_side[p]], path_node_offset[p], 2 * path_l1[p] + 1, nL, A, a)
                n_rank = key_path_ptr[k + 1] - key_path_ptr[k]
                for M in range(nL):
                    o = (key_tp_ptr[k] + M * n_rank + path_rank[p]) * C
                    m_row = m[o : o + C]  # slices, not offset indices: numba's wraparound check blocks SIMD
                    for c in range(C):
                        m_row[c] = a[M, c] * R[e, p, c]
            for s in range(slot_ptr[pt], slot_ptr[pt + 1]):
                k = slot_key[s]
                width = (key_path_ptr[k + 1] - key_path_ptr[k]) * C
                for M in range(2 * slot_L[s] + 1):
                    o = key_tp_ptr[k] * C + M * width
                    m_rows = m[o : o + width]
                    for w_set in range(n_sets):
                        w0 = w_set * set_stride + mix_ptr[s] * C
                        w_rows = W[w0 : w0 + width]
                        acc = 0.0
                        for i in range(width):
                            acc += w_rows[i] * m_rows[i]
                        t[w_set, slot_offset[s] + M] = acc
            base = block_ptr[e]
            entry0 = pair_entry_ptr[pt]
            for w_set in range(n_sets):
                t_set = t[w_set]
                out_set = out[w_set]
                for i in range(block_ptr[e + 1] - base):
                    acc = 0.0
                    for q in range(qb_ptr[entry0 + i], qb_ptr[entry0 + i + 1]):
                        acc += qb_val[q] * t_set[qb_index[q]]
                    out_set[base + i] = acc


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _edge_backward(
    grad, x, Y, R, W, pair_type, block_ptr, csr_ptr, csr_edge, chunk_node_ptr, pair_entry_ptr, qi_ptr, qi_index, qi_val,
    slot_L, slot_offset, mix_ptr, key_path_ptr, key_tp_ptr, key_L, ptk_ptr, ptk_slot, n_keys,
    path_l1, path_L, path_key, path_rank, path_node_offset, cg_ptr, cg_m1, cg_m2, cg_M, cg_val,
    max_pair_size, max_n1, max_nL, need_x, need_R, need_W, need_Y, gx, gR, gW, gY,
):  # pragma: no cover
    n_side_paths = R.shape[1] // 2
    C = x.shape[1]
    for ch in numba.prange(chunk_node_ptr.shape[0] - 1):
        gt = np.empty(max_pair_size, dtype=x.dtype)
        A = np.empty((max_n1, max_nL), dtype=x.dtype)
        a = np.empty((max_nL, C), dtype=x.dtype)
        ga = np.empty((max_nL, C), dtype=x.dtype)
        gm = np.empty(key_tp_ptr[-1] * C, dtype=x.dtype)
        gxn = np.empty((x.shape[2], C), dtype=x.dtype)
        xs = np.empty((x.shape[2], C), dtype=x.dtype)
        for n in range(chunk_node_ptr[ch], chunk_node_ptr[ch + 1]):
            gxn[:, :] = 0.0
            _stage_node(x, n, xs)
            for side in range(2):
                for j_edge in range(csr_ptr[side, n], csr_ptr[side, n + 1]):
                    e = csr_edge[side, j_edge]
                    pt = pair_type[e]
                    base = block_ptr[e]
                    entry0 = pair_entry_ptr[pt]
                    for i in range(block_ptr[e + 1] - base):  # coupled-irreps gradient: Q^T grad
                        acc = 0.0
                        for q in range(qi_ptr[entry0 + i], qi_ptr[entry0 + i + 1]):
                            acc += qi_val[q] * grad[base + qi_index[q]]
                        gt[i] = acc
                    # gm_k[M, r, c] = sum_s gt[s, M] W[mix_ptr[s] + r, c] over this side's ranks r
                    for k in range(n_keys):
                        j0 = ptk_ptr[pt * n_keys + k]
                        j1 = ptk_ptr[pt * n_keys + k + 1]
                        if j0 == j1:
                            continue
                        n_rank = key_path_ptr[k + 1] - key_path_ptr[k]
                        half = n_rank // 2 * C
                        r0 = side * (n_rank // 2)
                        for M in range(2 * key_L[k] + 1):
                            o = (key_tp_ptr[k] + M * n_rank + r0) * C
                            gm[o : o + half] = 0.0
                        for j in range(j0, j1):
                            s = ptk_slot[j]
                            w0 = (mix_ptr[s] + r0) * C
                            w_rows = W[w0 : w0 + half]
                            for M in range(2 * key_L[k] + 1):
                                g = gt[slot_offset[s] + M]
                                o = (key_tp_ptr[k] + M * n_rank + r0) * C
                                gm_rows = gm[o : o + half]
                                for i in range(half):
                                    gm_rows[i] += g * w_rows[i]
                    for p in range(side * n_side_paths, (side + 1) * n_side_paths):
                        k = path_key[p]
                        j0 = ptk_ptr[pt * n_keys + k]
                        j1 = ptk_ptr[pt * n_keys + k + 1]
                        if j0 == j1:
                            continue
                        n1 = 2 * path_l1[p] + 1
                        nL = 2 * path_L[p] + 1
                        off = path_node_offset[p]
                        n_rank = key_path_ptr[k + 1] - key_path_ptr[k]
                        _coupling(e, p, Y, path_l1, path_L, cg_ptr, cg_m1, cg_m2, cg_M, cg_val, A)
                        _couple_node(xs, off, n1, nL, A, a)
                        r_row = R[e, p]
                        for M in range(nL):
                            o = (key_tp_ptr[k] + M * n_rank + path_rank[p]) * C
                            gm_row = gm[o : o + C]
                            for c in range(C):
                                ga[M, c] = gm_row[c] * r_row[c]
                        if need_R:
                            gr_row = gR[e, p]
                            for c in range(C):
                                gr_row[c] = 0.0
                            for M in range(nL):
                                o = (key_tp_ptr[k] + M * n_rank + path_rank[p]) * C
                                gm_row = gm[o : o + C]
                                for c in range(C):
                                    gr_row[c] += gm_row[c] * a[M, c]
                        if need_W:
                            for M in range(nL):
                                for c in range(C):
                                    a[M, c] *= r_row[c]  # now m[p, M, :]
                            for j in range(j0, j1):
                                s = ptk_slot[j]
                                w0 = (mix_ptr[s] + path_rank[p]) * C
                                gw_row = gW[ch, w0 : w0 + C]
                                for M in range(nL):
                                    g = gt[slot_offset[s] + M]
                                    for c in range(C):
                                        gw_row[c] += g * a[M, c]
                        if need_x:
                            for m1 in range(n1):
                                for M in range(nL):
                                    coef = A[m1, M]
                                    if coef != 0.0:
                                        for c in range(C):
                                            gxn[off + m1, c] += coef * ga[M, c]
                        if need_Y:
                            for q in range(cg_ptr[p], cg_ptr[p + 1]):
                                acc = 0.0
                                for c in range(C):
                                    acc += ga[cg_M[q], c] * xs[off + cg_m1[q], c]
                                gY[side, e, cg_m2[q]] += cg_val[q] * acc
            if need_x:
                for c in range(C):
                    for k in range(x.shape[2]):
                        gx[n, c, k] = gxn[k, c]


@numba.njit(parallel=True, cache=True)
def _sum_rows(rows, out):  # pragma: no cover
    """``out[k] = rows[0, k] + rows[1, k] + ...`` in row order (parallel over ``k``: any thread count, same sums)."""
    n_rows, n = rows.shape
    block = 1024
    for b in numba.prange((n + block - 1) // block):
        for k in range(b * block, min((b + 1) * block, n)):
            acc = rows[0, k]
            for r in range(1, n_rows):
                acc += rows[r, k]
            out[k] = acc


def _csr_by_node(src: np.ndarray, dst: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges grouped by row atom (side 0) and by column atom (side 1), and :data:`BACKWARD_CHUNKS`
    node chunks of equal work (a partition independent of the thread count)."""
    csr_ptr = np.zeros((2, n_nodes + 1), dtype=np.int64)
    csr_edge = np.empty((2, src.shape[0]), dtype=np.int64)
    for side, atoms in enumerate((src, dst)):
        np.cumsum(np.bincount(atoms, minlength=n_nodes), out=csr_ptr[side, 1:])
        csr_edge[side] = np.argsort(atoms, kind="stable")
    work = np.cumsum(csr_ptr[0, 1:] - csr_ptr[0, :-1] + csr_ptr[1, 1:] - csr_ptr[1, :-1])
    n_chunks = max(1, min(n_nodes, BACKWARD_CHUNKS))
    targets = (np.arange(1, n_chunks) * (work[-1] if n_nodes else 0)) // n_chunks
    chunk_node_ptr = np.concatenate([[0], np.searchsorted(work, targets, side="right"), [n_nodes]]).astype(np.int64)
    return csr_ptr, csr_edge, chunk_node_ptr


def _sizes(desc: CGDescriptor) -> tuple[int, int]:
    """Largest ``2 l1 + 1`` and ``2 L + 1`` of the paths (scratch sizes)."""
    if not desc.n_paths:
        return 1, 1
    return int(2 * desc.path_l1.max() + 1), int(2 * desc.path_L.max() + 1)


def _summed_rows(rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty(rows.shape[1], dtype=rows.dtype)
    _sum_rows(rows.numpy(), out.numpy())
    return out


def edge_blocks_forward_numba(
    x: torch.Tensor, Y: torch.Tensor, R: torch.Tensor, W: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
    species: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor,
) -> torch.Tensor:
    """``(K, block_ptr[-1])`` blocks ``f(i, j, r)`` of ``K`` weight sets ``W (K, n_mix, C)`` (no
    gradients; inputs as :class:`EdgeBlocksNumba`): each pair's messages are computed once and
    mixed by every set, cheaper than ``K`` calls."""
    out = torch.empty((W.shape[0], int(block_ptr[-1])), dtype=x.dtype)
    tb = desc.tables("cpu", x.dtype)
    if src.shape[0]:
        with numba.parallel_chunksize(1):
            _edge_forward(
                x.numpy(), Y.numpy(), R.numpy(), W.reshape(-1).numpy(), src.numpy(), dst.numpy(), species.numpy(),
                desc.n_species, block_ptr.numpy(), desc.slot_ptr, desc.slot_key, desc.slot_L, desc.slot_offset, desc.mix_ptr,
                desc.key_path_ptr, desc.key_tp_ptr, desc.key_L, desc.ptk_ptr, desc.n_keys, desc.path_side,
                desc.path_l1, desc.path_L, desc.path_key, desc.path_rank, desc.path_node_offset,
                desc.cg_ptr, desc.cg_m1, desc.cg_m2, desc.cg_M, tb["cg_val"].numpy(),
                desc.pair_entry_ptr, desc.qb_ptr, desc.qb_index, tb["qb_val"].numpy(),
                int(desc.pair_block_size.max()), *_sizes(desc), _n_chunks(src.shape[0]), out.numpy(),
            )
    return out


class EdgeBlocksNumba(torch.autograd.Function):
    """Fused edge blocks ``f(i, j, r)`` with the weights given (symmetrize them before for ``symmetric``).

    Inputs: ``x (N, C, K)``, ``Y (E, n_sh)``, ``R (E, P, C)``, ``W (n_mix, C)``, ``src``/``dst (E,)``,
    ``species (N,)``, ``block_ptr (E + 1,)`` (checked against the species); all contiguous.
    Gradients for ``x``, ``Y``, ``R`` and ``W`` (each only when required); not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, Y, R, W, src, dst, species, block_ptr, desc):
        ctx.save_for_backward(x, Y, R, W, src, dst, species, block_ptr)
        ctx.desc = desc
        return edge_blocks_forward_numba(x, Y, R, W[None], src, dst, species, block_ptr, desc)[0]

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: refuse instead of returning constants
            raise RuntimeError("edge_blocks (numba): second derivatives are not implemented; use backend='torch'")
        x, Y, R, W, src, dst, species, block_ptr = ctx.saved_tensors
        desc = ctx.desc
        pair_type = species[src] * desc.n_species + species[dst]
        need_x, need_Y, need_R, need_W = ctx.needs_input_grad[:4]
        csr_ptr, csr_edge, chunk_node_ptr = _csr_by_node(src.numpy(), dst.numpy(), x.shape[0])
        dtype = x.dtype
        unused = torch.empty((1, 1, 1), dtype=dtype)
        gx = torch.zeros_like(x) if need_x else unused
        gR = torch.zeros_like(R) if need_R else unused
        n_chunks = len(chunk_node_ptr) - 1
        gW = torch.zeros((n_chunks, W.numel()), dtype=dtype) if need_W else unused[0]  # one per node chunk
        gY = torch.zeros((2,) + Y.shape, dtype=dtype) if need_Y else unused
        if src.shape[0]:
            with numba.parallel_chunksize(1):
                _edge_backward(
                    grad.contiguous().numpy(), x.numpy(), Y.numpy(), R.numpy(), W.reshape(-1).numpy(), pair_type.numpy(),
                    block_ptr.numpy(), csr_ptr, csr_edge, chunk_node_ptr, desc.pair_entry_ptr, desc.qi_ptr, desc.qi_index,
                    desc.tables("cpu", dtype)["qi_val"].numpy(), desc.slot_L, desc.slot_offset, desc.mix_ptr, desc.key_path_ptr,
                    desc.key_tp_ptr, desc.key_L, desc.ptk_ptr, desc.ptk_slot, desc.n_keys, desc.path_l1, desc.path_L,
                    desc.path_key, desc.path_rank, desc.path_node_offset, desc.cg_ptr, desc.cg_m1, desc.cg_m2, desc.cg_M,
                    desc.tables("cpu", dtype)["cg_val"].numpy(), int(desc.pair_block_size.max()), *_sizes(desc),
                    need_x, need_R, need_W, need_Y, gx.numpy(), gR.numpy(), gW.numpy(), gY.numpy(),
                )
        return (
            gx if need_x else None,
            gY.sum(0) if need_Y else None,
            gR if need_R else None,
            _summed_rows(gW).reshape(W.shape) if need_W else None,
            None, None, None, None, None,
        )
