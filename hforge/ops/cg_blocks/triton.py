"""GPU kernels of the CG block ops (Triton); on CPU they run under ``TRITON_INTERPRET=1`` (tests).

Edges are sorted by pair type and cut into tiles of ``BLOCK_E`` edges of one pair type; one
program per tile loops over the descriptor's tables (data-driven, no code generation), so every
basis runs through the same compiled kernels.  Small per-path and per-slot coefficient tables
are stored dense and padded to powers of two so that both contractions are ``tl.dot``:

* ``cg_dense[p, m1 * N2P + m2, M] = sqrt(2L+1) C^{l1 l2 L}[m1, m2, M]``;
* ``q_dense[s, M, i * (2 l_b + 1) + j] = Q_s[i, j, M]`` and ``sp_entry[shell pair, i * (2 l_b + 1) + j]``
  the entry's index in the block (``-1`` for padding).

Forward (slot-major): for each shell pair of the tile's pair type, for each of its slots, for
each path of the slot's key, ``u[e, m1] = sum_c x[n_p, m1, c] R[e, p, c] W[row, c]`` then
``t[e, M] += (u ⊗ Y_l2)[e, :] @ cg_dense[p]``; ``block[e, :] += t @ q_dense[s]``; one store per
shell pair.  Backward (path-major): the block gradient goes to the coupled irreps through
``Q^T`` (one output-sized buffer), then for each path the slot gradients are contracted back to
``dx`` (atomic adds: nodes are shared between tiles), ``dR`` (plain stores: each (edge, path) is
owned by one program), ``dW`` (one atomic add per tile and row) and ``dY`` (atomic adds).

The kernels are built when this module is imported: set ``TRITON_INTERPRET=1`` before that to
run them on CPU.  Only tested under the interpreter here; never timed on a GPU.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import triton
import triton.language as tl

from hforge.errors import BackendUnavailableError
from hforge.ops.backends import triton_interpreted
from hforge.ops.cg_blocks.descriptor import CGDescriptor, wigner_3j

__all__ = ["EdgeBlocksTriton", "apply_q_triton"]

BLOCK_E = 16  # edges per program (>= 16: tl.dot's smallest tile)
_BUILT_INTERPRETED = triton_interpreted()


def _pow2(n: int, at_least: int = 1) -> int:
    return max(at_least, 1 << max(0, int(n) - 1).bit_length())


@cache
def _dense_tables(desc: CGDescriptor) -> dict:
    """Padded dense coefficient tables and their sizes (numpy, float64 / int64)."""
    n1 = int(2 * desc.path_l1.max() + 1) if desc.n_paths else 1
    n2 = 2 * (desc.l_sh or 0) + 1
    N1P = _pow2(n1)
    N2P = _pow2(n2, at_least=max(1, 16 // N1P))
    LP = _pow2(int(2 * desc.slot_L.max() + 1), at_least=16)
    SPP = _pow2(int(((2 * desc.slot_la + 1) * (2 * desc.slot_lb + 1)).max()), at_least=16)
    cg = np.zeros((max(desc.n_paths, 1), N1P * N2P, LP))
    for p in range(desc.n_paths):
        l1, l2, L = int(desc.path_l1[p]), int(desc.path_l2[p]), int(desc.path_L[p])
        block = np.sqrt(2 * L + 1) * wigner_3j(l1, l2, L)
        for m1 in range(2 * l1 + 1):
            cg[p, m1 * N2P : m1 * N2P + 2 * l2 + 1, : 2 * L + 1] = block[m1]
    q = np.zeros((desc.n_slots, LP, SPP))
    for s in range(desc.n_slots):
        qs = desc.q_matrix(int(desc.slot_la[s]), int(desc.slot_lb[s]), int(desc.slot_L[s]))
        q[s, : qs.shape[2], : qs.shape[0] * qs.shape[1]] = qs.reshape(-1, qs.shape[2]).T
    n_sp = len(desc.shellpair_slot_ptr) - 1
    entry = np.full((n_sp, SPP), -1, dtype=np.int64)
    for sp in range(n_sp):
        s = desc.shellpair_slot_ptr[sp]
        na, nb = 2 * desc.slot_la[s] + 1, 2 * desc.slot_lb[s] + 1
        n_cols = desc.pair_n_cols[desc.slot_pair_type[s]]
        i, j = np.divmod(np.arange(na * nb), nb)
        entry[sp, : na * nb] = (desc.slot_row0[s] + i) * n_cols + desc.slot_col0[s] + j
    return {"cg_dense": cg, "q_dense": q, "sp_entry": entry, "N1P": N1P, "N2P": N2P, "LP": LP, "SPP": SPP}


@cache
def _device_tables(desc: CGDescriptor, device: str, dtype: torch.dtype) -> dict:
    dense = _dense_tables(desc)
    out = dict(desc.tables(device, dtype))
    for name in ("cg_dense", "q_dense", "sp_entry"):
        value = dense[name]
        out[name] = torch.tensor(value, device=device, dtype=dtype if value.dtype == np.float64 else torch.int64)
    out.update({name: dense[name] for name in ("N1P", "N2P", "LP", "SPP")})
    return out


def _tiles(pair_type: torch.Tensor, n_pair_types: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges sorted by pair type, and tiles ``(pair type, start in the order, length)`` of at most BLOCK_E edges."""
    order = torch.argsort(pair_type, stable=True)
    counts = torch.bincount(pair_type, minlength=n_pair_types)
    per_type = (counts + BLOCK_E - 1) // BLOCK_E
    tile_pt = torch.repeat_interleave(torch.arange(n_pair_types, device=pair_type.device), per_type)
    first_tile = torch.repeat_interleave(torch.cumsum(per_type, 0) - per_type, per_type)
    rank = torch.arange(tile_pt.shape[0], device=pair_type.device) - first_tile
    first = torch.cumsum(counts, 0) - counts
    tile_start = first[tile_pt] + rank * BLOCK_E
    tile_len = torch.clamp(counts[tile_pt] - rank * BLOCK_E, max=BLOCK_E)
    return order, tile_pt, tile_start, tile_len


