"""The non-equivariant baseline: invariant descriptors and the Cartesian pair vector into MLPs.

Same trunk, S embedding, output scaling, pair list and assembly as the equivariant model; only the
heads differ (:class:`InvariantHead`):

* node inputs: the trunk's features reduced to invariants, per channel the scalar and the norm of
  every ``l > 0`` irrep (``C (1 + node_l_max)`` numbers per atom); the S head gets the species
  embedding instead;
* pair vectors enter as Cartesian monomials of the direction ``r / |r|`` (``x, y, z, x^2, xy, ...``
  up to degree ``pair_l_max``, each scaled to unit mean square on the sphere; the raw Cartesian
  components and their powers, never combined into irreps) and a Bessel basis of the distance,
  in a :class:`DirectionalPairMLP`: an MLP of ``[Bessel, monomials, a_i, a_j]`` whose last hidden
  layer is multiplied by a linear function of the monomials.  That product of an angular and a
  radial/chemical factor is what a block entry is; an MLP of the raw vector ``r / r_cut`` alone
  learns it slowly (measured on the 8-atom aBN cell, test config, 25 Adam steps at 1e-2: loss
  0.51 -> 0.41 with ``[Bessel, r / r_cut]``, 0.48 -> 0.07 with this; equivariant 0.55 -> 0.02).
  The weights are free, so nothing constrains the blocks to rotate correctly.
  ``ModelConfig.invariant_direction="vector"`` keeps that first version (:class:`VectorPairMLP`);
* onsite block of atom ``i``: a per-species output layer on an MLP of its inputs and of a sum over
  its neighbours within ``r_max`` of a directional pair MLP (onsite blocks depend on the
  orientation of the environment, which invariants alone cannot give), symmetrised ``(B + B^T) / 2``;
* hopping block of a canonical pair ``(i, j, n)``: a directional pair MLP of ``|r| / r_cut`` and
  ``r / |r|`` with an output layer per ordered species pair giving the ``n_orb_i x n_orb_j``
  entries directly, symmetrised as ``(f(i, j, r) + f(j, i, -r)^T) / 2``: the block of
  ``(j, i, -n)`` is exactly the transpose and relabelling atoms leaves it unchanged, so only
  rotations are learned rather than built in.  Blocks are multiplied by the pair envelope.
  With ``ModelConfig.pair_orientation`` the hopping MLP also sees the pair's rotation-invariant
  orientation features (:class:`~hforge.models.layers.PairOrientation`, from the trunk's
  equivariant features: each environment projected on the bond, and the two environments' inner
  products), those of ``(j, i, -r)`` for ``f(j, i, -r)``.

Rotations can be taught by augmentation: :func:`~hforge.graph.rotate_graph` (``training.augment_rotations``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.io.block_statistics import StoreStatistics
from hforge.models.base import HSModel
from hforge.models.config import ModelConfig
from hforge.models.layers import PairMLP, PairOrientation, PairRadial, chunk_slices, mlp
from hforge.models.output_scaling import BlockScaling
from hforge.ops.cg_blocks import channelwise_from_e3nn

__all__ = [
    "DirectionalPairMLP",
    "InvariantHSModel",
    "InvariantHead",
    "InvariantInputs",
    "VectorPairMLP",
    "cartesian_monomials",
    "invariant_features",
    "pair_mlp",
]


class InvariantInputs(NamedTuple):
    """Inputs of an :class:`InvariantHead`: ``pair (N, F)`` per-atom inputs of the hopping MLP,
    ``onsite (N, F_on)`` of the onsite MLP, and the channel-wise equivariant features ``x (N, C, K)``
    of the pair orientation features (None without them)."""

    pair: torch.Tensor
    onsite: torch.Tensor
    x: torch.Tensor | None = None


def invariant_features(features: torch.Tensor, irreps) -> torch.Tensor:
    """e3nn-layout features ``(N, irreps.dim)`` -> per channel: scalars and norms of ``l > 0`` irreps."""
    parts, start = [], 0
    for mul, ir in irreps:
        block = features[:, start : start + mul * ir.dim].reshape(-1, mul, ir.dim)
        start += mul * ir.dim
        parts.append(block[:, :, 0] if ir.l == 0 else torch.sqrt(block.pow(2).sum(-1) + 1e-8))
    return torch.cat(parts, dim=1)


def _monomial_exponents(degree: int) -> np.ndarray:
    """``(K, 3)`` exponents ``(a, b, c)`` of every monomial ``x^a y^b z^c`` of degree 1..``degree``."""
    return np.array(
        [(a, b, d - a - b) for d in range(1, degree + 1) for a in range(d, -1, -1) for b in range(d - a, -1, -1)],
        dtype=np.int64,
    ).reshape(-1, 3)


def _sphere_rms(exponents: np.ndarray) -> np.ndarray:
    """Root mean square of ``x^a y^b z^c`` over the unit sphere:
    ``<x^2a y^2b z^2c> = (2a-1)!! (2b-1)!! (2c-1)!! / (3 * 5 * ... * (2(a+b+c)+1))``."""
    def double_factorial_odd(n: int) -> float:  # (2n - 1)!!
        return float(np.prod(np.arange(1, 2 * n, 2))) if n else 1.0

    return np.array(
        [np.sqrt(np.prod([double_factorial_odd(int(e)) for e in row]) / np.prod(np.arange(3, 2 * row.sum() + 2, 2)))
         for row in exponents]
    )


def cartesian_monomials(direction: torch.Tensor, exponents: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
    """``(E, K)`` monomials ``x^a y^b z^c / rms`` of unit vectors ``direction (E, 3)``.

    Powers are built by repeated products (no ``pow``), so gradients stay finite at zero components.
    """
    degree = int(exponents.max()) if exponents.numel() else 0
    powers = [torch.ones_like(direction)]
    for _ in range(degree):
        powers.append(powers[-1] * direction)
    powers = torch.stack(powers, dim=2)  # (E, 3, degree + 1)
    x, y, z = (powers[:, k, exponents[:, k]] for k in range(3))
    return x * y * z / rms


class DirectionalPairMLP(torch.nn.Module):
    """Hidden features of a pair from its radial basis, its direction and both atoms' inputs.

    ``forward(radial (E, R), direction (E, 3), terms, i, j, extra) -> (E, hidden[-1])``:
    ``PairMLP([radial, P, extra], a_i, a_j) * (W P + b)`` with ``P = cartesian_monomials(direction)``
    of degree 1..``degree`` (see the module docstring) and ``extra (E, extra_dim)`` further pair
    features (or None when ``extra_dim`` is 0).

    Args:
        num_radial: width of the radial basis.
        node_dim: width of the per-atom inputs.
        hidden: hidden sizes of the MLP.
        degree: largest monomial degree (at least 1).
        extra_dim: width of the further pair features.
    """

    def __init__(self, num_radial: int, node_dim: int, hidden: list[int], degree: int, extra_dim: int = 0) -> None:
        super().__init__()
        exponents = _monomial_exponents(max(1, degree))
        self.register_buffer("exponents", torch.from_numpy(exponents), persistent=False)
        self.register_buffer("rms", torch.from_numpy(_sphere_rms(exponents)), persistent=False)
        self.mlp = PairMLP(num_radial + len(exponents) + extra_dim, node_dim, hidden, 0)
        self.gate = torch.nn.Linear(len(exponents), hidden[-1])
        self.width = hidden[-1]

    def node_terms(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom first-layer terms (:meth:`PairMLP.node_terms`)."""
        return self.mlp.node_terms(nodes)

    def forward(
        self, radial: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor, cutoff: torch.Tensor,
        terms: tuple[torch.Tensor, torch.Tensor], i: torch.Tensor, j: torch.Tensor, extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``radial (E, R)``, pair vectors ``(E, 3)`` Å, their lengths and cut-offs ``(E,)``."""
        angular = cartesian_monomials(vectors / distances[:, None], self.exponents, self.rms.to(vectors.dtype))
        edge = torch.cat([radial, angular] if extra is None else [radial, angular, extra], dim=1)
        return self.mlp(edge, terms, i, j) * self.gate(angular)


class VectorPairMLP(PairMLP):
    """The first version's pair MLP (``invariant_direction="vector"``): ``[radial, r / r_cut]`` and
    both atoms' inputs (and ``extra`` pair features), same call as :class:`DirectionalPairMLP`."""

    def __init__(self, num_radial: int, node_dim: int, hidden: list[int], extra_dim: int = 0) -> None:
        super().__init__(num_radial + 3 + extra_dim, node_dim, hidden, 0)

    def forward(
        self, radial: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor, cutoff: torch.Tensor,
        terms: tuple[torch.Tensor, torch.Tensor], i: torch.Tensor, j: torch.Tensor, extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scaled = vectors / cutoff[:, None]
        return super().forward(torch.cat([radial, scaled] if extra is None else [radial, scaled, extra], dim=1), terms, i, j)


def pair_mlp(num_radial: int, node_dim: int, hidden: list[int], config: ModelConfig, extra_dim: int = 0) -> torch.nn.Module:
    """The invariant model's pair MLP chosen by ``config.invariant_direction`` (``extra_dim``: width
    of further pair features, see :class:`DirectionalPairMLP`)."""
    if config.invariant_direction == "vector":
        return VectorPairMLP(num_radial, node_dim, hidden, extra_dim)
    return DirectionalPairMLP(num_radial, node_dim, hidden, config.pair_l_max, extra_dim)


def _output_layers(width: int, sizes: list[int]) -> tuple[torch.nn.ParameterList, torch.nn.ParameterList]:
    """One ``(width, n)`` weight (PyTorch's default uniform init) and zero bias per output size."""
    bound = 1.0 / np.sqrt(width)
    weights = torch.nn.ParameterList(torch.nn.Parameter(torch.empty(width, n).uniform_(-bound, bound)) for n in sizes)
    biases = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(n)) for n in sizes)
    return weights, biases


