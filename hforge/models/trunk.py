"""The descriptor trunk, composed of mace-torch's own blocks, shared by both model kinds.

Species one-hot -> ``LinearNodeEmbeddingBlock`` (``C x 0e``); interaction edges -> ``RadialEmbeddingBlock``
(Bessel x polynomial envelope) and e3nn spherical harmonics up to ``max_ell``; then
``num_interactions`` times an interaction block (``RealAgnosticInteractionBlock`` first,
``RealAgnosticResidualInteractionBlock`` after, as in MACE) and an ``EquivariantProductBasisBlock``
(symmetric contraction of order ``correlation``).  Unlike MACE's energy model, the last layer keeps
every node irrep ``C x (0e + 1o + 2e + ...)`` up to ``node_l_max``: the equivariant heads need them.

The output goes through e3nn's equivariant ``BatchNorm`` (norms of each irrep channel, running
statistics in evaluation mode): at initialisation MACE's features are of order 1e-3 (small radial
weights, messages divided by ``avg_num_neighbors``), which would leave the heads' weights far from
their optimum in Adam's step size.
"""

from __future__ import annotations

import torch
from e3nn import nn, o3
from mace.modules.blocks import (
    EquivariantProductBasisBlock,
    LinearNodeEmbeddingBlock,
    RadialEmbeddingBlock,
    RealAgnosticInteractionBlock,
    RealAgnosticResidualInteractionBlock,
)

from hforge.models.config import ModelConfig
from hforge.models.layers import atom_slices, quiet_codegen
from hforge.ops.conv_messages import conv_messages

__all__ = ["MaceTrunk", "interaction_in_chunks", "node_irreps"]