def _check_mode(tensor: torch.Tensor) -> None:
    if triton_interpreted() != _BUILT_INTERPRETED or (tensor.device.type == "cpu") != _BUILT_INTERPRETED:
        raise BackendUnavailableError(
            "triton kernels were built for "
            + ("the CPU interpreter" if _BUILT_INTERPRETED else "the GPU")
            + f" but called with {tensor.device} tensors (set TRITON_INTERPRET before importing hforge's triton kernels)"
        )


@triton.jit
def _tile_edges(order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr, BLOCK_E: tl.constexpr):
    tile = tl.program_id(0)
    pt = tl.load(tile_pt_ptr + tile)
    lane = tl.arange(0, BLOCK_E)
    emask = lane < tl.load(tile_len_ptr + tile)
    e = tl.load(order_ptr + tl.load(tile_start_ptr + tile) + lane, mask=emask, other=0)
    bp = tl.load(block_ptr_ptr + e, mask=emask, other=0)
    return pt, e, emask, bp


@triton.jit
def _irreps_blocks_kernel(
    values_ptr, out_ptr, order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr,
    shellpair_ptr, shellpair_slot_ptr, sp_entry_ptr, slot_offset_ptr, slot_L_ptr, q_dense_ptr,
    TRANSPOSE: tl.constexpr, BLOCK_E: tl.constexpr, LP: tl.constexpr, SPP: tl.constexpr,
):
    pt, e, emask, bp = _tile_edges(order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr, BLOCK_E)
    M = tl.arange(0, LP)
    k = tl.arange(0, SPP)
    for sp in range(tl.load(shellpair_ptr + pt), tl.load(shellpair_ptr + pt + 1)):
        entries = tl.load(sp_entry_ptr + sp * SPP + k)
        bmask = emask[:, None] & (entries >= 0)[None, :]
        if TRANSPOSE:
            blk = tl.load(values_ptr + bp[:, None] + entries[None, :], mask=bmask, other=0.0)
        else:
            blk = tl.zeros([BLOCK_E, SPP], dtype=out_ptr.dtype.element_ty)
        for s in range(tl.load(shellpair_slot_ptr + sp), tl.load(shellpair_slot_ptr + sp + 1)):
            q = tl.load(q_dense_ptr + s * LP * SPP + M[:, None] * SPP + k[None, :])
            irreps = bp[:, None] + tl.load(slot_offset_ptr + s) + M[None, :]
            imask = emask[:, None] & (M < 2 * tl.load(slot_L_ptr + s) + 1)[None, :]
            if TRANSPOSE:
                tl.store(out_ptr + irreps, tl.dot(blk, tl.trans(q), input_precision="ieee"), mask=imask)
            else:
                blk += tl.dot(tl.load(values_ptr + irreps, mask=imask, other=0.0), q, input_precision="ieee")
        if not TRANSPOSE:
            tl.store(out_ptr + bp[:, None] + entries[None, :], blk, mask=bmask)


