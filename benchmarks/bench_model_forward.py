"""Model forward pass (group ``model_forward``): time per atom of HForge's two models against
graph2mat's MACE + e3nn model, on amorphous BN cells of 64, 512 and 4096 atoms (DZP basis).

    .venv/bin/python -m pytest benchmarks/bench_model_forward.py --benchmark-only --benchmark-group-by=param:n_atoms

Cells: :func:`hforge.structures.amorphous_bn` with the ``"fast"`` protocol (seed 0) for 64 and 512
atoms; the 4096-atom cell is the 512-atom cell repeated 2 x 2 x 2 (a new melt-quench of 4096 atoms
takes minutes and changes nothing the forward pass sees: the same densities and neighbour counts).
Generated cells are cached as extended XYZ in ``$HFORGE_BENCH_CACHE`` (default
``<tmp>/hforge-bench``), so only the first run pays for the MD.

Implementations, float32, inference (``torch.no_grad``), each on its own inputs prepared outside
the timed call (graph-building time in ``extra_info["graph_s"]``), after a warm-up call on the
64-atom cell (numba compilation), then at least 3 rounds after a warm-up round.  Before timing,
each output is checked: every implementation predicts every block of its pattern (HForge: the
pairs within r_i + r_j found independently by :func:`hforge.graph.orbital_pair_list`; graph2mat:
every edge of its graph, counts in ``extra_info["blocks"]``); the numba kernels equal the torch
reference kernels of the same weights, and the invariant model its float64 evaluation (to 1e-4
relative).  The peers (graph2mat, the torch-reference kernels) run interleaved with
``hforge-equivariant-numba``, round by round (``extra_info["ratio_median"]``, ``ratio_min``,
``ratio_max``: peer / hforge).  Sizes: 64 atoms (``HFORGE_BENCH_SIZE=small``, the default), 64, 512
and 4096 (``full``):

* ``hforge-equivariant-<backend>``: :class:`~hforge.models.EquivariantHSModel`, default
  :class:`~hforge.models.ModelConfig` (2 MACE layers, 16 channels up to l = 2, interaction cut-off
  4.5 Å; blocks of every pair within r_i + r_j), CG kernels ``torch`` (reference) or ``numba``;
* ``hforge-invariant``: :class:`~hforge.models.InvariantHSModel`, default config (no CG kernels);
* ``graph2mat``: ``graph2mat.models.MatrixMACE`` (MACE 16x0e+16x1o+16x2e, 2 layers, correlation 2,
  max_ell 2, radial MLP [32, 32]) with ``E3nnGraph2Mat`` readouts (edge hidden irreps
  16x0e+16x1o+16x2e), symmetric, on graph2mat's own ``TorchBasisMatrixData`` of the same structure
  and basis.  graph2mat runs MACE on its block graph (every pair within r_i + r_j, both directions,
  up to 7.5 Å) with MACE's cut-off set to the largest pair cut-off; HForge runs MACE within 4.5 Å
  and predicts the same blocks (the same 79,092 hopping values on the 8-atom cell).

``extra_info``: atoms, pairs/edges, parameters, seconds per atom.  Threads: torch and numba on
``$HFORGE_BENCH_THREADS`` (default 1) threads each.  ``HFORGE_BENCH_ALL=1`` also runs the slow
cases that are skipped by default (graph2mat at 4096 atoms, the torch-reference kernels beyond 64).

Measured 2026-11-25, this 2-core machine shared with other jobs (load ~9), one thread each, ms per
atom (ratio to graph2mat in the same run):

=========================  =============  =============  ==========
implementation             64 atoms       512 atoms      4096 atoms
=========================  =============  =============  ==========
graph2mat (185,744 par.)   93.5 (1)       160 (1)        33.5 (1)
hforge-equivariant-torch   84.9 (0.91)    not run        not run
hforge-equivariant-numba   7.6 (0.081)    12.4 (0.077)   2.15 (0.064)
hforge-invariant           3.5 (0.038)    7.0 (0.043)    1.14 (0.034)
=========================  =============  =============  ==========

The 4096-atom column is a separate run (``HFORGE_BENCH_ALL=1``, load ~3, the three rows in one
run; ``benchmarks/results/model_forward/cpu_4096_atoms.json``): graph2mat 137 s per call on
522,768 edges, equivariant numba 8.8 s on 265,528 pairs (15.6x faster), invariant 4.7 s (29x).
The 64/512 columns ran under heavier load (~9), hence the larger per-atom times there.

(84,584 parameters equivariant, 208,668 invariant; ~65 block pairs per atom, onsite included; 8126 graph2mat
edges against 2512 interaction edges at 64 atoms.)  The numba/torch ratio of the same model (0.09)
is the kernels'; the rest of the gap to graph2mat is the architecture (MACE on the 4.5 Å graph
rather than on every block pair).  Per-atom times stay flat from 64 to 4096 atoms (linear cost).
"""

