"""What both model kinds share: the trunk, the S embedding, output scaling, and the forward pass.

``model(batch) -> HSBlocks``: flat-packed H (unshifted, eV) and S blocks on ``batch.block_ptr``,
every structure's onsite blocks first, then its canonical-half hopping blocks (the layout of
:class:`~hforge.graph.GraphBatch`, which :func:`~hforge.ops.assemble.assemble_csr` consumes).

Forward: interaction vectors -> MACE trunk (node features) -> per kind, the inputs of the H head
(descriptors) and, with ``overlap="learned"``, of the S head (a species embedding: S is a
two-centre quantity, a function of the species pair and ``r_ij`` alone) -> onsite blocks per atom,
scaled and shifted (see :mod:`hforge.models.output_scaling`) -> hopping blocks in chunks of
``config.pair_chunk`` pairs (pair vectors, radial basis, heads) -> per structure, onsite then
hopping values.  With ``overlap="exact"`` S is the two-centre integral of the basis
(:mod:`hforge.ops.two_centre`, float64) and there is no S head; with ``baseline="h0"`` the H head's
blocks are added to the physical baseline H0 of the same pairs.  Both are functions of the
geometry alone, cached on the batch (:meth:`HSModel.with_physics`).

The forward pass is three public passes, which inference composes per atom range
(:class:`hforge.infer.Predictor`): :meth:`HSModel.node_pass` (graph -> :class:`NodeState`: trunk,
head inputs, onsite blocks; O(atoms)), :meth:`HSModel.pair_pass` (state, any block pairs -> their
learned hopping blocks) and :meth:`HSModel.join` (onsite and hopping values per structure, then
:meth:`HSModel.physical_blocks`: plus H0, and the exact S).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import InputError
from hforge.graph.model_graph import GraphBatch, GraphBuilder
from hforge.io.block_statistics import StoreStatistics
from hforge.models.config import ModelConfig
from hforge.models.layers import onsite_entries
from hforge.models.output_scaling import BlockScaling
from hforge.models.trunk import MaceTrunk

__all__ = ["HSBlocks", "HSModel", "NodeState", "pair_vectors"]


@dataclass(frozen=True)
class HSBlocks:
    """Predicted flat-packed blocks on a batch's ``block_ptr``: ``h`` (unshifted H, eV; the model's
    dtype) and ``s`` (float64 when exact, else the model's dtype)."""

    h: torch.Tensor
    s: torch.Tensor


@dataclass(frozen=True, eq=False)
class NodeState:
    """What the block pairs of a graph need from its atoms (:meth:`HSModel.node_pass`), on the model's device.

    Attributes:
        positions: ``(N, 3)`` Å in the model's dtype.
        cell: ``(B, 3, 3)`` Å in the model's dtype.
        species: ``(N,)`` int64.
        graph_of_atom: ``(N,)`` int64 structure of every atom.
        heads: ``(head, inputs)`` of the learned heads: H, then S when learned.
        scales: per head, the hopping scale folded into its blocks.
        onsite: per head, ``(sum n_orb**2,)`` scaled onsite blocks of every atom, flat, atom order.
        operators: ``(N, n_p, n_p)`` the separable operator's ``D_k`` (eV) of every atom, or None
            (:mod:`hforge.models.separable`).
    """

    positions: torch.Tensor
    cell: torch.Tensor
    species: torch.Tensor
    graph_of_atom: torch.Tensor
    heads: tuple[tuple[Any, Any], ...]
    scales: tuple[torch.Tensor, ...]
    onsite: tuple[torch.Tensor, ...]
    operators: torch.Tensor | None = None


def pair_vectors(
    positions: torch.Tensor, cell: torch.Tensor, graph_of_atom: torch.Tensor, index: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``r_ij = x_j + n @ cell - x_i`` (Å) of pairs ``index (2, E)`` with shifts ``(E, 3)``, ``cell (B, 3, 3)``."""
    i, j = index
    if cell.shape[0] == 1:
        offset = shift.to(positions.dtype) @ cell[0]
    else:
        offset = torch.einsum("ek,ekl->el", shift.to(positions.dtype), cell[graph_of_atom[i]])
    return positions[j] - positions[i] + offset


class HSModel(torch.nn.Module):
    """Base of :class:`~hforge.models.EquivariantHSModel` and :class:`~hforge.models.InvariantHSModel`.

    Args:
        config: the architecture.
        basis: a basis holding (at least) the config's species; kept restricted to them.
        statistics: training-data statistics for the output scaling (None: unit scale, no shift).

    Subclasses set ``h_head`` and, when :attr:`learns_overlap`, ``s_head`` (with
    ``onsite(inputs, species)`` giving unscaled onsite blocks, ``hopping_scale(scaling)`` and
    ``hopping(inputs, species, pair_index, vectors, distances, scale)`` giving scaled hopping
    blocks) and implement :meth:`head_inputs`.
    """

    def __init__(self, config: ModelConfig, basis: BasisSet, statistics: StoreStatistics | None = None) -> None:
        super().__init__()
        self.config = config
        self.basis = config.check_basis(basis)
        self.register_buffer("n_orb", torch.as_tensor(self.basis.n_orbitals), persistent=False)
        self.trunk = MaceTrunk(config)
        self.scaling = BlockScaling(self.basis, statistics)
        self.s_embedding = None
        self.s_head = None
        if config.baseline != "none":
            from hforge.ops.two_centre import operator_coefficients, plain_coefficients

            # the coefficients of the baseline's parts per block type (hforge.models.baseline): fitted
            # for "h0", unit T and V_KB plus the energy zero c0 S (fitted) for "operator"
            table = plain_coefficients(self.basis) if config.baseline == "h0" else operator_coefficients(self.basis, 0.0)
            self.register_buffer("baseline_coef", torch.from_numpy(table))
        self.separable = None
        if self.learns_overlap:
            self.s_embedding = torch.nn.Embedding(len(self.basis), config.s_channels)
            torch.nn.init.normal_(self.s_embedding.weight)

    def _build_separable(self, head: torch.nn.Module | None) -> None:
        """Subclasses call this with their ``D_env`` head when ``config.separable``."""
        from hforge.models.separable import SeparableTerm

        self.separable = SeparableTerm(self.config.projectors, len(self.basis), head)

    # ---- to implement -------------------------------------------------------------------------
    def head_inputs(
        self, features: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
        chunk: int | None = None,
    ) -> tuple[Any, Any]:
        """Trunk features ``(N, irreps)`` (and the interaction graph) -> inputs of the H head and of
        the S head (None without one); sums over the interaction edges taken ``chunk`` edges at a time."""
        raise NotImplementedError


    # ---- shared ---------------------------------------------------------------------------------
    @property
    def learns_overlap(self) -> bool:
        """True when S comes from an S head (``overlap="learned"``), False when it is exact."""
        return self.config.overlap == "learned"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.trunk.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.trunk.parameters()).device

    @property
    def baseline_coefficients(self) -> np.ndarray | None:
        """``(4, 2, S, S, A, A)`` float64 coefficients of the baseline's parts, or None without a baseline."""
        coef = getattr(self, "baseline_coef", None)
        return None if coef is None else coef.detach().cpu().to(torch.float64).numpy()

    def with_physics(self, batch: GraphBatch) -> GraphBatch:
        """``batch`` with the exact S and the baseline H0 of its block pairs (float64, CPU) filled
        in where the config uses them and the batch lacks them (one two-centre evaluation per
        structure, :mod:`hforge.ops.two_centre`; trainers call this once per structure)."""
        from hforge.ops.two_centre import baseline_blocks, overlap_blocks

        wanted = {"exact_s": not self.learns_overlap, "baseline_h": self.config.baseline != "none"}
        missing = [name for name, used in wanted.items() if used and getattr(batch, name) is None]
        if not missing:
            return batch
        parts: dict[str, list[np.ndarray]] = {name: [] for name in missing}
        for b in range(batch.n_graphs):
            arrays = batch.structure(b)
            edge, shift, ptr = batch.structure_pairs(b)
            geometry = (self.basis, arrays.species, arrays.positions, arrays.cell)
            if "exact_s" in parts:
                parts["exact_s"].append(overlap_blocks(*geometry, edge, shift, block_ptr=ptr))
            if "baseline_h" in parts:
                parts["baseline_h"].append(
                    baseline_blocks(*geometry, arrays.pbc, edge, shift, block_ptr=ptr, coefficients=self.baseline_coefficients)
                )
        return replace(batch, **{name: torch.from_numpy(np.concatenate(values)) for name, values in parts.items()})

    @property
    def entry_ptr(self) -> torch.Tensor:
        """``(n_species**2 + 1,)`` offsets of every pair type's entries in the scaling's entry tables."""
        sizes = (self.n_orb[:, None] * self.n_orb[None, :]).reshape(-1)
        return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])

    def graph_builder(self, *, spin: int | None = None) -> GraphBuilder:
        """The :class:`~hforge.graph.GraphBuilder` of this model (its basis, ``r_max`` and pair cut-offs)."""
        return GraphBuilder(self.basis, r_max=self.config.r_max, include_kb=self.config.include_kb, spin=spin)

    def _onsite(self, head: Any, inputs: Any, species: torch.Tensor, matrix: str) -> torch.Tensor:
        raw = head.onsite(inputs, species)
        ptr = self.entry_ptr
        scale = onsite_entries(self.scaling.entry_scale(matrix, onsite=True).to(raw.dtype), ptr, self.n_orb, species)
        shift = onsite_entries(self.scaling.entry_shift(matrix).to(raw.dtype), ptr, self.n_orb, species)
        return raw * scale + shift

    # ---- the passes: forward = node_pass + pair_pass + join --------------------------------------
    def node_pass(self, batch: GraphBatch, *, chunk: int | None = None) -> NodeState:
        """The per-atom part of the forward pass on ``batch`` (on the model's device): interaction
        vectors, trunk, the learned heads' inputs and their scaled onsite blocks.

        Cost O(atoms + interaction edges); the block pairs of ``batch`` are not read.  Every sum
        over interaction edges (the trunk's messages, environment terms) is taken ``chunk`` edges
        at a time when given: the same state to float rounding, with working memory O(atoms +
        chunk) beyond the edge list (inference of large cells) instead of O(edges x feature width).

        Raises:
            InputError: species outside the model's basis.
        """
        if batch.species.numel() and int(batch.species.max()) >= len(self.basis):
            raise InputError(f"batch species index {int(batch.species.max())} outside the model's {len(self.basis)} species")
        device = self.device
        positions, cell = batch.positions.to(device, self.dtype), batch.cell.to(device, self.dtype)
        species, graph_of_atom = batch.species.to(device), batch.batch.to(device)
        edge_index = batch.edge_index.to(device)
        vectors = pair_vectors(positions, cell, graph_of_atom, edge_index, batch.edge_shift.to(device))
        features = self.trunk(species, vectors, edge_index, chunk)
        h_inputs, s_inputs = self.head_inputs(features, species, edge_index, vectors, chunk)
        named = [(self.h_head, h_inputs, "h")] if self.config.free_blocks else []
        named += [(self.s_head, s_inputs, "s")] if self.learns_overlap else []
        operators = None
        if self.separable is not None:
            from hforge.models.separable import OperatorInputs

            onsite = getattr(h_inputs, "onsite", None) if self.config.kind == "invariant" else None
            operators = self.separable(OperatorInputs(features, edge_index, vectors, chunk, onsite), species)
        return NodeState(
            positions=positions, cell=cell, species=species, graph_of_atom=graph_of_atom,
            heads=tuple((head, inputs) for head, inputs, _ in named),
            scales=tuple(head.hopping_scale(self.scaling) for head, _, _ in named),
            onsite=tuple(self._onsite(head, inputs, species, name) for head, inputs, name in named),
            operators=operators,
        )

    def pair_pass(
        self, state: NodeState, pair_index: torch.Tensor, pair_shift: torch.Tensor, *, chunk: int | None = None
    ) -> list[torch.Tensor]:
        """Hopping blocks of the learned heads (H, then S when learned) for the block pairs
        ``pair_index (2, E)`` (atoms of ``state``) with cell shifts ``pair_shift (E, 3)``: one flat
        tensor per head in the model's dtype, the pairs' blocks in order (before any baseline).

        Evaluated ``chunk`` (default ``config.pair_chunk``) pairs at a time: bounded temporaries
        (about 7 KB per pair in the default config's radial weights); a pair's blocks depend on
        its atoms' state alone, so any subset of pairs gives the same blocks.
        """
        device = state.positions.device
        pair_index, pair_shift = pair_index.to(device), pair_shift.to(device)
        parts: list[list[torch.Tensor]] = [[] for _ in state.heads]
        chunk = chunk or self.config.pair_chunk
        for start in range(0, pair_index.shape[1], chunk):
            index = pair_index[:, start : start + chunk]
            r = pair_vectors(state.positions, state.cell, state.graph_of_atom, index, pair_shift[start : start + chunk])
            distances = torch.linalg.norm(r, dim=1)
            for out, (head, inputs), scale in zip(parts, state.heads, state.scales):
                out.append(head.hopping(inputs, state.species, index, r, distances, scale))
        empty = state.positions.new_zeros(0)
        return [torch.cat(p) if len(p) > 1 else p[0] if p else empty for p in parts]

    def join(self, batch: GraphBatch, state: NodeState, hopping: Sequence[torch.Tensor]) -> HSBlocks:
        """The blocks of every block pair of ``batch``: per structure its onsite then hopping
        values (``state.onsite`` and ``hopping`` of :meth:`pair_pass` on ``batch.hopping_pairs()``),
        plus the batch's baseline H0, with its exact S when the model does not learn S."""
        values = [self._interleave(batch, on, hop) for on, hop in zip(state.onsite, hopping)]
        if not self.config.free_blocks:
            values.insert(0, state.positions.new_zeros(int(batch.block_ptr[-1])))
        if state.operators is not None:
            values[0] = values[0] + self.separable_blocks(batch, state.operators)
        return self.physical_blocks(values, batch.baseline_h, batch.exact_s)

    def separable_blocks(self, batch: GraphBatch, operators: torch.Tensor) -> torch.Tensor:
        """The separable operator's blocks (eV, flat on ``batch.block_ptr``; differentiable in
        ``operators (N, n_p, n_p)``) of every block pair of ``batch``, structure by structure."""
        from hforge.ops.two_centre.separable import SeparableContext

        parts = []
        for b in range(batch.n_graphs):
            a = batch.structure(b)
            context = SeparableContext(self.basis, self.config.projectors, a.species, a.positions, a.cell, a.pbc)
            edge, shift, ptr = batch.structure_pairs(b)
            a0, a1 = int(batch.atom_ptr[b]), int(batch.atom_ptr[b + 1])
            parts.append(context.torch_blocks(edge, shift, ptr, operators[a0:a1]))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def physical_blocks(
        self, learned: Sequence[torch.Tensor], baseline_h: torch.Tensor | None, exact_s: torch.Tensor | None
    ) -> HSBlocks:
        """H and S of some block pairs from the learned heads' blocks on them (H, then S when
        learned; the model's dtype and device): H is the learned H plus the baseline H0 when
        given (added in the model's dtype), S the learned S or, with ``overlap="exact"``, ``exact_s``.
        Without free blocks (``config.free_blocks`` off) ``learned`` may lack H: H is then the
        baseline alone (inference adds the separable operator to it, :mod:`hforge.infer`)."""
        with_h = len(learned) > int(self.learns_overlap)
        if not with_h and baseline_h is None:
            raise InputError("physical_blocks: neither learned H blocks nor a baseline")
        if with_h:
            h = learned[0] if baseline_h is None else learned[0] + baseline_h.to(learned[0].device, self.dtype)
        else:
            h = baseline_h.to(self.device, self.dtype)
        s = learned[-1] if self.learns_overlap else exact_s.to(h.device)
        return HSBlocks(h=h, s=s)

    def forward(self, batch: GraphBatch) -> HSBlocks:
        """Predicted H and S blocks of every block pair of ``batch`` (see the module docstring):
        :meth:`node_pass`, :meth:`pair_pass` on the hopping pairs, :meth:`join`."""
        batch = self.with_physics(batch)
        state = self.node_pass(batch)
        hop = batch.hopping_pairs()
        hopping = self.pair_pass(state, batch.pair_index[:, hop], batch.pair_shift[hop])
        return self.join(batch.to(self.device), state, hopping)

    @staticmethod
    def _interleave(batch: GraphBatch, onsite: torch.Tensor, hopping: torch.Tensor) -> torch.Tensor:
        """Per structure: its onsite values, then its hopping values."""
        if batch.n_graphs == 1:
            return torch.cat([onsite, hopping])
        first_hop = batch.pair_ptr[:-1] + torch.diff(batch.atom_ptr)
        onsite_sizes = (batch.block_ptr[first_hop] - batch.block_ptr[batch.pair_ptr[:-1]]).tolist()
        hop_sizes = (batch.block_ptr[batch.pair_ptr[1:]] - batch.block_ptr[first_hop]).tolist()
        pieces = zip(torch.split(onsite, onsite_sizes), torch.split(hopping, hop_sizes))
        return torch.cat([part for pair in pieces for part in pair])
