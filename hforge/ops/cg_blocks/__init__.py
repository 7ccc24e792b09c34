r"""Fused Clebsch-Gordan block kernels: equivariant features -> orbital blocks of H and S.

All blocks are flat-packed (docs/design.md): the block of pair ``e`` (``n_orb[s_i] x n_orb[s_j]``,
row-major, orbitals shell by shell in the output convention) is
``values[block_ptr[e]:block_ptr[e + 1]]``.  Coefficients, paths and weight layouts live in a
:class:`~hforge.ops.cg_blocks.descriptor.CGDescriptor` (see its module for every table).

Math (``C^{l1 l2 L}`` = ``e3nn.o3.wigner_3j``; ``Q_s`` the slot's change of basis, see the descriptor)

``irreps_to_blocks``  (per pair, an orthogonal linear map; ``blocks_to_irreps`` is its transpose)
    ``B[row0_a + i, col0_b + j] = sum_{s=(a,b,L)} sum_M Q_s[i, j, M] t[offset_s + M]``

``edge_blocks``  (pair ``e = (i, j)``, ``r_ij = positions[j] + shift - positions[i]``)
    node features ``x[n, c, k]`` (channel-wise: ``k`` runs over the node irreps' components),
    ``Y[e]`` the spherical harmonics of ``r_ij`` up to ``l_sh`` (e3nn order, any normalization),
    radial weights ``R[e, p, c]``, mixing weights ``W[row, c]``; for every path
    ``p = (side, q, l2, L)`` with ``n_p = i`` (side 0) or ``j`` (side 1)::

        m[e, p, c, M] = R[e, p, c] sum_{m1, m2} sqrt(2L+1) C^{l1 l2 L}[m1, m2, M] x[n_p, c, off_q + m1] Y[e, l2^2 + m2]
        t[e, s, M]    = sum_{rows of slot s} sum_c W[row, c] m[e, path(row), c, M]
        B[e]          = irreps_to_blocks(t[e])                           =: f(i, j, r_ij)

    ``symmetric=True`` returns ``(f(i, j, r) + f(j, i, -r)^T) / 2`` where ``f(j, i, -r)`` uses
    the weights of the reversed pair type, ``Y(-r) = (-1)^l Y(r)`` and the radial weights with
    side-0 and side-1 paths swapped (``R[:, path_swap]``).  Transposition relabels slots
    ``(a, b, L) -> (b, a, L)`` with sign ``(-1)^(l_a + l_b - L)``, so this is ``f`` with the
    symmetrized weights ``W_sym = (W + mix_sign * W[mix_partner]) / 2`` (:func:`symmetrize_weights`)
    at no extra cost per edge.  Then the block of ``(j, i, -n)`` is the transpose of the block
    of ``(i, j, n)`` whenever the caller's radial weights satisfy
    ``R(j, i, -n) = R(i, j, n)[:, path_swap]`` (true when they depend on ``|r|`` only and are
    the same for both sides, or on the unordered species pair).

``onsite_blocks``  (atom ``i``, from its node features alone)
    ``t[i, s, M] = sum_{rows of s} sum_c W_on[row, c] x[i, c, off_{q(row)} + M]``,
    ``B = (irreps_to_blocks(t) + irreps_to_blocks(t)^T) / 2`` (symmetric by construction).
    A per-species GEMM with the folded matrix ``(C K, n_orb^2)``; no custom kernel is needed.

Equivariance: with ``x`` rotated by e3nn's ``D`` (per node irrep, parity included) and
``r -> g r``, every block ``(a, b)`` becomes ``D'_{l_a} B D'_{l_b}^T``, ``D'_l = U_l D_l U_l^T``.

Backends (``backend=``): ``torch`` (the readable reference, autograd everywhere), ``numba``
(CPU, parallel, float32/float64), ``triton`` (GPU; CPU under ``TRITON_INTERPRET=1``); no ``cupy``
backend yet.  ``auto`` picks numba on CPU and triton on CUDA tensors.  The fused ``edge_blocks``
backends differentiate ``x``, ``Y``, ``R`` and ``W`` (each only when it requires grad) once: a
second derivative raises.  ``irreps_to_blocks`` is linear and differentiable to any order.
"""

from __future__ import annotations

from typing import Any

import torch

from hforge.errors import InputError, UnknownSpeciesError
from hforge.ops.backends import resolve_backend
from hforge.ops.cg_blocks.descriptor import CGDescriptor, cg_descriptor, parse_node_irreps

