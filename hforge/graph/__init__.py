"""Periodic neighbour lists, and the graphs the models consume.

- :func:`neighbour_list`: pairs within one cut-off (the model's interaction cut-off) or
  per-species-pair cut-offs; full or canonical half; optional onsite pairs.
- :func:`orbital_pair_list`: pairs whose orbitals overlap (``r_i + r_j``), the blocks of S.
- :class:`GraphBuilder` -> :class:`GraphBatch`: a structure's interaction graph, block pairs and
  aligned H/S targets; :func:`collate` batches them.
- :func:`rotate_graph`: rotation augmentation (targets rotated too; the trainer draws the rotations).
"""

from __future__ import annotations

from hforge.graph.augment import rotate_flat_blocks, rotate_graph
from hforge.graph.model_graph import (
    GraphBatch,
    GraphBuilder,
    StructureArrays,
    align_targets,
    collate,
    structure_arrays,
    uncovered_pairs,
)
from hforge.graph.neighbours import PairList, neighbour_list, orbital_pair_list

__all__ = [
    "GraphBatch",
    "GraphBuilder",
    "PairList",
    "StructureArrays",
    "align_targets",
    "collate",
    "neighbour_list",
    "orbital_pair_list",
    "rotate_flat_blocks",
    "rotate_graph",
    "structure_arrays",
    "uncovered_pairs",
]