@triton.jit
def _path_operands(
    x_ptr, Y_ptr, R_ptr, cg_dense_ptr, path_side_ptr, path_l1_ptr, path_l2_ptr, path_node_offset_ptr,
    p, e, src, dst, emask, C, K, P, NSH,
    CP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr, LP: tl.constexpr,
):
    """x tile ``[E, N1P, CP]``, R tile ``[E, CP]``, Y tile ``[E, N2P]``, CG ``[N1P * N2P, LP]`` of path ``p``."""
    c = tl.arange(0, CP)
    m1 = tl.arange(0, N1P)
    m2 = tl.arange(0, N2P)
    l2 = tl.load(path_l2_ptr + p)
    node = tl.where(tl.load(path_side_ptr + p) == 0, src, dst)
    x_index = (node[:, None, None] * K + tl.load(path_node_offset_ptr + p) + m1[None, :, None]) * C + c[None, None, :]
    x_mask = emask[:, None, None] & (m1 < 2 * tl.load(path_l1_ptr + p) + 1)[None, :, None] & (c < C)[None, None, :]
    xt = tl.load(x_ptr + x_index, mask=x_mask, other=0.0)
    rt = tl.load(R_ptr + (e[:, None] * P + p) * C + c[None, :], mask=emask[:, None] & (c < C)[None, :], other=0.0)
    y_mask = emask[:, None] & (m2 < 2 * l2 + 1)[None, :]
    yt = tl.load(Y_ptr + e[:, None] * NSH + l2 * l2 + m2[None, :], mask=y_mask, other=0.0)
    j = tl.arange(0, N1P * N2P)
    cg = tl.load(cg_dense_ptr + p * (N1P * N2P * LP) + j[:, None] * LP + tl.arange(0, LP)[None, :])
    return xt, rt, yt, cg, x_index, x_mask, y_mask, node


@triton.jit
def _edge_forward_kernel(
    x_ptr, Y_ptr, R_ptr, W_ptr, src_ptr, dst_ptr, out_ptr, order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr,
    shellpair_ptr, shellpair_slot_ptr, sp_entry_ptr, slot_key_ptr, mix_ptr_ptr, key_path_ptr_ptr, key_path_ptr,
    path_side_ptr, path_l1_ptr, path_l2_ptr, path_node_offset_ptr, cg_dense_ptr, q_dense_ptr,
    C, K, P, NSH,
    BLOCK_E: tl.constexpr, CP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr, LP: tl.constexpr, SPP: tl.constexpr,
):
    pt, e, emask, bp = _tile_edges(order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr, BLOCK_E)
    src = tl.load(src_ptr + e, mask=emask, other=0)
    dst = tl.load(dst_ptr + e, mask=emask, other=0)
    c = tl.arange(0, CP)
    M = tl.arange(0, LP)
    k = tl.arange(0, SPP)
    for sp in range(tl.load(shellpair_ptr + pt), tl.load(shellpair_ptr + pt + 1)):
        blk = tl.zeros([BLOCK_E, SPP], dtype=out_ptr.dtype.element_ty)
        for s in range(tl.load(shellpair_slot_ptr + sp), tl.load(shellpair_slot_ptr + sp + 1)):
            key = tl.load(slot_key_ptr + s)
            r0 = tl.load(key_path_ptr_ptr + key)
            row0 = tl.load(mix_ptr_ptr + s) - r0
            t = tl.zeros([BLOCK_E, LP], dtype=out_ptr.dtype.element_ty)
            for r in range(r0, tl.load(key_path_ptr_ptr + key + 1)):
                p = tl.load(key_path_ptr + r)
                xt, rt, yt, cg, _, _, _, _ = _path_operands(
                    x_ptr, Y_ptr, R_ptr, cg_dense_ptr, path_side_ptr, path_l1_ptr, path_l2_ptr, path_node_offset_ptr,
                    p, e, src, dst, emask, C, K, P, NSH, CP, N1P, N2P, LP,
                )
                w = tl.load(W_ptr + (row0 + r) * C + c, mask=c < C, other=0.0)
                u = tl.sum(xt * (rt * w[None, :])[:, None, :], axis=2)
                uy = tl.reshape(u[:, :, None] * yt[:, None, :], [BLOCK_E, N1P * N2P])
                t += tl.dot(uy, cg, input_precision="ieee")
            q = tl.load(q_dense_ptr + s * LP * SPP + M[:, None] * SPP + k[None, :])
            blk += tl.dot(t, q, input_precision="ieee")
        entries = tl.load(sp_entry_ptr + sp * SPP + k)
        tl.store(out_ptr + bp[:, None] + entries[None, :], blk, mask=emask[:, None] & (entries >= 0)[None, :])


