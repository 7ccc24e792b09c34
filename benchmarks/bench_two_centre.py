"""Exact two-centre integrals (groups ``two_centre_tables``, ``overlap``, ``baseline``).

- ``two_centre_tables``: the tables and programs of the aBN DZP basis (every program: S, T, H0,
  crystal field, KB projections), built from scratch each round (the cache cleared).
- ``overlap``: S of every canonical block pair (``|r_ij| < r_i + r_j``, onsite included) of the
  generator's random aBN start at 2.2 g/cm³ (10^3 and 10^4 atoms: 1.3e5 and 1.3e6 blocks of up to
  13 x 13): the numba backend against the readable torch reference (numpy-level vectorised, one
  gather per pair type and chunk; interleaved round by round with numba, ``extra_info["ratio_*"]``
  = torch / numba), the compiled ``cpp`` program (pairs in vector lanes) against numba (interleaved,
  ``ratio_*`` = numba / cpp) and a numpy copy of the output bytes (the memory-bandwidth floor).
- ``baseline``: H0 = T + V_KB + two-centre V_NA of the same pairs (numba), KB contraction included.
- ``separable``: inference's separable operator ``sum_k P D_k P^T + V_KB`` (the bundled abn-dzp's
  projectors, 27 learned + 8 KB functions per atom, random symmetric ``D_k``) on every canonical pair
  of the same cells (10^3 atoms; 10^3 and 4x10^3 for ``full``), float32, projections packed once:
  the compiled ``cpp`` contraction (kernels/cpu, the best instruction set here) against the numba
  kernel it replaced, interleaved (``ratio_*`` = numba / cpp), and a numpy copy of the output bytes.
- ``projections``: the packing of those projections for every atom of the same cells (the
  ``projections`` stage of a prediction: layout, zeroing the kept buffer, the projection programs of
  the learned and KB projectors into the packed rows), float32, refilling the buffer of the previous
  round as a prediction's ranges do: the ``cpp`` program against numba's (interleaved, ``ratio_*`` =
  numba / cpp), and a numpy copy of the packed bytes.

Before anything is timed, every result is checked: the tables rebuilt equal the first build, the
numba S and H0 equal the torch reference on the first 2,000 pairs (to 1e-12), the copy its
source.  Then at least 3 rounds after a warm-up.  Sizes: 10^3 atoms (``HFORGE_BENCH_SIZE=small``,
the default), 10^3 and 10^4 (``full``).

The basis is the bundled sample's (``hforge.datasets.load("abn-small").basis``, radial tables
included), so no shared data is needed.  Run:

    .venv/bin/python -m pytest benchmarks/bench_two_centre.py --benchmark-only --benchmark-group-by=group,param:n_atoms
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from benchmarks._bench import interleaved, sizes, timed
from hforge.datasets import load
from hforge.graph import neighbour_list
from hforge.ops.two_centre import baseline_blocks, block_pointer, overlap_blocks, two_centre_descriptor
from hforge.ops.two_centre.descriptor import _descriptor
from hforge.structures import random_bn_cell

SIZES = sizes([1_000], [1_000, 10_000])
SEPARABLE_SIZES = sizes([1_000], [1_000, 4_000])
CHECKED_PAIRS = slice(0, 2_000)


@cache
def basis():
    return load("abn-small").basis


@cache
def case(n_atoms: int):
    atoms = random_bn_cell(n_atoms, density=2.2, seed=0)
    b = basis()
    species = np.array([b.index(s) for s in atoms.get_chemical_symbols()])
    positions, cell = atoms.get_positions(), np.asarray(atoms.get_cell())
    pairs = neighbour_list(positions, cell, True, b.pair_cutoffs(), species=species, half=True, onsite=True)
    program = two_centre_descriptor(b).program("overlap")
    ptr = block_pointer(program, species[pairs.edge_index[0]] * len(b) + species[pairs.edge_index[1]])
    return species, positions, cell, pairs.edge_index, pairs.cell_shift, ptr


def test_tables(benchmark):
    def build():
        _descriptor.cache_clear()
        return two_centre_descriptor(basis())

    first, again = build().tables, build().tables
    assert again.step == first.step
    np.testing.assert_array_equal(again.values, first.values)
    np.testing.assert_array_equal(again.reach, first.reach)
    benchmark.group = "two_centre_tables"
    desc = timed(benchmark, build)
    benchmark.extra_info["tables"] = desc.tables.n_tables


def _cpp_or_skip(benchmark) -> None:
    """Skip where the cpp backend is not built; record its instruction set."""
    from hforge.ops.backends import backend_status

    status = backend_status()["cpp"]
    if not status.available:
        pytest.skip(f"the cpp backend is unavailable here: {status.reason}")
    benchmark.extra_info["isa"] = status.reason


@pytest.mark.parametrize("n_atoms", SIZES)
@pytest.mark.parametrize("impl", ["cpp-vs-numba", "numba", "torch", "numpy-copy"])
def test_overlap(benchmark, n_atoms, impl):
    species, positions, cell, edges, shifts, ptr = case(n_atoms)
    args = (basis(), species, positions, cell, edges, shifts)
    benchmark.group = "overlap"
    benchmark.extra_info.update(n_atoms=n_atoms, n_pairs=edges.shape[1], n_values=int(ptr[-1]))
    if impl == "numpy-copy":  # the bandwidth floor: writing as many float64 values as S has
        source = np.ones(int(ptr[-1]))
        assert not np.shares_memory(source.copy(), source)  # the floor writes fresh memory, as overlap_blocks does
        timed(benchmark, source.copy, rounds=5)
        return
    fast = overlap_blocks(*args, block_ptr=ptr, backend="numba")
    expected = overlap_blocks(*args[:4], edges[:, CHECKED_PAIRS], shifts[CHECKED_PAIRS], backend="torch")
    np.testing.assert_allclose(fast[: len(expected)], expected, rtol=0, atol=1e-12)
    out = np.empty_like(fast)
    numba = lambda: overlap_blocks(*args, block_ptr=ptr, backend="numba", out=out)  # noqa: E731
    if impl == "numba":
        timed(benchmark, numba, rounds=5)
    elif impl == "cpp-vs-numba":
        _cpp_or_skip(benchmark)
        compiled_out = np.empty_like(fast)
        compiled = lambda: overlap_blocks(*args, block_ptr=ptr, backend="cpp", out=compiled_out)  # noqa: E731
        np.testing.assert_allclose(compiled()[: len(expected)], expected, rtol=0, atol=1e-12)
        ratio = interleaved(benchmark, numba, compiled)
        if ratio is not None:
            print(f"\n{n_atoms} atoms, overlap: numba / cpp {ratio}")
    else:
        reference = lambda: overlap_blocks(*args, block_ptr=ptr, backend="torch")  # noqa: E731
        interleaved(benchmark, reference, numba)


@pytest.mark.parametrize("n_atoms", SIZES)
def test_baseline(benchmark, n_atoms):
    species, positions, cell, edges, shifts, ptr = case(n_atoms)
    benchmark.group = "baseline"
    args = (basis(), species, positions, cell, True, edges, shifts)
    fast = baseline_blocks(*args, block_ptr=ptr)
    expected = baseline_blocks(*args[:5], edges[:, CHECKED_PAIRS], shifts[CHECKED_PAIRS], backend="torch")
    np.testing.assert_allclose(fast[: len(expected)], expected, rtol=0, atol=1e-12)
    timed(benchmark, lambda: baseline_blocks(*args, block_ptr=ptr))


@cache
def separable_case(n_atoms: int):
    """The abn-dzp separable operator on the canonical pairs of ``case(n_atoms)``'s cell (its basis:
    the bundled model's), projections packed once in float32, random symmetric ``D_k``."""
    import hforge
    from hforge.ops.two_centre.separable import SeparableContext

    model = hforge.load("abn-dzp").model
    atoms = random_bn_cell(n_atoms, density=2.2, seed=0)
    b = model.basis
    species = np.array([b.index(s) for s in atoms.get_chemical_symbols()])
    positions, cell = atoms.get_positions(), np.asarray(atoms.get_cell())
    pairs = neighbour_list(positions, cell, True, b.pair_cutoffs(), species=species, half=True, onsite=True)
    program = two_centre_descriptor(b).program("overlap")
    ptr = block_pointer(program, species[pairs.edge_index[0]] * len(b) + species[pairs.edge_index[1]])
    contexts = {
        backend: SeparableContext(b, model.config.projectors, species, positions, cell, True, kb_scale=1.0, backend=backend)
        for backend in ("auto", "numba")
    }
    packed = contexts["auto"].pack(np.ones(n_atoms, dtype=bool), np.float32)
    rng = np.random.default_rng(0)
    n_p = contexts["auto"].n_proj
    d = rng.normal(size=(n_atoms, n_p, n_p)).astype(np.float32)
    return contexts, packed, pairs.edge_index, pairs.cell_shift, ptr, (d + d.transpose(0, 2, 1)) / 2