def _scatter(
    total: int, rows: list[tuple[torch.Tensor, torch.Tensor]], block_ptr: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """Flat values: block rows ``(n_k, size_k)`` of the pairs ``idx_k`` at ``block_ptr[idx_k]``."""
    sizes = {int(block.shape[1]) for _, block in rows}
    n_pairs = block_ptr.shape[0] - 1
    if len(sizes) == 1:  # one block size: a row-indexed copy, no per-entry index
        size = sizes.pop()
        out = like.new_zeros(n_pairs, size)
        for idx, block in rows:
            out = out.index_copy(0, idx, block)
        return out.reshape(-1)
    out = like.new_zeros(total)
    for idx, block in rows:
        positions = block_ptr[idx][:, None] + torch.arange(block.shape[1], device=idx.device)[None, :]
        out = out.index_put((positions.reshape(-1),), block.reshape(-1))
    return out


class InvariantHead(torch.nn.Module):
    """Onsite and hopping blocks of one matrix from invariant per-atom inputs (module docstring).

    Args:
        matrix: ``"h"`` or ``"s"``.
        basis: the model's basis.
        node_dim: width of the per-atom inputs of the hopping MLP.
        onsite_dim: width of the per-atom inputs of the onsite MLP.
        cutoffs: ``(n_species, n_species)`` pair cut-offs (Å).
        config: the model config (``pair_num_basis``, ``pair_l_max``, ``block_hidden``, ``num_polynomial_cutoff``).
        orientation: pair orientation features of the hopping MLP (from ``inputs.x``), or None.
    """

    def __init__(
        self, matrix: str, basis: BasisSet, node_dim: int, onsite_dim: int, cutoffs: np.ndarray, config: ModelConfig,
        orientation: PairOrientation | None = None,
    ) -> None:
        super().__init__()
        self.matrix = matrix
        n_orb = basis.n_orbitals.tolist()
        self.n_species = len(n_orb)
        self.n_orb = n_orb
        hidden = list(config.block_hidden)
        self.radial = PairRadial(cutoffs, config.pair_num_basis, config.num_polynomial_cutoff)
        self.orientation = orientation
        self.pair = pair_mlp(config.pair_num_basis, node_dim, hidden, config, orientation.dim if orientation else 0)
        self.onsite_mlp = torch.nn.Sequential(mlp([onsite_dim, *hidden]), torch.nn.SiLU())
        pair_sizes = [a * b for a in n_orb for b in n_orb]
        self.pair_weight, self.pair_bias = _output_layers(hidden[-1], pair_sizes)
        self.onsite_weight, self.onsite_bias = _output_layers(hidden[-1], [n * n for n in n_orb])
        ptr = np.concatenate([[0], np.cumsum(pair_sizes)])
        self.entry_ptr = ptr.tolist()

    def hopping_scale(self, scaling: BlockScaling) -> torch.Tensor:
        """Scale of every block entry of every pair type."""
        return scaling.entry_scale(self.matrix, onsite=False)

    def onsite(self, inputs: InvariantInputs, species: torch.Tensor) -> torch.Tensor:
        """Unscaled, symmetric onsite blocks of every atom, flat, atom order."""
        hidden = self.onsite_mlp(inputs.onsite)
        sizes = torch.as_tensor(self.n_orb, device=species.device)[species] ** 2
        block_ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        rows = []
        for s in torch.unique(species).tolist():
            idx = torch.nonzero(species == s).squeeze(1)
            n = self.n_orb[s]
            block = (hidden[idx] @ self.onsite_weight[s] + self.onsite_bias[s]).view(-1, n, n)
            rows.append((idx, (0.5 * (block + block.transpose(1, 2))).reshape(-1, n * n)))
        return _scatter(int(block_ptr[-1]), rows, block_ptr, hidden)

    def hopping(
        self,
        inputs: InvariantInputs,
        species: torch.Tensor,
        pair_index: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Scaled, symmetrised hopping blocks of the pairs ``pair_index (2, E)``, flat."""
        i, j = pair_index
        si, sj = species[i], species[j]
        bessel, envelope = self.radial(distances, si, sj)
        cutoff = self.radial.cutoffs[si, sj].to(vectors.dtype)
        terms = self.pair.node_terms(inputs.pair)
        extra = (None, None) if self.orientation is None else self.orientation(inputs.x, i, j, vectors)
        forward = self.pair(bessel, vectors, distances, cutoff, terms, i, j, extra[0])
        reverse = self.pair(bessel, -vectors, distances, cutoff, terms, j, i, extra[1])
        pair_type = si * self.n_species + sj
        sizes = torch.as_tensor(self.n_orb, device=species.device)
        sizes = sizes[si] * sizes[sj]
        block_ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        rows = []
        for t in torch.unique(pair_type).tolist():
            a, b = divmod(t, self.n_species)
            t_rev = b * self.n_species + a
            idx = torch.nonzero(pair_type == t).squeeze(1)
            direct = forward[idx] @ self.pair_weight[t] + self.pair_bias[t]
            swapped = (reverse[idx] @ self.pair_weight[t_rev] + self.pair_bias[t_rev]).view(-1, self.n_orb[b], self.n_orb[a])
            block = 0.5 * (direct + swapped.transpose(1, 2).reshape(direct.shape))
            entry_scale = scale[self.entry_ptr[t] : self.entry_ptr[t + 1]].to(block.dtype)
            rows.append((idx, block * envelope[idx, None] * entry_scale))
        return _scatter(int(block_ptr[-1]), rows, block_ptr, forward)


class InvariantHSModel(HSModel):
    """Non-equivariant H and S predictor (see the module docstring and :class:`~hforge.models.base.HSModel`)."""

    def __init__(self, config: ModelConfig, basis: BasisSet, statistics: StoreStatistics | None = None) -> None:
        super().__init__(config, basis, statistics)
        node_dim = config.channels * (config.node_l_max + 1)
        hidden = list(config.block_hidden)
        n_species = len(self.basis)
        self.environment_radial = PairRadial(
            np.full((n_species, n_species), config.r_max), config.pair_num_basis, config.num_polynomial_cutoff
        )
        self.environment = pair_mlp(config.pair_num_basis, node_dim, hidden, config)
        node_spec = [(ir.l, ir.p) for _, ir in self.trunk.irreps_out]
        orientation = PairOrientation(node_spec, config.channels) if config.pair_orientation else None
        self.h_head = None
        if config.free_blocks:
            self.h_head = InvariantHead(
                "h", self.basis, node_dim, node_dim + hidden[-1], self.basis.pair_cutoffs(include_kb=config.include_kb),
                config, orientation,
            )
        if config.separable:
            from hforge.models.separable import InvariantOperatorHead

            self._build_separable(InvariantOperatorHead(node_dim + hidden[-1], hidden, config.projectors, len(self.basis)))
        if self.learns_overlap:
            self.s_head = InvariantHead("s", self.basis, config.s_channels, config.s_channels, self.basis.pair_cutoffs(), config)
        self.to(config.torch_dtype)

    def head_inputs(
        self, features: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
        chunk: int | None = None,
    ) -> tuple[InvariantInputs, InvariantInputs]:
        nodes = invariant_features(features, self.trunk.irreps_out)
        terms = self.environment.node_terms(nodes)
        summed = None
        for part in chunk_slices(edge_index.shape[1], chunk):  # the environment sum, chunk edges at a time
            i, j = edge_index[:, part]
            lengths = torch.linalg.norm(vectors[part], dim=1)
            bessel, envelope = self.environment_radial(lengths, species[i], species[j])
            cutoff = torch.full_like(lengths, self.config.r_max)
            messages = self.environment(bessel, vectors[part], lengths, cutoff, terms, i, j) * envelope[:, None]
            if summed is None:
                summed = messages.new_zeros(nodes.shape[0], messages.shape[1])
            summed = summed.index_add(0, i, messages)
        oriented = self.h_head is not None and self.h_head.orientation is not None
        x = channelwise_from_e3nn(features, self.trunk.irreps_out) if oriented else None
        s_inputs = None
        if self.learns_overlap:
            embedding = self.s_embedding(species)
            s_inputs = InvariantInputs(embedding, embedding)
        return InvariantInputs(nodes, torch.cat([nodes, summed / self.config.avg_num_neighbors], dim=1), x), s_inputs