@triton.jit
def _edge_backward_kernel(
    gt_ptr, x_ptr, Y_ptr, R_ptr, W_ptr, src_ptr, dst_ptr, order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr,
    ptk_ptr, ptk_slot_ptr, slot_offset_ptr, slot_L_ptr, mix_ptr_ptr, path_rank_ptr, path_key_ptr,
    path_side_ptr, path_l1_ptr, path_l2_ptr, path_node_offset_ptr, cg_dense_ptr, gx_ptr, gR_ptr, gW_ptr, gY_ptr,
    C, K, P, NSH, NKEYS,
    NEED_X: tl.constexpr, NEED_R: tl.constexpr, NEED_W: tl.constexpr, NEED_Y: tl.constexpr,
    BLOCK_E: tl.constexpr, CP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr, LP: tl.constexpr,
):
    pt, e, emask, bp = _tile_edges(order_ptr, block_ptr_ptr, tile_pt_ptr, tile_start_ptr, tile_len_ptr, BLOCK_E)
    src = tl.load(src_ptr + e, mask=emask, other=0)
    dst = tl.load(dst_ptr + e, mask=emask, other=0)
    c = tl.arange(0, CP)
    M = tl.arange(0, LP)
    m2 = tl.arange(0, N2P)
    for p in range(0, P):
        key = tl.load(path_key_ptr + p)
        j0 = tl.load(ptk_ptr + pt * NKEYS + key)
        j1 = tl.load(ptk_ptr + pt * NKEYS + key + 1)
        if j1 > j0:
            xt, rt, yt, cg, x_index, x_mask, y_mask, node = _path_operands(
                x_ptr, Y_ptr, R_ptr, cg_dense_ptr, path_side_ptr, path_l1_ptr, path_l2_ptr, path_node_offset_ptr,
                p, e, src, dst, emask, C, K, P, NSH, CP, N1P, N2P, LP,
            )
            gxr = tl.zeros([BLOCK_E, N1P, CP], dtype=gt_ptr.dtype.element_ty)
            gyp = tl.zeros([BLOCK_E, N2P], dtype=gt_ptr.dtype.element_ty)
            for j in range(j0, j1):
                s = tl.load(ptk_slot_ptr + j)
                row = tl.load(mix_ptr_ptr + s) + tl.load(path_rank_ptr + p)
                gmask = emask[:, None] & (M < 2 * tl.load(slot_L_ptr + s) + 1)[None, :]
                gts = tl.load(gt_ptr + bp[:, None] + tl.load(slot_offset_ptr + s) + M[None, :], mask=gmask, other=0.0)
                gU = tl.reshape(tl.dot(gts, tl.trans(cg), input_precision="ieee"), [BLOCK_E, N1P, N2P])
                gu = tl.sum(gU * yt[:, None, :], axis=2)
                w = tl.load(W_ptr + row * C + c, mask=c < C, other=0.0)
                if NEED_W:
                    gw = tl.sum(tl.sum(gu[:, :, None] * xt, axis=1) * rt, axis=0)
                    tl.atomic_add(gW_ptr + row * C + c, gw, mask=c < C)
                gxr += gu[:, :, None] * w[None, None, :]
                if NEED_Y:
                    u = tl.sum(xt * (rt * w[None, :])[:, None, :], axis=2)
                    gyp += tl.sum(gU * u[:, :, None], axis=1)
            if NEED_R:
                r_mask = emask[:, None] & (c < C)[None, :]
                tl.store(gR_ptr + (e[:, None] * P + p) * C + c[None, :], tl.sum(gxr * xt, axis=1), mask=r_mask)
            if NEED_X:
                tl.atomic_add(gx_ptr + x_index, gxr * rt[:, None, :], mask=x_mask)
            if NEED_Y:
                l2 = tl.load(path_l2_ptr + p)
                tl.atomic_add(gY_ptr + e[:, None] * NSH + l2 * l2 + m2[None, :], gyp, mask=y_mask)


