"""Readable torch reference of the CG block ops: the oracle of every other backend.

Coefficients come straight from ``e3nn.o3.wigner_3j`` and the convention matrices, dense, per
pair type; from the descriptor it takes only the *layout* (which slots, paths and weight rows).
Every tensor op here is differentiable by autograd, ``Y`` included.  It materializes the full
``(E, C, 2L + 1)`` tensor product of every path: fine for tests, not for production.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from hforge._compat import import_e3nn

import_e3nn()  # before e3nn's first import (hforge/_compat.py)

from e3nn import o3  # noqa: E402

from hforge.ops.cg_blocks.descriptor import CGDescriptor  # noqa: E402

__all__ = [
    "blocks_to_irreps_reference",
    "change_of_basis",
    "edge_blocks_reference",
    "irreps_to_blocks_reference",
    "onsite_blocks_reference",
]


def change_of_basis(desc: CGDescriptor, pair_type: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Dense orthogonal ``(block_size, block_size)`` matrix ``M`` with ``block.ravel() = M @ coupled_irreps``."""
    return _change_of_basis(desc, pair_type).to(dtype=dtype, device=device)


@cache
def _change_of_basis(desc: CGDescriptor, pair_type: int) -> torch.Tensor:
    size = int(desc.pair_block_size[pair_type])
    n_cols = int(desc.pair_n_cols[pair_type])
    m = torch.zeros(size, size, dtype=torch.float64)
    for s in range(desc.slot_ptr[pair_type], desc.slot_ptr[pair_type + 1]):
        la, lb, L = int(desc.slot_la[s]), int(desc.slot_lb[s]), int(desc.slot_L[s])
        ua = torch.tensor(desc.convention(la))
        ub = torch.tensor(desc.convention(lb))
        q = math.sqrt(2 * L + 1) * torch.einsum("ia,jb,abM->ijM", ua, ub, _wigner_3j(la, lb, L))
        rows = desc.slot_row0[s] + torch.arange(2 * la + 1)
        cols = desc.slot_col0[s] + torch.arange(2 * lb + 1)
        flat = (rows[:, None] * n_cols + cols[None, :]).reshape(-1)
        m[flat, desc.slot_offset[s] : desc.slot_offset[s] + 2 * L + 1] += q.reshape(-1, 2 * L + 1)
    return m