__all__ = [
    "CGDescriptor",
    "block_pointer",
    "blocks_to_irreps",
    "cg_descriptor",
    "channelwise_from_e3nn",
    "edge_blocks",
    "irreps_to_blocks",
    "onsite_blocks",
    "symmetrize_weights",
]

_IMPLEMENTED = ("triton", "numba", "torch")


_CHUNK_PAIRS = 1 << 12  # pairs per step of the block-pointer computation and check (bounded temporaries)


def _check_pair_species(pair_species: torch.Tensor) -> None:
    if pair_species.ndim != 2 or pair_species.shape[0] != 2:
        raise InputError(f"pair species must have shape (2, E), got {tuple(pair_species.shape)}")


def _pair_type(species_i: torch.Tensor, species_j: torch.Tensor, desc: CGDescriptor) -> torch.Tensor:
    """Pair types ``species_i * n_species + species_j`` (int64), species checked."""
    for species in (species_i, species_j):
        if species.numel() and (species.min() < 0 or species.max() >= desc.n_species):
            raise UnknownSpeciesError(f"species index outside 0..{desc.n_species - 1} of the descriptor")
    return (species_i * desc.n_species + species_j).to(torch.int64).contiguous()


def _block_ptr(pair_species_of, n_pairs: int, desc: CGDescriptor, device, block_ptr: torch.Tensor | None = None) -> torch.Tensor:
    """``(n_pairs + 1,)`` int64 block offsets: computed when ``block_ptr`` is None, else checked and returned.

    ``pair_species_of(a, b)`` gives the species ``(species_i, species_j)`` of the pairs ``a:b``.
    Pairs are taken ``_CHUNK_PAIRS`` at a time, so that no temporary of the size of the pair list
    is made besides the result (the numba edge forward's peak memory is its output).  Gathers go
    through ``index_select``: on CPU, advanced indexing starts the thread pool even for small
    tensors (measured 12 ms per call on 2 cores, against 6 us).
    """
    if block_ptr is None:
        out = torch.zeros(n_pairs + 1, dtype=torch.int64, device=device)
    elif block_ptr.shape != (n_pairs + 1,) or int(block_ptr[0]) != 0:
        raise InputError("block_ptr must start at 0 and match the block sizes of the pairs' species")
    else:
        out = block_ptr.to(torch.int64).contiguous()
    sizes = desc.tables(device, torch.float32)["pair_block_size"]
    for a in range(0, n_pairs, _CHUNK_PAIRS):
        b = min(a + _CHUNK_PAIRS, n_pairs)
        block_sizes = sizes.index_select(0, _pair_type(*pair_species_of(a, b), desc))
        if block_ptr is None:
            out[a + 1 : b + 1] = torch.cumsum(block_sizes, 0) + out[a]
        elif not torch.equal(out[a + 1 : b + 1] - out[a:b], block_sizes):
            raise InputError("block_ptr must start at 0 and match the block sizes of the pairs' species")
    return out


def block_pointer(pair_species: torch.Tensor, desc: CGDescriptor) -> torch.Tensor:
    """``(E + 1,)`` int64 offsets of the flat-packed blocks of pairs with species ``pair_species (2, E)``."""
    return _check_block_ptr(None, pair_species, desc)


def _check_block_ptr(block_ptr: torch.Tensor | None, pair_species: torch.Tensor, desc: CGDescriptor) -> torch.Tensor:
    _check_pair_species(pair_species)
    return _block_ptr(lambda a, b: pair_species[:, a:b], pair_species.shape[1], desc, pair_species.device, block_ptr)


def _backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    return resolve_backend(backend, on_gpu=tensor.is_cuda, implemented=_IMPLEMENTED, op=op)


class _LinearMap(torch.autograd.Function):
    """``Q`` (``transpose=False``: irreps -> blocks) or ``Q^T`` through a backend's kernel; each is the other's backward."""

    @staticmethod
    def forward(ctx, values, kernel, pair_type, block_ptr, desc, transpose):
        ctx.saved = (kernel, pair_type, block_ptr, desc, transpose)
        return kernel(values, pair_type, block_ptr, desc, transpose)

    @staticmethod
    def backward(ctx, grad):
        kernel, pair_type, block_ptr, desc, transpose = ctx.saved
        return _LinearMap.apply(grad, kernel, pair_type, block_ptr, desc, not transpose), None, None, None, None, None


