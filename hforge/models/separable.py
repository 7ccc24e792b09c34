r"""The learned part of H as an operator: ``sum_k |chi_k> D_k <chi_k|`` with ``D_k`` from the environment.

A matrix filled entry by entry is not the matrix of an operator: its errors along the nearly
linearly dependent directions of the basis (S's eigenvalues down to 5e-5 in dense aBN) are divided
by S's small eigenvalues in ``H c = E S c`` and make states hundreds of eV outside the spectrum
(issue 24's measurements).  Here the learned part of H is the matrix of the separable operator
``sum_k |chi_k> D_k <chi_k|`` (:mod:`hforge.ops.two_centre.projectors`, :mod:`hforge.ops.two_centre.separable`):
short-range projector functions ``chi_k`` on every atom and a symmetric ``n_p x n_p`` matrix ``D_k``
(eV) per atom.  Whatever the weights, ``|v^T O v| <= max_k ||D_k||_2 F v^T S v`` (``F`` the
projectors' frame bound): no direction of the basis can get a large energy from it.

``D_k = D_mean[s_k] + D_env(k)``:

* ``D_mean`` (:class:`SeparableTerm`), per species, rotation invariant: per degree ``l`` a symmetric
  ``n_radial x n_radial`` matrix times the identity over ``m`` (the only species-constant matrices
  that commute with rotations); fitted by least squares to the training data before training
  (:func:`hforge.models.baseline.fit_operator_baseline`);
* ``D_env`` from the atom's environment: the equivariant model's onsite-block machinery on the
  projector shells (:class:`EquivariantOperatorHead`, exactly equivariant), or the invariant
  model's per-species output layer on its onsite MLP (:class:`InvariantOperatorHead`, rotations
  learned by augmentation).  Both start at zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from e3nn import o3

from hforge.ops.cg_blocks import channelwise_from_e3nn, onsite_blocks
from hforge.ops.cg_blocks.descriptor import MAX_L
from hforge.ops.two_centre.projectors import ProjectorSet

if TYPE_CHECKING:
    from hforge.models.config import ModelConfig

__all__ = ["EquivariantOperatorHead", "InvariantOperatorHead", "OperatorInputs", "SeparableTerm", "mean_operator_matrix"]


class OperatorInputs(NamedTuple):
    """What a ``D_env`` head reads: the trunk's ``features`` (e3nn layout), the interaction graph
    (``edge_index (2, E)``, ``vectors (E, 3)`` Å), the edge step ``chunk`` of environment sums, and
    ``onsite`` (the invariant model's onsite MLP inputs, or None)."""

    features: torch.Tensor
    edge_index: torch.Tensor
    vectors: torch.Tensor
    chunk: int | None
    onsite: torch.Tensor | None = None


def mean_operator_matrix(projectors: ProjectorSet, blocks: torch.Tensor) -> torch.Tensor:
    """Species-constant, rotation-invariant ``D``: ``blocks (..., l_max + 1, n_radial, n_radial)``
    (symmetrised) -> ``(..., n_p, n_p)`` with ``D[(l n m), (l n' m')] = blocks[l, n, n']``, zero
    between degrees: per degree ``kron(blocks[l], I_{2l+1})`` (shells ``l`` major, ``n``, then ``m``)."""
    sym = 0.5 * (blocks + blocks.transpose(-1, -2))
    lead, n = sym.shape[:-3], projectors.n_radial
    size = projectors.n_functions
    out = sym.new_zeros(*lead, size, size)
    start = 0
    for l in range(projectors.l_max + 1):
        width = n * (2 * l + 1)
        eye = torch.eye(2 * l + 1, dtype=sym.dtype, device=sym.device)
        block = torch.einsum("...ab,mn->...ambn", sym[..., l, :, :], eye)
        out[..., start : start + width, start : start + width] = block.reshape(*lead, width, width)
        start += width
    return out


class SeparableTerm(torch.nn.Module):
    """``D_k = D_mean[s_k] + head(inputs)`` (module docstring).

    Args:
        projectors: the projector set.
        n_species: species of the model.
        head: a module ``head(inputs, species) -> (N, n_p, n_p)`` (symmetric), or None (the mean only).
    """

    def __init__(self, projectors: ProjectorSet, n_species: int, head: torch.nn.Module | None) -> None:
        super().__init__()
        self.projectors = projectors
        n = projectors.n_radial
        self.mean = torch.nn.Parameter(torch.zeros(n_species, projectors.l_max + 1, n, n))
        self.head = head

    def mean_operators(self) -> torch.Tensor:
        """``(n_species, n_p, n_p)`` the species' mean ``D``."""
        return mean_operator_matrix(self.projectors, self.mean)

    def forward(self, inputs: object, species: torch.Tensor) -> torch.Tensor:
        """``(N, n_p, n_p)`` symmetric ``D_k`` of every atom (eV)."""
        out = self.mean_operators()[species]
        return out if self.head is None else out + self.head(inputs, species)


class EquivariantOperatorHead(torch.nn.Module):
    """``D_env``: onsite blocks of the projector shells, linear in node features holding every irrep
    they need (``[x, x (x) x]`` mixed, as the orbital onsite blocks; degrees above 4 are left out),
    plus, with ``environment``, a sum over the interaction edges of two-centre-like blocks of the
    neighbour's direction (the crystal-field form of the orbital onsite blocks,
    :class:`~hforge.models.equivariant.EnvironmentOnsite`).  Both start at zero.

    Args:
        irreps_in: the trunk's output irreps (e3nn layout of the features).
        projectors: the projector set.
        config: the model config (``channels``, ``r_max``, ``operator_environment``, radial sizes).
        n_species: species of the model.
    """

    def __init__(self, irreps_in: o3.Irreps, projectors: ProjectorSet, config: "ModelConfig", n_species: int) -> None:
        super().__init__()
        from hforge.models.equivariant import EnvironmentOnsite, OnsiteFeatures, _descriptor

        shells = [projectors.shells] * n_species
        keys = [(int(l), int(p)) for l, p in _descriptor(shells, (), None).keys if l <= MAX_L]
        self.desc = _descriptor(shells, keys, None)
        self.features = OnsiteFeatures(irreps_in, keys, config.channels)
        self.weight = torch.nn.Parameter(torch.zeros(self.desc.n_onsite, config.channels))
        self.n_proj = projectors.n_functions
        self.environment = None
        if config.operator_environment:
            self.environment = EnvironmentOnsite(shells, config.channels, config.r_max, config)
            torch.nn.init.zeros_(self.environment.pairs.weight)
            self.register_buffer("n_functions", torch.full((n_species,), self.n_proj), persistent=False)

    def forward(self, inputs: "OperatorInputs", species: torch.Tensor) -> torch.Tensor:
        x = channelwise_from_e3nn(self.features(inputs.features), self.features.irreps_out)
        out = onsite_blocks(x, self.weight, species, self.desc)
        if self.environment is not None:
            scalars = channelwise_from_e3nn(inputs.features, self.features.left.irreps_in)[:, :, 0]
            out = out + self.environment(scalars, species, inputs.edge_index, inputs.vectors, self.n_functions, inputs.chunk)
        return out.view(-1, self.n_proj, self.n_proj)


class InvariantOperatorHead(torch.nn.Module):
    """``D_env`` of the non-equivariant model: an MLP of the atom's invariant onsite inputs and a
    per-species output layer giving the ``n_p x n_p`` entries, symmetrised (zero at start).

    Args:
        input_dim: width of the onsite inputs.
        hidden: hidden sizes of the MLP.
        projectors: the projector set.
        n_species: species of the model.
    """

    def __init__(self, input_dim: int, hidden: list[int], projectors: ProjectorSet, n_species: int) -> None:
        super().__init__()
        from hforge.models.layers import mlp

        self.mlp = torch.nn.Sequential(mlp([input_dim, *hidden]), torch.nn.SiLU())
        self.n_proj = n = projectors.n_functions
        self.weight = torch.nn.Parameter(torch.zeros(n_species, hidden[-1], n * n))
        self.bias = torch.nn.Parameter(torch.zeros(n_species, n * n))

    def forward(self, inputs: OperatorInputs, species: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp(inputs.onsite)
        out = torch.einsum("nh,nho->no", hidden, self.weight[species]) + self.bias[species]
        square = out.view(-1, self.n_proj, self.n_proj)
        return 0.5 * (square + square.transpose(1, 2))


def operator_norms(operators: torch.Tensor) -> np.ndarray:
    """``(N,)`` spectral norms ``||D_k||_2`` (eV) of symmetric ``operators (N, n_p, n_p)``."""
    with torch.no_grad():
        return torch.linalg.eigvalsh(operators.double()).abs().amax(dim=1).cpu().numpy()
