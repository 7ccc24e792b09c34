"""Neighbour lists (group ``graph``): hforge.graph against ASE and matscipy, 10^3..10^5 atoms.

Cells: the generator's random start at the aBN density (2.2 g/cm³, no pair below 1.35 Å), whose
neighbour counts are those of aBN. Two searches:

- ``model``: one cut-off of 5 Å (a MACE interaction cut-off), full list with vectors and shifts;
- ``orbital``: per-species-pair cut-offs r_i + r_j of the aBN DZP basis (B-B 7.48, B-N 6.52,
  N-N 5.56 Å), the blocks of S; ASE and matscipy take them as a dict of element-pair cut-offs.

hforge's lists are sorted by (i, j, n) and hold int64 indices; the baselines are unsorted. vesin
(inside hforge) uses all cores unless OMP_NUM_THREADS is set; ASE and matscipy use one. Run:

    .venv/bin/python -m pytest benchmarks/bench_graph.py --benchmark-only --benchmark-group-by=group,func,param:cell
"""

from __future__ import annotations

import numpy as np
import pytest

from hforge.graph import neighbour_list, orbital_pair_list
from hforge.structures import random_bn_cell

SIZES = [1_000, 10_000, 100_000]
MODEL_CUTOFF = 5.0
RADII = {"B": 3.739619420301238, "N": 2.7801260918577864}
PAIR_CUTOFFS = {(a, b): RADII[a] + RADII[b] for a in RADII for b in RADII}


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def cell(request):
    return random_bn_cell(request.param, density=2.2, seed=0)


def run(benchmark, function, n_atoms):
    rounds = 5 if n_atoms <= 10_000 else 2
    return benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=0)


def species_of(atoms):
    return (atoms.numbers == 7).astype(np.int64)


@pytest.mark.benchmark(group="graph")
@pytest.mark.parametrize("library", ["hforge", "vesin-raw", "matscipy", "ase"])
def test_model_cutoff(benchmark, cell, library):
    n = len(cell)
    if library == "ase" and n > 10_000:
        pytest.skip("ASE needs minutes and >10 GB at 10^5 atoms")
    positions, box, pbc = cell.positions, cell.cell.array, cell.pbc
    if library == "hforge":
        pairs = run(benchmark, lambda: neighbour_list(positions, box, pbc, MODEL_CUTOFF), n)
        count = pairs.n_pairs
    elif library == "vesin-raw":
        from vesin import NeighborList

        search = NeighborList(cutoff=MODEL_CUTOFF, full_list=True)
        count = len(run(benchmark, lambda: search.compute(positions, box, pbc, "ijSdD"), n)[0])
    elif library == "matscipy":
        from matscipy.neighbours import neighbour_list as matscipy_list

        count = len(run(benchmark, lambda: matscipy_list("ijSdD", cell, MODEL_CUTOFF), n)[0])
    else:
        from ase.neighborlist import neighbor_list as ase_list

        count = len(run(benchmark, lambda: ase_list("ijSdD", cell, MODEL_CUTOFF), n)[0])
    benchmark.extra_info.update(n_atoms=n, n_pairs=count, pairs_per_atom=count / n)


@pytest.mark.benchmark(group="graph")
@pytest.mark.parametrize("library", ["hforge", "matscipy", "ase"])
def test_orbital_cutoffs(benchmark, cell, library):
    n = len(cell)
    if library == "ase" and n > 10_000:
        pytest.skip("ASE needs minutes and >10 GB at 10^5 atoms")
    positions, box, pbc = cell.positions, cell.cell.array, cell.pbc
    if library == "hforge":
        radii = np.array([RADII["B"], RADII["N"]])
        species = species_of(cell)
        count = run(benchmark, lambda: orbital_pair_list(positions, box, pbc, species, radii, onsite=False), n).n_pairs
    elif library == "matscipy":
        from matscipy.neighbours import neighbour_list as matscipy_list

        count = len(run(benchmark, lambda: matscipy_list("ijSdD", cell, PAIR_CUTOFFS), n)[0])
    else:
        from ase.neighborlist import neighbor_list as ase_list

        count = len(run(benchmark, lambda: ase_list("ijSdD", cell, PAIR_CUTOFFS), n)[0])
    benchmark.extra_info.update(n_atoms=n, n_pairs=count, pairs_per_atom=count / n)