def _map(values: torch.Tensor, pair_species: torch.Tensor, desc: CGDescriptor, block_ptr, backend: str, transpose: bool, op: str):
    block_ptr = _check_block_ptr(block_ptr, pair_species, desc)  # checks pair_species too
    pair_type = _pair_type(pair_species[0], pair_species[1], desc)
    if values.shape != (int(block_ptr[-1]),):
        raise InputError(f"{op}: values of shape {tuple(values.shape)}, expected ({int(block_ptr[-1])},) for these pairs")
    name = _backend(backend, values, op)
    if name == "numba":
        from hforge.ops.cg_blocks.numba import apply_q_numba

        return _LinearMap.apply(values, apply_q_numba, pair_type, block_ptr, desc, transpose)
    if name == "triton":
        from hforge.ops.cg_blocks.triton import apply_q_triton

        return _LinearMap.apply(values, apply_q_triton, pair_type, block_ptr, desc, transpose)
    from hforge.ops.cg_blocks import reference

    fn = reference.blocks_to_irreps_reference if transpose else reference.irreps_to_blocks_reference
    return fn(values, pair_type, block_ptr, desc)


def irreps_to_blocks(
    coeffs: torch.Tensor,
    pair_species: torch.Tensor,
    desc: CGDescriptor,
    *,
    block_ptr: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Flat coupled-irreps vectors -> flat orbital blocks (same ``block_ptr``).

    Args:
        coeffs: ``(block_ptr[-1],)`` float32/float64; pair ``e``'s coupled irreps (slot order of the
            descriptor, ``desc.irreps_of_pair(s_i, s_j)``) at ``block_ptr[e]:block_ptr[e + 1]``.
        pair_species: ``(2, E)`` int64 species indices of the row and column atom of each pair.
        desc: the basis' :func:`cg_descriptor`.
        block_ptr: ``(E + 1,)`` offsets (computed from ``pair_species`` when omitted).
        backend: ``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"``.
    """
    return _map(coeffs, pair_species, desc, block_ptr, backend, False, "irreps_to_blocks")


def blocks_to_irreps(
    blocks: torch.Tensor,
    pair_species: torch.Tensor,
    desc: CGDescriptor,
    *,
    block_ptr: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Flat orbital blocks -> flat coupled irreps: the inverse (= transpose) of :func:`irreps_to_blocks`."""
    return _map(blocks, pair_species, desc, block_ptr, backend, True, "blocks_to_irreps")


def channelwise_from_e3nn(features: torch.Tensor, irreps: Any) -> torch.Tensor:
    """e3nn-layout node features ``(N, sum mul (2l+1))`` (``"Cx0e+Cx1o+..."``) -> ``(N, C, K)``."""
    spec, channels = parse_node_irreps(irreps)
    if channels is None:
        raise InputError(f"irreps {irreps!r}: give the multiplicity, e.g. '32x0e+32x1o'")
    parts, start = [], 0
    for l, _ in spec:
        width = channels * (2 * l + 1)
        parts.append(features[:, start : start + width].reshape(-1, channels, 2 * l + 1))
        start += width
    if start != features.shape[-1]:
        raise InputError(f"features of width {features.shape[-1]} do not match irreps {irreps} ({start})")
    return torch.cat(parts, dim=2)


def symmetrize_weights(W: torch.Tensor, desc: CGDescriptor) -> torch.Tensor:
    """``W_sym = (W + mix_sign * W[mix_partner]) / 2``: edge weights whose ``f`` equals ``(f(i,j,r) + f(j,i,-r)^T) / 2``
    (``W (n_mix, C)``, or ``(K, n_mix, C)``: every set)."""
    tb = desc.tables(W.device, W.dtype)
    return 0.5 * (W + tb["mix_sign"][:, None] * W.index_select(-2, tb["mix_partner"]))


