"""Random-rotation augmentation of model graphs (positions, cells and the target blocks together).

A rotation ``R`` (proper, acting on column vectors) maps positions ``x -> R x`` and lattice
vectors alike; pairs, shifts and block layout are unchanged, and every target block becomes
``D_i(R) B D_j(R)^T`` with SIESTA-convention real Wigner matrices
(:func:`hforge.basis.conventions.species_rotation`).  An equivariant model is unaffected; the
non-equivariant baseline can learn rotations from it (the trainer rotates every step, ``training.augment_rotations``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.basis.conventions import species_rotation
from hforge.errors import InputError
from hforge.graph.model_graph import GraphBatch

__all__ = ["rotate_flat_blocks", "rotate_graph"]


def rotate_flat_blocks(
    values: torch.Tensor, pair_species: torch.Tensor, block_ptr: torch.Tensor, matrices: list[torch.Tensor]
) -> torch.Tensor:
    """``D_i B D_j^T`` for every flat-packed block.

    Args:
        values: ``(block_ptr[-1],)`` blocks.
        pair_species: ``(2, E)`` species of the row and column atom of every block.
        block_ptr: ``(E + 1,)`` offsets.
        matrices: per species, its ``(n_orb, n_orb)`` orbital rotation ``D`` (values' dtype).
    """
    out = values.clone()
    n_species = len(matrices)
    pair_type = pair_species[0] * n_species + pair_species[1]
    for t in torch.unique(pair_type).tolist():
        a, b = divmod(t, n_species)
        rows, cols = matrices[a].shape[0], matrices[b].shape[0]
        idx = torch.nonzero(pair_type == t).squeeze(1)
        positions = block_ptr[idx][:, None] + torch.arange(rows * cols)[None, :]
        blocks = values[positions].view(-1, rows, cols)
        out[positions] = (matrices[a] @ blocks @ matrices[b].T).reshape(positions.shape)
    return out


def rotate_graph(graph: GraphBatch, rotations: np.ndarray, basis: BasisSet) -> GraphBatch:
    """The graph with structure ``b`` rotated by ``rotations[b]`` (``(B, 3, 3)`` or one ``(3, 3)``), targets included."""
    rotations = np.broadcast_to(np.asarray(rotations, dtype=np.float64), (graph.n_graphs, 3, 3))
    if not np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-10) or np.any(np.linalg.det(rotations) < 0):
        raise InputError("rotate_graph: rotations must be proper orthogonal 3x3 matrices")
    r = torch.tensor(rotations)  # a copy: broadcast_to gives a read-only view
    positions = torch.einsum("nk,nlk->nl", graph.positions, r[graph.batch])
    cell = torch.einsum("bik,blk->bil", graph.cell, r)
    targets = {}
    names = [name for name in ("h", "s", "baseline_h", "exact_s") if getattr(graph, name) is not None]
    if names:
        values = {name: getattr(graph, name).clone() for name in names}
        for b in range(graph.n_graphs):
            p0, p1 = int(graph.pair_ptr[b]), int(graph.pair_ptr[b + 1])
            v0, v1 = int(graph.block_ptr[p0]), int(graph.block_ptr[p1])
            matrices = [torch.tensor(species_rotation(sp, rotations[b])) for sp in basis]
            pair_species = graph.species[graph.pair_index[:, p0:p1]]
            ptr = graph.block_ptr[p0 : p1 + 1] - v0
            for name in values:
                values[name][v0:v1] = rotate_flat_blocks(values[name][v0:v1], pair_species, ptr, matrices)
        targets = values
    return replace(graph, positions=positions, cell=cell, **targets)
