r"""The equivariant model: MACE trunk -> Clebsch-Gordan blocks through the fused kernels.

Hopping block of a canonical pair ``(i, j, n)`` (one head per matrix, :class:`EquivariantHead`),
``hforge.ops.cg_blocks.edge_blocks`` in symmetric mode::

    m[p, c, M] = R_p,c(i, j, r) sum sqrt(2L+1) C^{l1 l2 L} x[n_p, c, l1] Y_l2(r / |r|)
    B          = (f(i, j, r) + f(j, i, -r)^T) / 2,   f = Q (sum_{p, c} W[type, slot, p, c] m[p, c])

with ``x`` the atoms' channel-wise node features (row atom for side-0 paths, column atom for
side-1), ``Y`` e3nn's spherical harmonics of the pair direction up to ``pair_l_max`` (4: d-d needs
0e..4e), ``Q`` the change of basis to SIESTA's orbital order and ``W`` mixing weights per ordered
species pair, slot and path.  The radial weights ``R`` are an MLP of a Bessel basis of
``|r| / r_cut(s_i, s_j)`` (reaching the orbital pair cut-off, beyond the trunk's ``r_max``) and of
both atoms' scalar features, ``[rbf, a_i, a_j]`` for side-0 paths and ``[rbf, a_j, a_i]`` for
side-1 (with ``ModelConfig.pair_orientation``, ``[rbf, o(i, j, r), a_i, a_j]`` and
``[rbf, o(j, i, -r), a_j, a_i]``, ``o`` the pair's orientation invariants of
:class:`~hforge.models.layers.PairOrientation`: R then depends non-linearly on how both
environments sit relative to the bond and to each other), times a polynomial envelope: the pair
features combine both atoms' descriptors, and ``R(j, i, -r)`` is ``R(i, j, r)`` with sides
swapped, so the block of ``(j, i, -n)`` is exactly the transpose of the block of ``(i, j, n)`` and
predicting the canonical half alone is exactly permutation-equivariant.  Optional hopping terms, off
by default: :class:`TwoCentreBlocks` (``ModelConfig.two_centre``, one radial function per slot) and
:class:`SlotGains` (``ModelConfig.slot_gains``, pair-dependent gains of the slots).

Onsite blocks: ``onsite_blocks`` (linear in the node features, symmetrised) of features holding
every irrep a block needs (``0e 1o 1e 2e 2o 3o 3e 4e`` for d shells): the trunk's features and
their channel-wise tensor squares, mixed by an ``e3nn.o3.Linear``.

S head: the same machinery with node features replaced by a learned species embedding
(``C_s x 0e``).  The paths ``0e x Y_L -> L`` then give exactly the two-centre form
``S_ab(r) = sum_L f_abL(|r|) [C^{l_a l_b L} Y_L(r^)]`` with ``L`` of the natural parity
(``(-1)^{l_a + l_b}``), which every two-centre integral has: S is exact in form, a function of the
species pair and ``r_ij`` alone; its onsite blocks are per-species constants ``lambda I``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from e3nn import o3

from hforge.basis import BasisSet
from hforge.basis.conventions import change_of_basis
from hforge.io.block_statistics import StoreStatistics
from hforge.models.base import HSModel
from hforge.models.config import ModelConfig
from hforge.models.layers import PairMLP, PairOrientation, PairRadial, atom_slices, chunk_slices, mlp, rows_of, take
from hforge.models.output_scaling import BlockScaling
from hforge.ops.cg_blocks import (
    CGDescriptor,
    block_pointer,
    blocks_to_irreps,
    cg_descriptor,
    channelwise_from_e3nn,
    edge_blocks,
    irreps_to_blocks,
    onsite_blocks,
    symmetrize_weights,
)

__all__ = ["EquivariantHSModel", "EquivariantHead", "EquivariantInputs", "OnsiteFeatures"]


class EquivariantInputs(NamedTuple):
    """Inputs of an :class:`EquivariantHead`: channel-wise ``x (N, C, K)`` for the hopping blocks,
    ``onsite (N, C_on, K_on)`` for the onsite blocks, ``scalars (N, F)`` for the radial weights, and
    ``environment`` (flat onsite blocks added unscaled, or None)."""

    x: torch.Tensor
    onsite: torch.Tensor
    scalars: torch.Tensor
    environment: torch.Tensor | None = None


def _irreps_string(channels: int, spec: list[tuple[int, int]]) -> str:
    return "+".join(f"{channels}x{l}{'e' if p == 1 else 'o'}" for l, p in spec)


def species_shells(basis: BasisSet) -> list[list[int]]:
    """Per species, the degree ``l`` of every shell in orbital order (the CG descriptors' input)."""
    return [[shell.l for shell in sp.shells] for sp in basis]


def _descriptor(shells: list[list[int]], node_spec: list[tuple[int, int]], l_sh: int | None) -> CGDescriptor:
    """The CG descriptor of ``shells`` (:func:`species_shells`, or a projector set's) in SIESTA's harmonic order."""
    max_l = max(l for ls in shells for l in ls)
    return cg_descriptor(shells, node_irreps=node_spec, l_sh=l_sh, conventions={l: change_of_basis(l) for l in range(max_l + 1)})


def _mixing_weights(row_ptr: np.ndarray, channels: int) -> torch.nn.Parameter:
    """``(rows, C)`` weights, each slot's rows ~ N(0, 1 / (C * rows of the slot)): outputs of order one."""
    rows = np.diff(row_ptr)
    std = np.repeat(1.0 / np.sqrt(channels * np.maximum(rows, 1)), rows)
    return torch.nn.Parameter(torch.randn(int(row_ptr[-1]), channels) * torch.from_numpy(std).float()[:, None])


class OnsiteFeatures(torch.nn.Module):
    """Node features with every irrep the onsite blocks need: ``[x, x (x) x]`` (channel-wise tensor
    products of two linear maps of ``x``, all pairs of irreps) mixed into ``C x keys``."""

    def __init__(self, irreps_in: o3.Irreps, keys: list[tuple[int, int]], channels: int) -> None:
        super().__init__()
        self.left = o3.Linear(irreps_in, irreps_in)
        self.right = o3.Linear(irreps_in, irreps_in)
        wanted = {o3.Irrep(l, p) for l, p in keys}
        out, instructions = [], []
        for i1, (mul, ir1) in enumerate(irreps_in):
            for i2, (_, ir2) in enumerate(irreps_in):
                for ir in ir1 * ir2:
                    if ir in wanted and i1 <= i2:
                        instructions.append((i1, i2, len(out), "uuu", False))
                        out.append((mul, ir))
        self.product = o3.TensorProduct(irreps_in, irreps_in, o3.Irreps(out), instructions)
        self.irreps_out = o3.Irreps(_irreps_string(channels, keys))
        self.linear = o3.Linear(irreps_in + self.product.irreps_out, self.irreps_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, self.product(self.left(x), self.right(x))], dim=1))