@pytest.mark.parametrize("n_atoms", SEPARABLE_SIZES)
@pytest.mark.parametrize("impl", ["cpp-vs-numba", "numpy-copy"])
def test_separable(benchmark, n_atoms, impl):
    contexts, packed, edges, shifts, ptr, operators = separable_case(n_atoms)
    benchmark.group = "separable"
    benchmark.extra_info.update(n_atoms=n_atoms, n_pairs=edges.shape[1], n_values=int(ptr[-1]))
    if impl == "numpy-copy":  # the bandwidth floor: writing as many float32 values as the blocks have
        source = np.ones(int(ptr[-1]), dtype=np.float32)
        timed(benchmark, source.copy, rounds=5)
        return
    _cpp_or_skip(benchmark)
    out = {backend: np.empty(int(ptr[-1]), dtype=np.float32) for backend in contexts}

    def run(backend: str) -> np.ndarray:
        return contexts[backend].operator_blocks(edges, shifts, ptr, operators, dtype=np.float32, packed=packed, out=out[backend])

    got, want = run("auto"), run("numba")
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.abs(want).max()))
    ratio = interleaved(benchmark, lambda: run("numba"), lambda: run("auto"))
    if ratio is not None:
        print(f"\n{n_atoms} atoms, separable contraction: numba / cpp {ratio}")