from __future__ import annotations

import os
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch

from benchmarks._bench import interleaved, sizes, timed
from hforge.datasets import load
from hforge.models import ModelConfig, build_model

SIZES = sizes([64], [64, 512, 4096])
GENERATED = (64, 512)  # larger cells: the 512-atom cell repeated
IMPLEMENTATIONS = ["hforge-equivariant-torch", "hforge-equivariant-numba", "hforge-invariant", "graph2mat"]
CHANNELS = 16
#: Sizes left out unless ``HFORGE_BENCH_ALL=1``, measured on this 2-core machine under load (see TOO_SLOW_WHY).
RUN_ALL = os.environ.get("HFORGE_BENCH_ALL") == "1"
TOO_SLOW = {"hforge-equivariant-torch": (512, 4096), "graph2mat": (4096,)}
TOO_SLOW_WHY = {
    "hforge-equivariant-torch": "the torch reference of the CG kernels (the oracle, not a fast path) "
    "took 9-46 s at 64 atoms here, i.e. minutes per call beyond",
    "graph2mat": "56 s at 512 atoms here and linear in atoms, i.e. ~8 min per call (and the warm-up) at 4096",
}
THREADS = int(os.environ.get("HFORGE_BENCH_THREADS", "1"))


@pytest.fixture(scope="module", autouse=True)
def threads():
    """Every implementation on ``THREADS`` threads (torch and numba): on a shared 2-core machine
    intra-op threads mostly wait for each other, and one thread gives stable per-core times."""
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


