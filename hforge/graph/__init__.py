"""Periodic neighbour lists: atom pairs ``(i, j, n)`` with integer cell shifts (``docs/design.md``).

- :func:`neighbour_list`: pairs within one cut-off (the model's interaction cut-off) or
  per-species-pair cut-offs; full or canonical half; optional onsite pairs.
- :func:`orbital_pair_list`: pairs whose orbitals overlap (``r_i + r_j``), the blocks of S.
"""

from __future__ import annotations

from hforge.graph.neighbours import PairList, neighbour_list, orbital_pair_list

__all__ = ["PairList", "neighbour_list", "orbital_pair_list"]