@pytest.mark.parametrize("n_atoms", SEPARABLE_SIZES)
@pytest.mark.parametrize("impl", ["cpp-vs-numba", "numpy-copy"])
def test_projections(benchmark, n_atoms, impl):
    contexts, packed, edges, _, _, _ = separable_case(n_atoms)
    benchmark.group = "projections"
    every = np.ones(n_atoms, dtype=bool)
    benchmark.extra_info.update(n_atoms=n_atoms, packed_rows=packed.values.shape[0], packed_bytes=packed.values.nbytes)
    if impl == "numpy-copy":  # the bandwidth floor: writing as many float32 values as the packed rows have
        source = np.ones_like(packed.values)
        timed(benchmark, source.copy, rounds=5)
        return
    _cpp_or_skip(benchmark)
    want = contexts["numba"].pack(every, np.float32)
    np.testing.assert_allclose(contexts["auto"].pack(every, np.float32).values, want.values, rtol=0, atol=1e-6)

    def run(backend: str) -> None:  # the kept buffer refilled, as from a prediction's second range on
        context = contexts[backend]
        context.release(context.pack(every, np.float32))

    ratio = interleaved(benchmark, lambda: run("numba"), lambda: run("auto"))
    if ratio is not None:
        print(f"\n{n_atoms} atoms, projections packed: numba / cpp {ratio}")
