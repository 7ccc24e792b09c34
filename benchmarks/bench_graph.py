"""Neighbour lists (group ``graph``): hforge.graph against ASE and matscipy, 10^3..10^5 atoms.

Cells: the generator's random start at the aBN density (2.2 g/cm³, no pair below 1.35 Å), whose
neighbour counts are those of aBN. Two searches:

- ``model``: one cut-off of 5 Å (a MACE interaction cut-off), full list with vectors and shifts;
- ``orbital``: per-species-pair cut-offs r_i + r_j of the aBN DZP basis (B-B 7.48, B-N 6.52,
  N-N 5.56 Å), the blocks of S; ASE and matscipy take them as a dict of element-pair cut-offs.

hforge's lists are sorted by (i, j, n) and hold int64 indices (``hforge-unsorted``: ``sort=False``);
the baselines are unsorted; ``vesin-raw`` is vesin alone, without hforge's filtering and int64 copies. vesin
(inside hforge) uses all cores unless OMP_NUM_THREADS is set; ASE and matscipy use one.

Every library's list is first checked to hold exactly hforge's pairs (i, j, n), then timed (at
least 3 rounds after a warm-up), each peer's round interleaved with one of ``hforge``
(``extra_info["ratio_median"]``, ``ratio_min``, ``ratio_max``: peer / hforge).  Sizes: 10^3 atoms
(``HFORGE_BENCH_SIZE=small``, the default), 10^3..10^5 (``full``). Run:

    .venv/bin/python -m pytest benchmarks/bench_graph.py --benchmark-only --benchmark-group-by=group,func,param:cell
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._bench import interleaved, sizes, timed
from hforge.graph import neighbour_list, orbital_pair_list
from hforge.structures import random_bn_cell

SIZES = sizes([1_000], [1_000, 10_000, 100_000])
MODEL_CUTOFF = 5.0
RADII = {"B": 3.739619420301238, "N": 2.7801260918577864}
PAIR_CUTOFFS = {(a, b): RADII[a] + RADII[b] for a in RADII for b in RADII}


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def cell(request):
    return random_bn_cell(request.param, density=2.2, seed=0)


def searches(atoms, cutoff):
    """``library -> callable returning its pairs as (i, j, shifts)`` for one cut-off (float or element-pair dict)."""
    from ase.neighborlist import neighbor_list as ase_list
    from matscipy.neighbours import neighbour_list as matscipy_list
    from vesin import NeighborList

    positions, box, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    if isinstance(cutoff, dict):
        radii = np.array([RADII["B"], RADII["N"]])
        species = (atoms.numbers == 7).astype(np.int64)
        ours = lambda sort: orbital_pair_list(positions, box, pbc, species, radii, onsite=False, sort=sort)  # noqa: E731
    else:
        ours = lambda sort: neighbour_list(positions, box, pbc, cutoff, sort=sort)  # noqa: E731

    def hforge(sort):
        pairs = ours(sort)
        return pairs.edge_index[0], pairs.edge_index[1], pairs.cell_shift

    calls = {
        "hforge": lambda: hforge(True),
        "hforge-unsorted": lambda: hforge(False),
        "matscipy": lambda: matscipy_list("ijSdD", atoms, cutoff)[:3],
        "ase": lambda: ase_list("ijSdD", atoms, cutoff)[:3],
    }
    if not isinstance(cutoff, dict):
        search = NeighborList(cutoff=cutoff, full_list=True)
        calls["vesin-raw"] = lambda: search.compute(positions, box, pbc, "ijSdD")[:3]
    return calls


def pair_set(i, j, shifts) -> np.ndarray:
    """The pairs as sorted rows (i, j, n0, n1, n2)."""
    rows = np.column_stack([i, j, shifts]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def measure(benchmark, atoms, cutoff, library):
    n = len(atoms)
    if library == "ase" and n > 10_000:
        pytest.skip("ASE needs minutes and >10 GB at 10^5 atoms")
    calls = searches(atoms, cutoff)
    expected = pair_set(*calls["hforge"]())
    got = calls[library]()
    np.testing.assert_array_equal(pair_set(*got), expected)
    rounds = 5 if n <= 10_000 else 3
    if library == "hforge":
        timed(benchmark, calls[library], rounds=rounds)
    else:
        interleaved(benchmark, calls[library], calls["hforge"], rounds=rounds)
    benchmark.extra_info.update(n_atoms=n, n_pairs=len(expected), pairs_per_atom=len(expected) / n)


@pytest.mark.benchmark(group="graph")
@pytest.mark.parametrize("library", ["hforge", "hforge-unsorted", "vesin-raw", "matscipy", "ase"])
def test_model_cutoff(benchmark, cell, library):
    measure(benchmark, cell, MODEL_CUTOFF, library)


@pytest.mark.benchmark(group="graph")
@pytest.mark.parametrize("library", ["hforge", "hforge-unsorted", "matscipy", "ase"])
def test_orbital_cutoffs(benchmark, cell, library):
    measure(benchmark, cell, PAIR_CUTOFFS, library)