class EdgeAttributes(torch.nn.Module):
    r"""Edge attributes ``Y'`` of ``edge_blocks``: the pair direction's spherical harmonics plus both
    atoms' equivariant features, so that a block couples atom ``i``'s features with atom ``j``'s.

    ``edge_blocks`` is linear in one atom's features per path (``x_i (x) Y`` or ``x_j (x) Y``); with
    ``Y'_l = Y_l(r^) + sum_c alpha_lc (x_i[c, l] + (-1)^l x_j[c, l])`` for the node irreps ``l`` of
    natural parity, paths also carry ``x_i (x) x_j`` (the relative orientation of the two atoms'
    environments).  ``alpha`` is an MLP of symmetric pair inputs (Bessel basis, ``a_i + a_j``,
    ``a_i a_j``) times the envelope, so ``Y'`` of the reversed pair ``(j, i, -r)`` is ``(-1)^l Y'``
    exactly as for ``Y(-r)``: the symmetric mode's transpose identity holds unchanged.

    Args:
        coupled: ``(node irrep index, l)`` of the irreps joining ``Y'``.
        node_offset: first component of every node irrep in ``x``'s last axis.
        channels: ``C`` of ``x``.
        input_dim: width of the symmetric pair inputs.
        config: the model config (``radial_hidden``).
    """

    def __init__(
        self, coupled: list[tuple[int, int]], node_offset: np.ndarray, channels: int, input_dim: int, config: ModelConfig
    ) -> None:
        super().__init__()
        self.coupled = [(int(node_offset[q]), l) for q, l in coupled]
        self.channels = channels
        self.mlp = mlp([input_dim, *config.radial_hidden, len(coupled) * channels])

    def forward(
        self,
        harmonics: torch.Tensor,
        x: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
        inputs: torch.Tensor,
        envelope: torch.Tensor,
    ) -> torch.Tensor:
        alpha = (self.mlp(inputs) * envelope[:, None]).view(len(inputs), len(self.coupled), self.channels)
        degrees = int(round(harmonics.shape[1] ** 0.5))
        pieces = [harmonics[:, l * l : (l + 1) ** 2] for l in range(degrees)]
        xi, xj = rows_of(x, i), rows_of(x, j)
        for k, (offset, l) in enumerate(self.coupled):
            feature = xi[:, :, offset : offset + 2 * l + 1] + (-1) ** l * xj[:, :, offset : offset + 2 * l + 1]
            pieces[l] = pieces[l] + torch.einsum("ec,ecm->em", alpha[:, k], feature)
        return torch.cat(pieces, dim=1)