def apply_q_triton(
    values: torch.Tensor, pair_type: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor, transpose: bool
) -> torch.Tensor:
    _check_mode(values)
    values = values.contiguous()
    out = torch.empty_like(values)
    if pair_type.numel() == 0:
        return out
    tb = _device_tables(desc, str(values.device), values.dtype)
    order, tile_pt, tile_start, tile_len = _tiles(pair_type, desc.n_pair_types)
    _irreps_blocks_kernel[(tile_pt.shape[0],)](
        values, out, order, block_ptr, tile_pt, tile_start, tile_len,
        tb["shellpair_ptr"], tb["shellpair_slot_ptr"], tb["sp_entry"], tb["slot_offset"], tb["slot_L"], tb["q_dense"],
        TRANSPOSE=transpose, BLOCK_E=BLOCK_E, LP=tb["LP"], SPP=tb["SPP"],
    )
    return out


class EdgeBlocksTriton(torch.autograd.Function):
    """Fused edge blocks on the GPU; same inputs and gradients as :class:`~hforge.ops.cg_blocks.numba.EdgeBlocksNumba`.

    The kernels read ``x`` as ``(N, K, C)`` (a transposed copy is made) and sort the edges by pair type.
    """

    @staticmethod
    def forward(ctx, x, Y, R, W, src, dst, species, block_ptr, desc):
        _check_mode(x)
        x = x.transpose(1, 2).contiguous()
        pair_type = species[src] * desc.n_species + species[dst]
        ctx.save_for_backward(x, Y, R, W, src, dst, pair_type, block_ptr)
        ctx.desc = desc
        out = torch.empty(int(block_ptr[-1]), dtype=x.dtype, device=x.device)
        if src.shape[0] == 0:
            return out
        tb = _device_tables(desc, str(x.device), x.dtype)
        order, tile_pt, tile_start, tile_len = _tiles(pair_type, desc.n_pair_types)
        _edge_forward_kernel[(tile_pt.shape[0],)](
            x, Y, R, W, src, dst, out, order, block_ptr, tile_pt, tile_start, tile_len,
            tb["shellpair_ptr"], tb["shellpair_slot_ptr"], tb["sp_entry"], tb["slot_key"], tb["mix_ptr"],
            tb["key_path_ptr"], tb["key_path"], tb["path_side"], tb["path_l1"], tb["path_l2"], tb["path_node_offset"],
            tb["cg_dense"], tb["q_dense"], x.shape[2], x.shape[1], R.shape[1], Y.shape[1],
            BLOCK_E=BLOCK_E, CP=_pow2(x.shape[2]), N1P=tb["N1P"], N2P=tb["N2P"], LP=tb["LP"], SPP=tb["SPP"],
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: refuse instead of returning constants
            raise RuntimeError("edge_blocks (triton): second derivatives are not implemented; use backend='torch'")
        x, Y, R, W, src, dst, pair_type, block_ptr = ctx.saved_tensors
        desc = ctx.desc
        need_x, need_Y, need_R, need_W = ctx.needs_input_grad[:4]
        gx, gY, gR, gW = (
            torch.zeros_like(v) if need else v.new_empty(1) for v, need in zip((x, Y, R, W), (need_x, need_Y, need_R, need_W))
        )
        if src.shape[0]:
            gt = apply_q_triton(grad, pair_type, block_ptr, desc, transpose=True)
            tb = _device_tables(desc, str(x.device), x.dtype)
            order, tile_pt, tile_start, tile_len = _tiles(pair_type, desc.n_pair_types)
            _edge_backward_kernel[(tile_pt.shape[0],)](
                gt, x, Y, R, W, src, dst, order, block_ptr, tile_pt, tile_start, tile_len,
                tb["ptk_ptr"], tb["ptk_slot"], tb["slot_offset"], tb["slot_L"], tb["mix_ptr"], tb["path_rank"], tb["path_key"],
                tb["path_side"], tb["path_l1"], tb["path_l2"], tb["path_node_offset"], tb["cg_dense"], gx, gR, gW, gY,
                x.shape[2], x.shape[1], R.shape[1], Y.shape[1], desc.n_keys,
                NEED_X=need_x, NEED_R=need_R, NEED_W=need_W, NEED_Y=need_Y,
                BLOCK_E=BLOCK_E, CP=_pow2(x.shape[2]), N1P=tb["N1P"], N2P=tb["N2P"], LP=tb["LP"],
            )
        return (
            gx.transpose(1, 2) if need_x else None,
            gY if need_Y else None,
            gR if need_R else None,
            gW if need_W else None,
            None, None, None, None, None,
        )
