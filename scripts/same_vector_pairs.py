"""Why a model that sees a pair only through (species_i, species_j, r_ij) cannot overfit abn_8_0.

``abn_8_0`` (the first cell of the bundled ``abn-small``) is a symmetric 8-atom crystal, not an
amorphous cell: its atoms sit on a quarter grid of the cubic cell and all atoms of a species are
equivalent up to a rotation, so their rotation-invariant descriptors are equal.  Several block pairs
``(i, j, n)`` share the same species pair and the same vector ``r_ij`` but have different H blocks
(the sites' orientations differ).  This script groups the model's block pairs by (species pair,
``r_ij`` rounded to 1 mÅ), prints the spread of H inside every group, and the smallest H MAE over
the file's entries that any function of (species_i, species_j, r_ij) can reach on the hopping
blocks (the per-entry median of each group).

    python scripts/same_vector_pairs.py [--index 0]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from hforge.datasets import load
from hforge.graph import GraphBuilder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=0, help="structure of abn-small (default 0: abn_8_0)")
    args = parser.parse_args()
    dataset = load("abn-small")
    data = dataset[args.index]
    graph = GraphBuilder(dataset.basis, r_max=4.5)(data)
    h, mask, ptr = graph.h.double().numpy(), graph.mask.numpy(), graph.block_ptr.numpy()
    index, shift, species = graph.pair_index.numpy(), graph.pair_shift.numpy(), graph.species.numpy()
    vectors = data.positions[index[1]] + shift @ data.cell - data.positions[index[0]]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for e, (i, j) in enumerate(index.T):
        if i != j or shift[e].any():  # hopping pairs only
            groups[(int(species[i]), int(species[j]), *np.round(vectors[e], 3))].append(e)
    shared = {key: pairs for key, pairs in groups.items() if len(pairs) > 1}
    print(f"abn-small[{args.index}]: {index.shape[1]} block pairs, {len(groups)} distinct (species pair, r_ij) among the "
          f"hopping ones, {len(shared)} shared by several pairs ({sum(map(len, shared.values()))} pairs)")
    floor = 0.0
    for key, pairs in sorted(shared.items(), key=lambda item: np.linalg.norm(item[0][2:])):
        blocks = np.stack([h[ptr[e] : ptr[e + 1]] for e in pairs])
        inside = np.stack([mask[ptr[e] : ptr[e + 1]] for e in pairs])
        floor += float((np.abs(blocks - np.median(blocks, axis=0)) * inside).sum())
        spread = np.abs(blocks - blocks.mean(axis=0))[inside].mean()
        print(f"  |r| {np.linalg.norm(key[2:]):.3f} Å species {key[0]}-{key[1]}: {len(pairs)} pairs, "
              f"mean |H - group mean| {spread * 1e3:.2f} meV (mean |H| {np.abs(blocks)[inside].mean() * 1e3:.1f} meV)")
    print(f"lowest H MAE of any f(species_i, species_j, r_ij) over the file's entries: {floor / mask.sum() * 1e3:.2f} meV")


if __name__ == "__main__":
    main()