class CGPairBlocks(torch.nn.Module):
    """Blocks of pairs through ``edge_blocks`` (symmetric mode), radial weights from an MLP of the
    pair's Bessel basis and both atoms' scalars (see the module docstring).

    Args:
        shells: per species the degree of every shell (:func:`species_shells`): the blocks' rows and columns.
        node_spec: ``(l, parity)`` of the channel-wise node features.
        channels: their channels.
        scalar_dim: width of the per-atom scalars feeding the radial MLP.
        cutoffs: ``(n_species, n_species)`` pair cut-offs (Å) of the radial basis and envelope.
        config: the model config (``pair_l_max``, ``pair_num_basis``, ``radial_hidden``, ``backend``).
        two_centre: add :class:`TwoCentreBlocks`.
        slot_gains: ``K`` of :class:`SlotGains` (0: none).
    """

    def __init__(
        self,
        shells: list[list[int]],
        node_spec: list[tuple[int, int]],
        channels: int,
        scalar_dim: int,
        cutoffs: np.ndarray,
        config: ModelConfig,
        two_centre: bool = False,
        slot_gains: int = 0,
    ) -> None:
        super().__init__()
        self.backend = config.backend
        self.channels = channels
        self.desc = _descriptor(shells, node_spec, config.pair_l_max)
        self.weight = _mixing_weights(self.desc.mix_ptr, channels)
        self.radial = PairRadial(cutoffs, config.pair_num_basis, config.num_polynomial_cutoff)
        oriented = config.pair_orientation and any(l > 0 for l, _ in node_spec)
        self.orientation = PairOrientation(node_spec, channels) if oriented else None
        edge_dim = config.pair_num_basis + (self.orientation.dim if oriented else 0)
        self.radial_mlp = PairMLP(edge_dim, scalar_dim, config.radial_hidden, self.desc.n_side_paths * channels)
        self.spherical_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(config.pair_l_max), normalize=True, normalization="component"
        )
        self.register_buffer("mix_slot", torch.from_numpy(np.array(self.desc.mix_slot)), persistent=False)
        # node irreps of natural parity that can join the edge attributes (see EdgeAttributes)
        coupled = [(q, l) for q, (l, p) in enumerate(node_spec) if l > 0 and p == (-1) ** l and l <= config.pair_l_max]
        self.attributes = (
            EdgeAttributes(coupled, self.desc.node_offset, channels, 2 * scalar_dim + config.pair_num_basis, config)
            if coupled
            else None
        )
        self.two_centre = TwoCentreBlocks(self.desc, edge_dim, scalar_dim, config) if two_centre else None
        self.gains = SlotGains(self.desc, channels, edge_dim, scalar_dim, slot_gains, config) if slot_gains else None

    def edge_inputs(
        self,
        x: torch.Tensor,
        scalars: torch.Tensor,
        species: torch.Tensor,
        pair_index: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(bessel (E, B), envelope (E,), edges, radial (E, n_paths, C))`` of the pairs: the radial
        basis, the pair features of both sides (``edges``) and the radial weights of every path."""
        i, j = pair_index
        bessel, envelope = self.radial(distances, species[i], species[j])
        terms = self.radial_mlp.node_terms(scalars)
        edges = (bessel, bessel)
        if self.orientation is not None:  # side 1 sees the reversed pair's features (side swap)
            edges = tuple(torch.cat([bessel, features], dim=1) for features in self.orientation(x, i, j, vectors))
        radial = torch.cat([self.radial_mlp(edges[0], terms, i, j), self.radial_mlp(edges[1], terms, j, i)], dim=1)
        radial = (radial * envelope[:, None]).view(len(distances), self.desc.n_paths, self.channels)
        return bessel, envelope, edges, radial

    def forward(
        self,
        x: torch.Tensor,
        scalars: torch.Tensor,
        species: torch.Tensor,
        pair_index: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flat blocks of the pairs ``pair_index (2, E)`` with vectors ``r_ij (E, 3)``; ``scale (n_slots,)``
        multiplies every slot (folded into the mixing weights)."""
        i, j = pair_index
        bessel, envelope, edges, radial = self.edge_inputs(x, scalars, species, pair_index, vectors, distances)
        harmonics = attributes = self.spherical_harmonics(vectors)
        if self.attributes is not None:
            scalars_i, scalars_j = rows_of(scalars, i), rows_of(scalars, j)
            symmetric = torch.cat([bessel, scalars_i + scalars_j, scalars_i * scalars_j], dim=1)
            attributes = self.attributes(harmonics, x, i, j, symmetric, envelope)

        def cg_term(weight: torch.Tensor) -> torch.Tensor:  # (n_mix, C) or K sets (K, n_mix, C)
            if scale is not None:
                weight = weight * scale.to(weight.dtype)[self.mix_slot][:, None]
            return edge_blocks(
                x, attributes, radial, weight, pair_index, species, self.desc, symmetric=True, backend=self.backend
            )

        if self.gains is None:
            blocks = cg_term(self.weight)
            if self.two_centre is None:
                return blocks
        else:  # every weight set of the gains at once: each pair's messages are computed once
            sets = cg_term(torch.stack([self.weight, *self.gains.weights]))
        # the optional terms work on coupled irreps: one block pointer, one map back to orbital blocks
        pair_species = torch.stack([species[i], species[j]])
        block_ptr = block_pointer(pair_species, self.desc)
        coeffs = None
        if self.gains is not None:  # replaces the CG term's blocks
            coeffs, blocks = self.gains(edges, scalars, pair_index, pair_species, block_ptr, sets), None
        if self.two_centre is not None:
            two_centre = self.two_centre(edges, envelope, harmonics, scalars, pair_index, pair_species, block_ptr, scale)
            coeffs = two_centre if coeffs is None else coeffs + two_centre
        added = irreps_to_blocks(coeffs, pair_species, self.desc, block_ptr=block_ptr, backend=self.backend)
        return added if blocks is None else blocks + added


class TwoCentreBlocks(torch.nn.Module):
    r"""Hopping blocks in the two-centre (Slater-Koster) form with one radial function per slot
    (``ModelConfig.two_centre``), added to :class:`CGPairBlocks`' blocks as coupled irreps.

    For every slot ``s = (a, b, L)`` of natural parity (``L = l_a + l_b mod 2``, the only ones a
    two-centre integral has) the coupled irreps are ``g_s(i, j, r) Y_L(r^)`` and the block is
    ``irreps_to_blocks`` of them, ``g`` an MLP of the pair features of the CG term's radial MLP
    (``[rbf, o(i, j, r), a_i, a_j]``, the orientation invariants ``o`` with
    ``ModelConfig.pair_orientation``) times the envelope and the slot's scale, one output per
    slot of every pair type.  :class:`CGPairBlocks` shares its radial weights between the slots (they mix
    ``channels`` functions per path), so its distance dependence is of limited rank; here each
    slot has its own, an environment-dependent Slater-Koster table.  Symmetric like the rest:
    ``t[s] = (g_s(i, j, r) + (-1)^L g_s'(j, i, -r)) / 2 Y_L(r^)`` with ``s' = (b, a, L)`` of the
    reversed pair type, so the block of ``(j, i, -n)`` is exactly the transpose.

    Args:
        desc: the head's CG descriptor (its slot tables).
        edge_dim: width of the pair features.
        scalar_dim: width of the per-atom scalars.
        config: the model config (``block_hidden``, ``pair_l_max``).
    """

    def __init__(self, desc: CGDescriptor, edge_dim: int, scalar_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.desc = desc
        natural = (desc.slot_sign > 0) & (desc.slot_L <= config.pair_l_max)
        column = np.full(desc.n_slots, -1, dtype=np.int64)
        column[natural] = np.arange(int(natural.sum()))
        self.mlp = PairMLP(edge_dim, scalar_dim, config.block_hidden, int(natural.sum()))
        # per pair type, of every component of its natural slots: coupled index, slot, column of g,
        # column of the reversed pair's slot (b, a, L), index into Y, sign (-1)^L
        for t in range(desc.n_pair_types):
            slots = [s for s in range(desc.slot_ptr[t], desc.slot_ptr[t + 1]) if natural[s]]
            parts = [
                (
                    desc.slot_offset[s] + m,
                    s,
                    column[s],
                    column[desc.slot_transpose[s]],
                    desc.slot_L[s] ** 2 + m,
                    (-1.0) ** desc.slot_L[s],
                )
                for s in slots
                for m in range(2 * desc.slot_L[s] + 1)
            ]
            table = np.array(parts, dtype=np.float64).reshape(-1, 6)
            for k, name in enumerate(("index", "slot", "column", "partner", "harmonic")):
                self.register_buffer(f"t{t}_{name}", torch.from_numpy(table[:, k].astype(np.int64)), persistent=False)
            self.register_buffer(f"t{t}_sign", torch.from_numpy(table[:, 5]), persistent=False)

    def forward(
        self,
        edges: tuple[torch.Tensor, torch.Tensor],
        envelope: torch.Tensor,
        harmonics: torch.Tensor,
        scalars: torch.Tensor,
        pair_index: torch.Tensor,
        pair_species: torch.Tensor,
        block_ptr: torch.Tensor,
        scale: torch.Tensor | None,
    ) -> torch.Tensor:
        """Flat coupled irreps (``irreps_to_blocks``' input, at ``block_ptr``) of the pairs
        ``pair_index (2, E)`` of species ``pair_species (2, E)``: ``edges`` are the pair features of
        ``(i, j, r)`` and of ``(j, i, -r)`` (:class:`CGPairBlocks`' radial-MLP inputs), ``harmonics``
        ``Y(r^) (E, (pair_l_max + 1)^2)``, ``envelope`` from :class:`PairRadial`."""
        i, j = pair_index
        terms = self.mlp.node_terms(scalars)
        forward = self.mlp(edges[0], terms, i, j) * envelope[:, None]
        reverse = self.mlp(edges[1], terms, j, i) * envelope[:, None]
        pair_type = pair_species[0] * self.desc.n_species + pair_species[1]
        coeffs = harmonics.new_zeros(int(block_ptr[-1]))
        for t in range(self.desc.n_pair_types):
            selected = torch.nonzero(pair_type == t).squeeze(1)
            if not len(selected):
                continue
            index, slot, column, partner, harmonic = (
                getattr(self, f"t{t}_{n}") for n in ("index", "slot", "column", "partner", "harmonic")
            )
            sign = getattr(self, f"t{t}_sign").to(coeffs.dtype)
            g = 0.5 * (take(forward, selected, column) + sign * take(reverse, selected, partner))
            if scale is not None:
                g = g * scale.to(coeffs.dtype)[slot]
            values = g * take(harmonics, selected, harmonic)
            coeffs = coeffs.index_put(((block_ptr[selected][:, None] + index).reshape(-1),), values.reshape(-1))
        return coeffs


class SlotGains(torch.nn.Module):
    r"""Pair-dependent gains of the CG term's slots (``ModelConfig.slot_gains``, ``K`` sets).

    :class:`CGPairBlocks` mixes its paths into every slot with weights ``W`` fixed per pair type,
    so how a pair's slots relate to each other changes only through the radial weights that all
    slots share.  Here the CG term is evaluated with ``K`` mixing-weight sets ``W_k`` (``W_0`` the
    term's own, ``W_1..W_{K-1}`` in :attr:`weights`) and the coupled irreps of slot ``s`` of pair
    ``e = (i, j, r)`` become

    ``t[e, s] = sum_k (delta_k0 + h_k(e, s)) t_k[e, s]``,

    ``h`` an MLP (``block_hidden``) of the CG term's pair features with one output per slot of
    every pair type and set, symmetrised ``h_k(e, s) = (F_k(i, j, r)[s] + F_k(j, i, -r)[s']) / 2``
    with ``s' = (b, a, L)``: the gains are rotation invariant (equivariance holds) and equal for a
    slot and its transpose (the block of ``(j, i, -n)`` stays the exact transpose).  The MLP's last
    layer starts at zero, so an untrained model equals the one without gains.

    Args:
        desc: the head's CG descriptor.
        channels: ``C`` of the mixing weights.
        edge_dim, scalar_dim: widths of the pair features and of the per-atom scalars.
        n_sets: ``K``.
        config: the model config (``block_hidden``, ``backend``).
    """

    def __init__(
        self, desc: CGDescriptor, channels: int, edge_dim: int, scalar_dim: int, n_sets: int, config: ModelConfig
    ) -> None:
        super().__init__()
        self.desc, self.backend, self.n_sets = desc, config.backend, n_sets
        self.weights = torch.nn.ParameterList([_mixing_weights(desc.mix_ptr, channels) for _ in range(n_sets - 1)])
        self.mlp = PairMLP(edge_dim, scalar_dim, config.block_hidden, desc.n_slots * n_sets)
        torch.nn.init.zeros_(self.mlp.rest[-1].weight)
        torch.nn.init.zeros_(self.mlp.rest[-1].bias)
        self.register_buffer("slot_transpose", torch.from_numpy(desc.slot_transpose.copy()), persistent=False)
        # the slot of every coupled-irrep entry of every pair type (desc.pair_entry_ptr layout)
        entry_slot = np.repeat(np.arange(desc.n_slots), 2 * desc.slot_L + 1)
        self.register_buffer("entry_slot", torch.from_numpy(entry_slot), persistent=False)
        self.register_buffer("entry_ptr", torch.from_numpy(desc.pair_entry_ptr.copy()), persistent=False)

    def forward(
        self,
        edges: tuple[torch.Tensor, torch.Tensor],
        scalars: torch.Tensor,
        pair_index: torch.Tensor,
        pair_species: torch.Tensor,
        block_ptr: torch.Tensor,
        sets: torch.Tensor,
    ) -> torch.Tensor:
        """Flat coupled irreps (``irreps_to_blocks``' input, at ``block_ptr``) of the pairs
        ``pair_index (2, E)`` from the ``(K, nnz)`` flat block sets of the CG term (``edge_blocks``'
        layout, one per mixing-weight set); the other arguments as in :meth:`TwoCentreBlocks.forward`."""
        i, j = pair_index
        n_pairs = len(i)
        terms = self.mlp.node_terms(scalars)
        forward = self.mlp(edges[0], terms, i, j).view(n_pairs, self.desc.n_slots, self.n_sets)
        reverse = self.mlp(edges[1], terms, j, i).view(n_pairs, self.desc.n_slots, self.n_sets)
        gains = 0.5 * (forward + reverse.index_select(1, self.slot_transpose))
        sizes = block_ptr[1:] - block_ptr[:-1]
        pair_type = pair_species[0] * self.desc.n_species + pair_species[1]
        pair_of_entry = torch.repeat_interleave(torch.arange(n_pairs, device=block_ptr.device), sizes)
        local = torch.arange(int(block_ptr[-1]), device=block_ptr.device) - rows_of(block_ptr, pair_of_entry)
        slot = rows_of(self.entry_slot, rows_of(rows_of(self.entry_ptr, pair_type), pair_of_entry) + local)
        entry_gains = rows_of(gains.reshape(-1, self.n_sets), pair_of_entry * self.desc.n_slots + slot)
        irreps = [blocks_to_irreps(blocks, pair_species, self.desc, block_ptr=block_ptr, backend=self.backend) for blocks in sets]
        return irreps[0] + sum(entry_gains[:, k] * t for k, t in enumerate(irreps))


def _symmetric(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """``(M, n * n)`` row-major blocks -> ``(B + B^T) / 2``, same shape."""
    square = blocks.view(-1, n, n)
    return (0.5 * (square + square.transpose(1, 2))).reshape(-1, n * n)


def accumulate_over_neighbours(
    total: torch.Tensor, blocks: torch.Tensor, centre: torch.Tensor, species: torch.Tensor, n_orb: torch.Tensor
) -> torch.Tensor:
    """Adds to ``total`` (flat ``n_i x n_i`` blocks in atom order, in place) the flat blocks ``blocks`` of
    edges centred on ``centre (E,)``, each to its centre atom's block: O(E) work; returns ``total``."""
    sizes = n_orb[species] ** 2
    if bool((sizes == sizes[0]).all()):  # one block size: rows of an (N, n * n) view
        width = int(sizes[0])
        total.view(len(species), width).index_add_(0, centre, blocks.view(len(centre), width))
        return total
    atom_ptr = torch.cumsum(sizes, 0) - sizes
    edge_sizes = sizes[centre]
    edge_ptr = torch.cumsum(edge_sizes, 0) - edge_sizes
    target = torch.arange(blocks.shape[0], device=blocks.device) + torch.repeat_interleave(
        atom_ptr[centre] - edge_ptr, edge_sizes, output_size=blocks.shape[0]
    )
    return total.index_add_(0, target, blocks)


def symmetrised_blocks(flat: torch.Tensor, species: torch.Tensor, n_orb: torch.Tensor) -> torch.Tensor:
    """``(B + B^T) / 2`` of every atom's ``n_i x n_i`` block of ``flat`` (atom order), same layout."""
    sizes = n_orb[species] ** 2
    if torch.unique(n_orb[torch.unique(species)]).numel() == 1:  # one block size: no per-entry index
        return _symmetric(flat, int(n_orb[species[0]])).reshape(-1)
    atom_ptr = torch.cumsum(sizes, 0) - sizes
    out = torch.zeros_like(flat)
    for s in torch.unique(species).tolist():
        n = int(n_orb[s])
        atoms = torch.nonzero(species == s).squeeze(1)
        entries = (atom_ptr[atoms][:, None] + torch.arange(n * n, device=flat.device)).reshape(-1)
        out = out.index_put((entries,), _symmetric(flat[entries], n).reshape(-1))
    return out


def _sum_outer_products(centre: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(atoms (A,), sums (A, S, K))``: ``sums[a] = sum_{e: centre[e] = atoms[a]} g[e]^T y[e]`` for
    ``g (E, S)``, ``y (E, K)``, as one batched product of each atom's edges (zero-padded to the
    largest count): no ``(E, S, K)`` temporary."""
    atoms, rows, counts = torch.unique(centre, return_inverse=True, return_counts=True)
    order = torch.argsort(rows, stable=True)
    rows = rows[order]
    rank = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    width = int(counts.max()) if len(counts) else 0
    padded_g = g.new_zeros(len(atoms), width, g.shape[1]).index_put_((rows, rank), g[order])
    padded_y = y.new_zeros(len(atoms), width, y.shape[1]).index_put_((rows, rank), y[order])
    return atoms, torch.bmm(padded_g.transpose(1, 2), padded_y)


class EnvironmentOnsite(torch.nn.Module):
    """Onsite blocks as a sum over neighbours of two-centre-like blocks (the crystal-field form).

    ``B_i = sum_j b(i, j', r_ij)`` over the interaction graph, ``b`` a :class:`CGPairBlocks` whose
    column atom ``j'`` has atom ``i``'s species (an ``n_i x n_i`` block) and atom ``j``'s scalar
    features: ``sum_L g_abL(|r_ij|, a_i, a_j) C Y_L(r_ij)``, every ``L`` of natural parity up to
    ``pair_l_max``, from the geometry directly (node features up to ``node_l_max`` alone reach
    neither ``3o`` p-d nor, in planar sites, much else).

    Evaluated in coupled irreps, where the sum is cheap: with scalar node features every path of a
    slot ``s`` (degree ``L``) couples ``Y_L`` alone, so ``b``'s coupled irreps are
    ``t_e[s, M] = g_e[s] (Y_L(r_e) Q_L)[M]`` with ``g_e = (x R)_e W`` (``W`` the symmetrised mixing
    weights, paths and channels by slots).  The sum over an atom's neighbours is linear in the edge
    terms, so it is taken before ``W``: one batched product ``T_a = sum_e (x R)_e^T (Y Q)_e`` per atom
    (paths and channels by the columns of ``Y Q``), then per degree ``L`` the slots of that degree as
    ``W_L^T T_a[:, L's 2L + 1 columns]`` (only the ``(s, M)`` components a block has, instead of every
    slot against every column), and the change of basis to the orbital block (:func:`irreps_to_blocks`)
    once per atom instead of once per edge.  The same sum as :meth:`CGPairBlocks.forward` per edge, to
    float rounding (tests/test_separable.py).
    """

    def __init__(self, shells: list[list[int]], channels: int, r_max: float, config: ModelConfig) -> None:
        super().__init__()
        n_species = len(shells)
        self.pairs = CGPairBlocks(shells, [(0, 1)], channels, channels, np.full((n_species, n_species), r_max), config)
        desc = self.pairs.desc
        # Q_L of every degree (the CG coefficients of 0 x L -> L, columns of Y to the slot's M), checked
        # to be the same for every path of that degree
        n_y = (int(desc.l_sh) + 1) ** 2
        by_degree: dict[int, np.ndarray] = {}
        for p in range(desc.n_paths):
            L = int(desc.path_L[p])
            if int(desc.path_l1[p]) != 0 or int(desc.path_l2[p]) != L:
                raise AssertionError("EnvironmentOnsite: a path with non-scalar node features")
            q = np.zeros((n_y, 2 * L + 1))
            rows = slice(desc.cg_ptr[p], desc.cg_ptr[p + 1])
            np.add.at(q, (desc.cg_m2[rows], desc.cg_M[rows]), desc.cg_val[rows])
            if L in by_degree and not np.allclose(by_degree[L], q, atol=1e-12):
                raise AssertionError(f"EnvironmentOnsite: paths of degree {L} with different coefficients")
            by_degree[L] = q
        degrees = sorted(by_degree)
        y_offset = dict(zip(degrees, np.cumsum([0] + [2 * L + 1 for L in degrees[:-1]])))
        coupling = np.concatenate([by_degree[L] for L in degrees], axis=1)
        self.register_buffer("y_coupling", torch.from_numpy(coupling), persistent=False)
        # per species, the slots of the pair type (s, s) by degree (the descriptor's slot order is the
        # coupled order, a slot's 2L + 1 components consecutive): each degree's slots, its columns of
        # Y Q, and where the components of W_L^T T land among the type's components (then the
        # components of slots of a degree no path reaches, which stay zero)
        self.degree_slots: list[list[tuple[np.ndarray, int, int]]] = []
        self.component_order: list[np.ndarray] = []
        self.n_unreached: list[int] = []
        for species_index in range(n_species):
            t = species_index * n_species + species_index
            slots = np.arange(desc.slot_ptr[t], desc.slot_ptr[t + 1])
            widths = 2 * desc.slot_L[slots] + 1
            first = np.cumsum(widths) - widths  # each slot's first component
            # a slot of a degree no path reaches (beyond pair_l_max, or of unnatural parity) has no
            # mixing rows: its components are zero
            reached = np.isin(desc.slot_L[slots], degrees)
            if any(desc.mix_ptr[s + 1] > desc.mix_ptr[s] for s in slots[~reached]):
                raise AssertionError("EnvironmentOnsite: a slot with mixing rows but no path of its degree")
            groups, positions = [], []
            for L in degrees:
                members = np.flatnonzero(desc.slot_L[slots] == L)
                if len(members):
                    groups.append((slots[members], int(y_offset[L]), 2 * L + 1))
                    positions.append((first[members][:, None] + np.arange(2 * L + 1)).reshape(-1))
            positions += [(first[m] + np.arange(widths[m])) for m in np.flatnonzero(~reached)]
            self.degree_slots.append(groups)
            self.component_order.append(np.argsort(np.concatenate(positions or [np.zeros(0, dtype=np.int64)])))
            self.n_unreached.append(int(widths[~reached].sum()))

    def _slot_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """``(n_paths * C, n_slots)``: the symmetrised mixing weights of every slot by path and channel."""
        desc, channels = self.pairs.desc, self.pairs.channels
        weight = symmetrize_weights(self.pairs.weight.to(dtype), desc)
        tb = desc.tables(weight.device, dtype)
        rows = (tb["mix_path"][:, None] * channels + torch.arange(channels, device=weight.device)).reshape(-1)
        cols = tb["mix_slot"].repeat_interleave(channels)
        flat = weight.new_zeros(desc.n_paths * channels * desc.n_slots)
        return flat.index_add_(0, rows * desc.n_slots + cols, weight.reshape(-1)).view(desc.n_paths * channels, desc.n_slots)

    def forward(
        self, scalars: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
        n_orb: torch.Tensor, chunk: int | None = None,
    ) -> torch.Tensor:
        """Flat onsite blocks (atom order) from ``scalars (N, C)`` and the interaction edges, summed
        ``chunk`` edges at a time (None: all at once; the same sum to float rounding).  Each chunk's
        pairs see only its own atoms (its centre atoms and, per edge, a virtual copy of the neighbour),
        so the work and memory per chunk do not grow with the cell."""
        desc = self.pairs.desc
        slot_weights = self._slot_weights(scalars.dtype)
        degree_weights = [[slot_weights[:, torch.as_tensor(slots, device=scalars.device)].T for slots, _, _ in groups]
                          for groups in self.degree_slots]  # per species and degree: W_L^T (slots, n_paths * C)
        component_order = [torch.as_tensor(order, device=scalars.device) for order in self.component_order]
        coupling = self.y_coupling.to(scalars.dtype)
        side = desc.tables(scalars.device, scalars.dtype)["path_side"].to(torch.int64)
        total = scalars.new_zeros(int((n_orb[species] ** 2).sum()))
        for part in chunk_slices(edge_index.shape[1], chunk):
            i, j = edge_index[:, part]
            if not len(i):  # a cell without edges (a single atom): no term
                continue
            centres, rows = torch.unique(i, return_inverse=True)
            columns = torch.arange(len(centres), len(centres) + i.shape[0], device=i.device)
            neighbours = rows_of(scalars, j)
            nodes = torch.cat([rows_of(scalars, centres), neighbours])
            pair_index = torch.stack([rows, columns])
            distances = torch.linalg.norm(vectors[part], dim=1)
            centre_species = rows_of(species, i)
            _, _, _, radial = self.pairs.edge_inputs(
                nodes[:, :, None], nodes, torch.cat([rows_of(species, centres), centre_species]), pair_index, vectors[part],
                distances,
            )
            x = torch.stack([rows_of(scalars, i), neighbours], 1).index_select(1, side)  # (E, n_paths, C): each path's side
            weighted = (x * radial).reshape(len(rows), -1)  # (E, n_paths * C)
            y = self.pairs.spherical_harmonics(vectors[part]) @ coupling  # (E, sum_L 2L + 1)
            for s in torch.unique(centre_species).tolist():
                sel = torch.nonzero(centre_species == s).squeeze(1)
                atoms, summed = _sum_outer_products(  # (A, n_paths * C, Y columns)
                    rows_of(i, sel), rows_of(weighted, sel), rows_of(y, sel)
                )
                parts = [torch.matmul(w, summed[:, :, start : start + width]).reshape(len(atoms), -1)
                         for w, (_, start, width) in zip(degree_weights[s], self.degree_slots[s])]
                parts.append(summed.new_zeros(len(atoms), self.n_unreached[s]))
                components = torch.cat(parts, 1).index_select(1, component_order[s])  # (A, the type's components)
                total = accumulate_over_neighbours(total, components.reshape(-1), atoms, species, n_orb)
        # the coupled irreps of the pair type (s_i, s_i) have the block's size: one change of basis per atom
        pair_species = torch.stack([species, species])
        block_ptr = block_pointer(pair_species, desc)
        blocks = irreps_to_blocks(total, pair_species, desc, block_ptr=block_ptr, backend=self.pairs.backend)
        return symmetrised_blocks(blocks, species, n_orb)


class EquivariantHead(torch.nn.Module):
    """Onsite and hopping blocks of one matrix (see the module docstring).

    Args:
        matrix: ``"h"`` or ``"s"`` (which scaling tables apply).
        basis: the model's basis.
        node_spec, channels, scalar_dim, cutoffs, config: as :class:`CGPairBlocks` (hopping blocks).
        onsite_spec, onsite_channels: ``(l, parity)`` and channels of the onsite node features.
    """

    def __init__(
        self,
        matrix: str,
        basis: BasisSet,
        node_spec: list[tuple[int, int]],
        channels: int,
        onsite_spec: list[tuple[int, int]],
        onsite_channels: int,
        scalar_dim: int,
        cutoffs: np.ndarray,
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.matrix = matrix
        self.pairs = CGPairBlocks(
            species_shells(basis), node_spec, channels, scalar_dim, cutoffs, config, two_centre=config.two_centre,
            slot_gains=config.slot_gains if matrix == "h" else 0,
        )
        self.onsite_desc = _descriptor(species_shells(basis), onsite_spec, None)
        self.onsite_weight = _mixing_weights(self.onsite_desc.onsite_ptr, onsite_channels)

    def hopping_scale(self, scaling: BlockScaling) -> torch.Tensor:
        """``(n_slots,)`` scale of every slot, folded into the mixing weights."""
        return scaling.slot_scale(self.matrix, onsite=False)

    def onsite(self, inputs: EquivariantInputs, species: torch.Tensor) -> torch.Tensor:
        """Unscaled onsite blocks of every atom, flat, atom order."""
        blocks = onsite_blocks(inputs.onsite, self.onsite_weight, species, self.onsite_desc)
        return blocks if inputs.environment is None else blocks + inputs.environment

    def hopping(
        self,
        inputs: EquivariantInputs,
        species: torch.Tensor,
        pair_index: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Scaled hopping blocks of the pairs ``pair_index (2, E)`` with vectors ``r_ij (E, 3)``, flat."""
        return self.pairs(inputs.x, inputs.scalars, species, pair_index, vectors, distances, scale)


class EquivariantHSModel(HSModel):
    """Equivariant H and S predictor (see the module docstring and :class:`~hforge.models.base.HSModel`)."""

    def __init__(self, config: ModelConfig, basis: BasisSet, statistics: StoreStatistics | None = None) -> None:
        super().__init__(config, basis, statistics)
        irreps = self.trunk.irreps_out
        node_spec = [(ir.l, ir.p) for _, ir in irreps]
        keys = [(int(l), int(p)) for l, p in _descriptor(species_shells(self.basis), (), None).keys]
        channels = config.channels
        self.onsite_features = self.h_head = self.environment = None
        if config.free_blocks:
            self.onsite_features = OnsiteFeatures(irreps, keys, channels)
            self.h_head = EquivariantHead(
                "h", self.basis, node_spec, channels, keys, channels, channels,
                self.basis.pair_cutoffs(include_kb=config.include_kb), config,
            )
            self.environment = EnvironmentOnsite(species_shells(self.basis), channels, config.r_max, config)
        if config.separable:
            from hforge.models.separable import EquivariantOperatorHead

            self._build_separable(EquivariantOperatorHead(irreps, config.projectors, config, len(self.basis)))
        scalar = [(0, 1)]
        if self.learns_overlap:
            self.s_head = EquivariantHead(
                "s", self.basis, scalar, config.s_channels, scalar, config.s_channels, config.s_channels,
                self.basis.pair_cutoffs(), config,
            )
        self.to(config.torch_dtype)

    def head_inputs(
        self, features: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
        chunk: int | None = None,
    ) -> tuple[EquivariantInputs, EquivariantInputs]:
        s_inputs = None
        if self.learns_overlap:
            embedding = self.s_embedding(species)
            s_inputs = EquivariantInputs(embedding[:, :, None], embedding[:, :, None], embedding)
        if not self.config.free_blocks:
            return None, s_inputs
        x = channelwise_from_e3nn(features, self.trunk.irreps_out)
        squares = [self.onsite_features(features[part]) for part in atom_slices(len(features), chunk)]
        onsite = channelwise_from_e3nn(torch.cat(squares), self.onsite_features.irreps_out)
        scalars = x[:, :, 0]
        environment = self.environment(scalars, species, edge_index, vectors, self.n_orb, chunk)
        return EquivariantInputs(x, onsite, scalars, environment), s_inputs