def _check_edge_inputs(x, Y, R, W, edge_index, species, desc: CGDescriptor) -> None:
    if desc.l_sh is None:
        raise InputError("edge_blocks: the descriptor was built without l_sh (no edge paths)")
    n_nodes, channels = x.shape[0], x.shape[1] if x.ndim == 3 else -1
    n_edges = edge_index.shape[1] if edge_index.ndim == 2 else -1
    expected = {
        "x": (x, (n_nodes, channels, desc.node_dim)),
        "Y": (Y, (n_edges, desc.n_sh)),
        "R": (R, (n_edges, desc.n_paths, channels)),
        "W": (W, (desc.n_mix, channels) if W.ndim != 3 else (W.shape[0], desc.n_mix, channels)),
        "edge_index": (edge_index, (2, n_edges)),
        "species": (species, (n_nodes,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise InputError(
                f"edge_blocks: {name} has shape {tuple(tensor.shape)}, expected {shape} (N, E, C inferred from x and edge_index)"
            )
    if x.dtype not in (torch.float32, torch.float64) or any(t.dtype != x.dtype for t in (Y, R, W)):
        raise InputError(
            "edge_blocks: x, Y, R, W need one float dtype (float32 or float64), "
            f"got {x.dtype}, {Y.dtype}, {R.dtype}, {W.dtype}"
        )
    if n_edges and (edge_index.min() < 0 or edge_index.max() >= n_nodes):
        raise InputError(f"edge_blocks: edge_index refers to atoms outside 0..{n_nodes - 1}")


def edge_blocks(
    x: torch.Tensor,
    Y: torch.Tensor,
    R: torch.Tensor,
    W: torch.Tensor,
    edge_index: torch.Tensor,
    species: torch.Tensor,
    desc: CGDescriptor,
    *,
    symmetric: bool = False,
    block_ptr: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused tensor product, channel mixing and change of basis: one orbital block per edge.

    Args:
        x: ``(N, C, K)`` node features, channel-wise, ``K = desc.node_dim`` components of the
            descriptor's node irreps (:func:`channelwise_from_e3nn` converts e3nn's layout).
        Y: ``(E, (l_sh + 1)^2)`` spherical harmonics of ``r_ij`` (e3nn order).
        R: ``(E, desc.n_paths, C)`` radial weights per edge, path and channel.
        W: ``(desc.n_mix, C)`` mixing weights (rows: pair type, slot, path; see the descriptor),
            or ``(K, desc.n_mix, C)``: ``K`` weight sets of the same messages (the numba backend
            computes each pair's messages once for all sets when no gradient is needed).
        edge_index: ``(2, E)`` int64 row atom ``i`` and column atom ``j`` of each pair.
        species: ``(N,)`` int64 species index of every atom (into ``desc.species_shells``).
        desc: :func:`cg_descriptor` with ``node_irreps`` and ``l_sh``.
        symmetric: return ``(f(i, j, r) + f(j, i, -r)^T) / 2`` (see the module docstring).
        block_ptr: ``(E + 1,)`` block offsets (computed when omitted).
        backend: ``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"``.

    Returns:
        ``(block_ptr[-1],)`` flat blocks in ``x``'s dtype; ``(K, block_ptr[-1])`` for ``K`` weight sets.
    """
    _check_edge_inputs(x, Y, R, W, edge_index, species, desc)
    # species of the pairs a chunk at a time: the numba forward's only large allocation is its output
    pair_species_of = lambda a, b: (species.index_select(0, edge_index[0, a:b]), species.index_select(0, edge_index[1, a:b]))  # noqa: E731
    block_ptr = _block_ptr(pair_species_of, edge_index.shape[1], desc, x.device, block_ptr)
    name = _backend(backend, x, "edge_blocks")
    fused_sets = name == "numba" and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, Y, R, W)))
    if W.ndim == 3 and not fused_sets:  # one call per set (autograd, or a backend without the fused sets)
        return torch.stack([
            edge_blocks(x, Y, R, weights, edge_index, species, desc, symmetric=symmetric, block_ptr=block_ptr, backend=name)
            for weights in W
        ])
    if name == "torch":
        from hforge.ops.cg_blocks.reference import edge_blocks_reference

        return edge_blocks_reference(x, Y, R, W, edge_index, species, block_ptr, desc, symmetric)
    if symmetric:
        W = symmetrize_weights(W, desc)
    edge_index = edge_index.to(torch.int64)
    args = (
        x.contiguous(), Y.contiguous(), R.contiguous(), W.contiguous(), edge_index[0].contiguous(),
        edge_index[1].contiguous(), species.to(torch.int64).contiguous(), block_ptr, desc,
    )  # rows of a contiguous edge_index are contiguous: no copies
    if name == "numba":
        from hforge.ops.cg_blocks.numba import EdgeBlocksNumba, edge_blocks_forward_numba

        return edge_blocks_forward_numba(*args) if W.ndim == 3 else EdgeBlocksNumba.apply(*args)
    from hforge.ops.cg_blocks.triton import EdgeBlocksTriton

    return EdgeBlocksTriton.apply(*args)


def onsite_matrix(W: torch.Tensor, species_index: int, desc: CGDescriptor) -> torch.Tensor:
    """``(C * K, n_orb^2)`` matrix folding onsite weights and ``Q`` of one species: ``B.ravel() = x.ravel() @ M``."""
    t = species_index * desc.n_species + species_index
    tb = desc.tables(W.device, W.dtype)
    size = int(desc.pair_block_size[t])
    rows = tb["qb_ptr"][int(desc.pair_entry_ptr[t]) : int(desc.pair_entry_ptr[t + 1]) + 1]
    q = slice(int(rows[0]), int(rows[-1]))
    dense_q = torch.zeros(size, size, dtype=W.dtype, device=W.device)  # (irrep index, block index)
    dense_q[tb["qb_index"][q], torch.repeat_interleave(torch.arange(size, device=W.device), torch.diff(rows))] = tb["qb_val"][q]
    rows = torch.arange(int(desc.onsite_ptr[desc.slot_ptr[t]]), int(desc.onsite_ptr[desc.slot_ptr[t + 1]]), device=W.device)
    dims = 2 * tb["slot_L"][tb["onsite_slot"][rows]] + 1
    row = torch.repeat_interleave(rows, dims)
    m = torch.arange(row.shape[0], device=W.device) - torch.repeat_interleave(torch.cumsum(dims, 0) - dims, dims)
    irrep = tb["slot_offset"][tb["onsite_slot"][row]] + m
    component = tb["node_offset"][tb["onsite_node"][row]] + m
    channels = W.shape[1]
    folded = torch.zeros(desc.node_dim, channels, size, dtype=W.dtype, device=W.device)
    folded = folded.index_add(0, component, W[row][:, :, None] * dense_q[irrep][:, None, :])
    return folded.transpose(0, 1).reshape(channels * desc.node_dim, size)


def onsite_blocks(
    x: torch.Tensor,
    W: torch.Tensor,
    species: torch.Tensor,
    desc: CGDescriptor,
    *,
    block_ptr: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Symmetric onsite blocks, linear in each atom's node features.

    Args:
        x: ``(N, C, K)`` node features (channel-wise, as in :func:`edge_blocks`).
        W: ``(desc.n_onsite, C)`` onsite weights (rows: species' slots, node irreps of the slot's key).
        species: ``(N,)`` int64 species indices.
        desc: :func:`cg_descriptor` with ``node_irreps``.
        block_ptr: ``(N + 1,)`` offsets of the ``n_orb x n_orb`` blocks (computed when omitted).
        backend: ``"auto"`` or ``"torch"`` (per-species GEMMs, on any device); ``"torch"`` is also the
            only one: the oracle is :func:`~hforge.ops.cg_blocks.reference.onsite_blocks_reference`.

    Returns:
        ``(block_ptr[-1],)`` flat blocks, exactly symmetric.
    """
    resolve_backend(backend, on_gpu=x.is_cuda, implemented=("torch",), op="onsite_blocks")
    if x.ndim != 3 or x.shape[2] != desc.node_dim or W.shape != (desc.n_onsite, x.shape[1]) or species.shape != (x.shape[0],):
        raise InputError(
            f"onsite_blocks: x {tuple(x.shape)}, W {tuple(W.shape)}, species {tuple(species.shape)}; expected "
            f"(N, C, {desc.node_dim}), ({desc.n_onsite}, C), (N,)"
        )
    pair_species = torch.stack([species, species])
    block_ptr = _check_block_ptr(block_ptr, pair_species, desc)
    out = torch.zeros(int(block_ptr[-1]), dtype=x.dtype, device=x.device)
    for s in torch.unique(species).tolist():
        idx = torch.nonzero(species == s).squeeze(1)
        n = int(desc.n_orb[s])
        blocks = (x[idx].reshape(len(idx), -1) @ onsite_matrix(W, s, desc)).reshape(-1, n, n)
        blocks = 0.5 * (blocks + blocks.transpose(1, 2))
        positions = block_ptr[idx][:, None] + torch.arange(n * n, device=x.device)[None, :]
        out = out.index_put((positions.reshape(-1),), blocks.reshape(-1))
    return out