@cache
def _wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def _positions(block_ptr: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
    """``(len(idx), size)`` flat indices of the blocks of the pairs ``idx``."""
    return block_ptr[idx][:, None] + torch.arange(size, device=block_ptr.device)[None, :]


def _map_blocks(
    values: torch.Tensor, pair_type: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor, transpose: bool
) -> torch.Tensor:
    if values.numel() == 0:
        return values.clone()
    out = torch.zeros_like(values)
    for t in torch.unique(pair_type).tolist():
        idx = torch.nonzero(pair_type == t).squeeze(1)
        size = int(desc.pair_block_size[t])
        pos = _positions(block_ptr, idx, size)
        m = change_of_basis(desc, t, values.dtype, values.device)
        out = out.index_put((pos.reshape(-1),), (values[pos] @ (m if transpose else m.T)).reshape(-1))
    return out


def irreps_to_blocks_reference(
    coeffs: torch.Tensor, pair_type: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor
) -> torch.Tensor:
    """Flat coupled irreps -> flat blocks, both on ``block_ptr``."""
    return _map_blocks(coeffs, pair_type, block_ptr, desc, transpose=False)


def blocks_to_irreps_reference(
    blocks: torch.Tensor, pair_type: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor
) -> torch.Tensor:
    """Flat blocks -> flat coupled irreps (the transpose, hence inverse, of :func:`irreps_to_blocks_reference`)."""
    return _map_blocks(blocks, pair_type, block_ptr, desc, transpose=True)


def _coupled_irreps(
    x_row: torch.Tensor,
    x_col: torch.Tensor,
    Y: torch.Tensor,
    R: torch.Tensor,
    W: torch.Tensor,
    pair_type: int,
    desc: CGDescriptor,
) -> torch.Tensor:
    """``t[e, :]``, the coupled-irreps vectors of edges of one pair type (``x_row``/``x_col``: ``(E_t, C, K)``)."""
    m = []
    for p in range(desc.n_paths):
        l1, l2, L = int(desc.path_l1[p]), int(desc.path_l2[p]), int(desc.path_L[p])
        off = int(desc.path_node_offset[p])
        x = (x_row if desc.path_side[p] == 0 else x_col)[:, :, off : off + 2 * l1 + 1]
        cg = math.sqrt(2 * L + 1) * _wigner_3j(l1, l2, L).to(dtype=Y.dtype, device=Y.device)
        m.append(torch.einsum("ecm,en,mnM->ecM", x, Y[:, l2 * l2 : (l2 + 1) ** 2], cg) * R[:, p, :, None])
    parts = []
    for s in range(desc.slot_ptr[pair_type], desc.slot_ptr[pair_type + 1]):
        part = torch.zeros(x_row.shape[0], 2 * int(desc.slot_L[s]) + 1, dtype=Y.dtype, device=Y.device)
        for row in range(desc.mix_ptr[s], desc.mix_ptr[s + 1]):
            part = part + torch.einsum("c,ecM->eM", W[row], m[desc.mix_path[row]])
        parts.append(part)
    return torch.cat(parts, dim=1)


def edge_blocks_reference(
    x: torch.Tensor,
    Y: torch.Tensor,
    R: torch.Tensor,
    W: torch.Tensor,
    edge_index: torch.Tensor,
    species: torch.Tensor,
    block_ptr: torch.Tensor,
    desc: CGDescriptor,
    symmetric: bool,
) -> torch.Tensor:
    """Flat blocks ``f(i, j, r)``, or ``(f(i, j, r) + f(j, i, -r)^T) / 2`` when ``symmetric``.

    ``f(j, i, -r)`` is evaluated literally: rows and columns swapped, ``Y_l -> (-1)^l Y_l``,
    radial weights of side 0 and side 1 swapped, weights of the reversed pair type.
    """
    n_species = desc.n_species
    src, dst = edge_index
    pair_type = species[src] * n_species + species[dst]
    parity = torch.cat(
        [torch.full((2 * l + 1,), (-1.0) ** l, dtype=Y.dtype, device=Y.device) for l in range((desc.l_sh or 0) + 1)]
    )
    swap = torch.tensor(desc.path_swap, device=R.device)
    out = torch.zeros(int(block_ptr[-1]), dtype=Y.dtype, device=Y.device)
    for t in torch.unique(pair_type).tolist():
        idx = torch.nonzero(pair_type == t).squeeze(1)
        n_rows, n_cols = int(desc.pair_n_rows[t]), int(desc.pair_n_cols[t])
        m = change_of_basis(desc, t, Y.dtype, Y.device)
        blocks = _coupled_irreps(x[src[idx]], x[dst[idx]], Y[idx], R[idx], W, t, desc) @ m.T
        if symmetric:
            t_rev = (t % n_species) * n_species + t // n_species
            m_rev = change_of_basis(desc, t_rev, Y.dtype, Y.device)
            rev = _coupled_irreps(x[dst[idx]], x[src[idx]], Y[idx] * parity, R[idx][:, swap], W, t_rev, desc) @ m_rev.T
            rev_t = rev.reshape(-1, n_cols, n_rows).transpose(1, 2).reshape(-1, n_rows * n_cols)
            blocks = 0.5 * (blocks + rev_t)
        out = out.index_put((_positions(block_ptr, idx, n_rows * n_cols).reshape(-1),), blocks.reshape(-1))
    return out


def onsite_blocks_reference(
    x: torch.Tensor, W: torch.Tensor, species: torch.Tensor, block_ptr: torch.Tensor, desc: CGDescriptor
) -> torch.Tensor:
    """Flat onsite blocks ``(B + B^T) / 2`` with ``t[(a, b, L)] = sum_rows W[row] . x[:, :, irrep of row]``."""
    out = torch.zeros(int(block_ptr[-1]), dtype=x.dtype, device=x.device)
    for s_atom in torch.unique(species).tolist():
        idx = torch.nonzero(species == s_atom).squeeze(1)
        t = s_atom * desc.n_species + s_atom
        n = int(desc.n_orb[s_atom])
        parts = []
        for s in range(desc.slot_ptr[t], desc.slot_ptr[t + 1]):
            part = torch.zeros(len(idx), 2 * int(desc.slot_L[s]) + 1, dtype=x.dtype, device=x.device)
            for row in range(desc.onsite_ptr[s], desc.onsite_ptr[s + 1]):
                off = int(desc.node_offset[desc.onsite_node[row]])
                part = part + torch.einsum("c,ecM->eM", W[row], x[idx, :, off : off + part.shape[1]])
            parts.append(part)
        blocks = (torch.cat(parts, dim=1) @ change_of_basis(desc, t, x.dtype, x.device).T).reshape(-1, n, n)
        blocks = 0.5 * (blocks + blocks.transpose(1, 2))
        out = out.index_put((_positions(block_ptr, idx, n * n).reshape(-1),), blocks.reshape(-1))
    return out