def cache_dir() -> Path:
    path = Path(os.environ.get("HFORGE_BENCH_CACHE", Path(tempfile.gettempdir()) / "hforge-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def abn_cell(n_atoms: int):
    """The benchmark's aBN cell of ``n_atoms`` (see the module docstring), as ``ase.Atoms``."""
    import ase.io

    if n_atoms not in GENERATED:
        base = max(n for n in GENERATED if n_atoms % n == 0)
        repeat = round((n_atoms / base) ** (1 / 3))
        assert repeat**3 * base == n_atoms, n_atoms
        return abn_cell(base).repeat((repeat,) * 3)
    path = cache_dir() / f"abn_{n_atoms}_fast_seed0.xyz"
    if not path.exists():
        from hforge.structures import amorphous_bn

        atoms = amorphous_bn(n_atoms, seed=0, protocol="fast", progress=False)
        partial = path.with_suffix(".part.xyz")
        ase.io.write(partial, atoms, format="extxyz")
        partial.replace(path)
    return ase.io.read(path, format="extxyz")


@cache
def dataset():
    return load("abn-small")


class Case(NamedTuple):
    """A model, how to make its input from ``ase.Atoms`` and how to run it on that input."""

    model: torch.nn.Module
    prepare: Callable[[Any], Any]
    run: Callable[[Any], Any]


def hforge_case(kind: str, backend: str) -> Case:
    torch.manual_seed(0)
    data = dataset()
    model = build_model(ModelConfig(kind=kind, backend=backend), data.basis, data.statistics).eval()
    return Case(model, model.graph_builder(), model)


def graph2mat_case() -> Case:
    """graph2mat's MatrixMACE as the transfer study builds it (:func:`hforge.train.graph2mat.graph2mat_model`)."""
    import sisl
    from graph2mat.bindings.torch import TorchBasisMatrixData

    from hforge.train.graph2mat import graph2mat_model

    basis = dataset().basis
    sisl_atoms = basis.to_sisl()
    torch.manual_seed(0)
    model, processor = graph2mat_model(basis)
    model = model.float().eval()

    def prepare(atoms):
        species = [basis.index(symbol) for symbol in atoms.get_chemical_symbols()]
        geometry = sisl.Geometry(atoms.positions, atoms=[sisl_atoms[s] for s in species], lattice=np.asarray(atoms.cell))
        data = TorchBasisMatrixData.new(geometry, data_processor=processor, labels=False)
        data["ptr"] = torch.tensor([0, len(atoms)])
        data["batch"] = torch.zeros(len(atoms), dtype=torch.long)
        for key in ("positions", "cell", "shifts", "node_attrs"):
            data[key] = data[key].float()
        return data

    return Case(model, prepare, model)


def make_case(implementation: str) -> Case:
    if implementation == "graph2mat":
        return graph2mat_case()
    parts = implementation.split("-")  # hforge, kind[, backend]
    return hforge_case(parts[1], parts[2] if len(parts) > 2 else "auto")


def input_size(implementation: str, inputs) -> dict[str, int]:
    if implementation == "graph2mat":
        return {"edges": int(inputs["n_edges"])}
    return {"pairs": inputs.n_pairs, "interaction_edges": int(inputs.edge_index.shape[1])}


def check_output(implementation: str, case: Case, inputs, atoms, output) -> int:
    """Check ``output`` (see the module docstring); the number of blocks it predicts."""
    import copy

    from hforge.graph import orbital_pair_list

    n_orb = dataset().basis.n_orbitals[0]  # DZP: the same 13 orbitals for B and N
    if implementation == "graph2mat":
        blocks = len(atoms) + int(inputs["n_edges"]) // 2  # symmetric: one block per pair of directed edges
        assert output["node_labels"].numel() + output["edge_labels"].numel() == blocks * n_orb**2
        return blocks
    basis = dataset().basis
    species = np.array([basis.index(s) for s in atoms.get_chemical_symbols()])
    radii = np.array([sp.cutoff for sp in basis])
    pairs = orbital_pair_list(atoms.positions, atoms.cell.array, True, species, radii, half=True, onsite=True)
    assert inputs.n_pairs == pairs.n_pairs and output.h.numel() == pairs.n_pairs * n_orb**2
    if implementation == "hforge-equivariant-numba":
        reference = hforge_case("equivariant", "torch").model
    elif implementation == "hforge-invariant":
        reference = copy.deepcopy(case.model).double()  # casts the graph's positions itself
    else:
        return pairs.n_pairs
    reference.load_state_dict(case.model.state_dict())
    expected = reference(inputs).h.float()
    error = float((output.h - expected).abs().max() / expected.abs().max())
    assert error < 1e-4, f"{implementation} differs from its reference by {error:.2e} (relative)"
    return pairs.n_pairs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n_atoms", SIZES)
def test_model_forward(benchmark, n_atoms, implementation):
    if n_atoms in TOO_SLOW.get(implementation, ()) and not RUN_ALL:
        pytest.skip(f"{implementation} at {n_atoms} atoms: {TOO_SLOW_WHY[implementation]}")
    case = make_case(implementation)
    atoms = abn_cell(n_atoms)
    start = time.perf_counter()
    inputs = case.prepare(atoms)
    graph_s = time.perf_counter() - start
    benchmark.group = "model_forward"
    with torch.no_grad():
        case.run(case.prepare(abn_cell(SIZES[0])))  # warm-up on the smallest cell: compilation, caches
        blocks = check_output(implementation, case, inputs, atoms, case.run(inputs))
        if implementation == "hforge-equivariant-numba":
            timed(benchmark, lambda: case.run(inputs))
        else:
            hforge = make_case("hforge-equivariant-numba")
            hforge_inputs = hforge.prepare(atoms)
            interleaved(benchmark, lambda: case.run(inputs), lambda: hforge.run(hforge_inputs))
    benchmark.extra_info.update(
        atoms=n_atoms, graph_s=graph_s, parameters=sum(p.numel() for p in case.model.parameters()), blocks=blocks,
        **input_size(implementation, inputs),
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["s_per_atom"] = benchmark.stats.stats.min / n_atoms