def node_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``Cx0e+Cx1o+Cx2e+...`` up to ``l_max`` (natural parity)."""
    return o3.Irreps("+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(l_max + 1)))


class MaceTrunk(torch.nn.Module):
    """MACE descriptors of every atom.

    Args:
        config: the model config (trunk fields).

    ``forward(species, vectors, edge_index, chunk=None)``: ``species (N,)`` int64, ``vectors (E, 3)``
    the interaction edges' ``r_ij`` (Å), ``edge_index (2, E)`` (sender, receiver); returns
    ``(N, irreps_out.dim)`` node features in e3nn's layout, ``irreps_out = node_irreps(C, node_l_max)``.
    With ``chunk``, every interaction sums its messages ``chunk`` edges at a time
    (:func:`interaction_in_chunks`): the same features to float rounding, in working memory
    O(atoms + chunk) instead of O(edges x message width) (3 GB at 4x10^5 edges with l = 3 features).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        n_species = len(config.species)
        self.n_species = n_species
        channels = config.channels
        attr_irreps = o3.Irreps(f"{n_species}x0e")
        hidden = node_irreps(channels, config.node_l_max)
        sh_irreps = o3.Irreps.spherical_harmonics(config.max_ell)
        interaction_irreps = (sh_irreps * channels).sort()[0].simplify()
        self.irreps_out = hidden
        self.node_embedding = LinearNodeEmbeddingBlock(attr_irreps, o3.Irreps(f"{channels}x0e"))
        self.radial_embedding = RadialEmbeddingBlock(
            r_max=config.r_max, num_bessel=config.num_bessel, num_polynomial_cutoff=config.num_polynomial_cutoff
        )
        edge_feats_irreps = o3.Irreps(f"{config.num_bessel}x0e")
        self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        features_irreps = o3.Irreps(f"{channels}x0e")
        for layer in range(config.num_interactions):
            block = RealAgnosticInteractionBlock if layer == 0 else RealAgnosticResidualInteractionBlock
            with quiet_codegen():
                self.interactions.append(
                    block(
                        node_attrs_irreps=attr_irreps,
                        node_feats_irreps=features_irreps,
                        edge_attrs_irreps=sh_irreps,
                        edge_feats_irreps=edge_feats_irreps,
                        target_irreps=interaction_irreps,
                        hidden_irreps=hidden,
                        avg_num_neighbors=config.avg_num_neighbors,
                        radial_MLP=list(config.radial_mlp),
                    )
                )
                self.products.append(
                    EquivariantProductBasisBlock(
                        node_feats_irreps=interaction_irreps,
                        target_irreps=hidden,
                        correlation=config.correlation,
                        num_elements=n_species,
                        use_sc=layer > 0,
                    )
                )
            features_irreps = hidden
        self.norm = nn.BatchNorm(hidden)

    def forward(
        self, species: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        dtype = vectors.dtype
        node_attrs = torch.nn.functional.one_hot(species, self.n_species).to(dtype)
        features = self.node_embedding(node_attrs)
        lengths = torch.linalg.norm(vectors, dim=1, keepdim=True)
        edge_feats, cutoff = self.radial_embedding(lengths, node_attrs, edge_index, species)
        edge_attrs = self.spherical_harmonics(vectors)
        for interaction, product in zip(self.interactions, self.products):
            chunked = chunk is not None and edge_index.shape[1] > chunk
            if (chunked or not torch.is_grad_enabled()) and not hasattr(interaction, "conv_fusion"):
                features, sc = interaction_in_chunks(
                    interaction, node_attrs, features, edge_attrs, edge_feats, edge_index, cutoff,
                    chunk or max(1, edge_index.shape[1]),
                )
            else:
                features, sc = interaction(
                    node_attrs=node_attrs, node_feats=features, edge_attrs=edge_attrs, edge_feats=edge_feats,
                    edge_index=edge_index, cutoff=cutoff,
                )
            features = self._product(product, features, sc, node_attrs, chunk)
        return self.norm(features)

    @staticmethod
    def _product(
        product: EquivariantProductBasisBlock, features: torch.Tensor, sc: torch.Tensor | None, node_attrs: torch.Tensor,
        chunk: int | None,
    ) -> torch.Tensor:
        """``product`` on every atom, :func:`~hforge.models.layers.atom_slices` at a time (it is per
        atom; its symmetric contraction's temporaries are ~30 KB per atom with l = 3 features)."""
        parts = [
            product(node_feats=features[part], sc=None if sc is None else sc[part], node_attrs=node_attrs[part])
            for part in atom_slices(features.shape[0], chunk)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def interaction_in_chunks(
    block: RealAgnosticInteractionBlock | RealAgnosticResidualInteractionBlock,
    node_attrs: torch.Tensor,
    node_feats: torch.Tensor,
    edge_attrs: torch.Tensor,
    edge_feats: torch.Tensor,
    edge_index: torch.Tensor,
    cutoff: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``block``'s forward (mace-torch's, without its fused-convolution path) with the edge messages
    computed and summed into their receivers ``chunk`` edges at a time (:func:`~hforge.ops.conv_messages.conv_messages`:
    without gradients on CPU one fused numba kernel, no per-edge message tensor): ``(message, skip)`` as the
    block returns them.  The message is a sum over edges, so any split of the edges gives the same
    result to float rounding; only ``chunk`` edges' tensor products are alive at once."""
    residual = isinstance(block, RealAgnosticResidualInteractionBlock)
    skip = block.skip_tp(node_feats, node_attrs) if residual else None
    lifted = block.linear_up(node_feats)
    message = lifted.new_zeros(node_feats.shape[0], block.conv_tp.irreps_out.dim)
    for start in range(0, edge_index.shape[1], chunk):
        part = slice(start, start + chunk)
        weights = block.conv_tp_weights(edge_feats[part])
        if cutoff is not None:
            weights = weights * cutoff[part]
        conv_messages(block.conv_tp, lifted, edge_attrs[part], weights, edge_index[0, part], edge_index[1, part], message)
    message = block.linear(message) / block.avg_num_neighbors
    if not residual:
        message = block.skip_tp(message, node_attrs)
    return block.reshape(message), skip
