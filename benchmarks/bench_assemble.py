"""CSR assembly of H and S (K = 2), group ``csr_assembly``: HForge's numba backend against scipy's
COO -> CSR, torch's sparse COO -> CSR, sisl's construction from CSR, and a numpy copy of the output
bytes (the memory-bandwidth ceiling), on the same blocks in the same run.

Cells: dense amorphous-like B/N, cubic, 2.2 g/cm^3, 10^3 and 10^4 atoms: a jittered grid
(random sites of a cubic grid, +-0.2 Å jitter, so every distance is >= 1.3 Å; the pair counts
depend on the density only), random B/N species, SIESTA DZP pair cutoffs B-B 7.48, B-N 6.52,
N-N 5.56 Å, 13 orbitals per atom, vesin neighbour list.  Random block values.

Baselines: ``coo_matrix((v, (r, c))).tocsr()`` per matrix and
``sparse_coo_tensor(...).coalesce().to_sparse_csr()`` with their COO triplets (block order, int32
indices) built before the clock starts, the strongest form of each; the same scipy path timed from
the blocks (vectorised COO expansion included: the peers' pipeline without its Python loop);
``sisl.Hamiltonian.fromsp`` from the scipy matrices; sisl's per-block ``H[rows, cols] = block``,
timed on 400 blocks and extrapolated (10^3 atoms only).  A baseline whose estimated peak memory
exceeds what is available is skipped, and says so.  Peak memory: the rise of the process's peak RSS during one
call (``/proc/self/clear_refs`` resets it), as a multiple of the output CSR bytes.

Every method's output is first checked equal, entry for entry, to HForge's numba assembly, itself
checked against the scipy reference (``backend="torch"``) on the rows of 50 atoms; then it is timed
(at least 3 rounds after a warm-up, see ``_bench.py``).  Each peer runs interleaved with HForge's
numba assembly (HForge's call before each of the peer's rounds), so the ratios come per round, with
their spread: ``extra_info["ratio_median"]``, ``ratio_min``, ``ratio_max``.

On a virtual machine the first touch of fresh memory can cost from 0.1 to 3 s per GB from one
call to the next (the host backs guest pages lazily): every allocating method (HForge's
``assemble_csr``, scipy, torch, sisl, the allocating copy) pays it, so compare minima over rounds,
and the ``preallocated`` pair (fill vs copy into touched buffers) for the kernels themselves.

Sizes: 300 atoms (``HFORGE_BENCH_SIZE=small``, the default), 10^3 and 10^4 atoms (``full``; the
README's figures, benchmarks/results/csr_assembly/).
Run: ``.venv/bin/python -m pytest benchmarks/bench_assemble.py --benchmark-only -s`` (a summary
table with ratios is printed at the end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from benchmarks._bench import interleaved, sizes, timed
from hforge.ops.assemble import assemble_csr, is_canonical, plan_csr_assembly

SIZES = sizes((300,), (1_000, 10_000))
ORBITALS = 13  # DZP: 2s x2, 2p x2, 3d
CUTOFFS = np.array([[7.48, 6.52], [6.52, 5.56]])  # Å, species 0 = B, 1 = N
AMU_G = 1.66053906660e-24
RESULTS: dict[tuple[int, str], dict] = {}
OUTPUT: dict[int, int] = {}  # output CSR bytes per size


@dataclass
class Cell:
    n_atoms: int
    edge_index: np.ndarray
    cell_shift: np.ndarray
    block_ptr: np.ndarray
    blocks: np.ndarray  # (2, n_values): H then S
    orbitals_per_atom: np.ndarray
    lattice: np.ndarray
    nnz: int
    output_bytes: int


def amorphous_bn(n_atoms: int, seed: int = 0, density: float = 2.2):
    """Positions (Å), cubic cell and species (0 B, 1 N) of a dense B/N cell without close contacts."""
    rng = np.random.default_rng(seed)
    per_a3 = density / (0.5 * (10.81 + 14.007) * AMU_G) * 1e-24
    side = (n_atoms / per_a3) ** (1 / 3)
    m = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.unravel_index(rng.choice(m**3, n_atoms, replace=False), (m, m, m)), axis=1)
    positions = (grid + 0.5) * (side / m) + rng.uniform(-0.2, 0.2, (n_atoms, 3))
    return positions, side * np.eye(3), rng.permutation(np.arange(n_atoms) % 2)


def canonical_pairs(positions, lattice, species):
    from vesin import NeighborList

    i, j, shift, d = NeighborList(cutoff=CUTOFFS.max(), full_list=True).compute(
        positions, lattice, True, quantities="ijSd"
    )
    keep = d < CUTOFFS[species[i], species[j]]
    n = len(positions)
    edge_index = np.concatenate([np.stack([i[keep], j[keep]]), np.tile(np.arange(n), (2, 1))], axis=1)
    shift = np.concatenate([shift[keep], np.zeros((n, 3))]).astype(np.int64)
    canonical = is_canonical(edge_index, shift)
    return np.ascontiguousarray(edge_index[:, canonical], dtype=np.int64), np.ascontiguousarray(shift[canonical])


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}_atoms")
def cell(request) -> Cell:
    n_atoms = request.param
    positions, lattice, species = amorphous_bn(n_atoms)
    edge_index, cell_shift = canonical_pairs(positions, lattice, species)
    orbitals = np.full(n_atoms, ORBITALS, dtype=np.int64)
    block_ptr = np.arange(edge_index.shape[1] + 1, dtype=np.int64) * ORBITALS**2
    blocks = np.random.default_rng(1).normal(size=(2, block_ptr[-1]))
    plan = plan_csr_assembly(edge_index, cell_shift, block_ptr, orbitals)
    nnz = plan.nnz
    output_bytes = nnz * (2 * 8 + 4) + (plan.shape[0] + 1) * 4
    return Cell(n_atoms, edge_index, cell_shift, block_ptr, blocks, orbitals, lattice, nnz, output_bytes)


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def first_call(run) -> tuple[int, object]:
    """``run()``'s result and the rise of the peak RSS during the call (result included), in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kb("VmRSS")
    result = run()
    return (_rss_kb("VmHWM") - before) * 1024, result


def measure(benchmark, cell: Cell, method: str, run, check, *, rounds: int, hforge=None) -> None:
    """Check one call's result and its peak memory, then time: ``rounds`` rounds, interleaved with
    ``hforge`` (HForge's call before each round) when given; results kept for the summary."""
    peak, result = first_call(run)  # also the warm-up's start (JIT, first touch of fresh memory)
    check(result)
    del result
    if hforge is None:
        timed(benchmark, run, rounds=rounds)
        ratio = None
    else:
        ratio = interleaved(benchmark, run, hforge, rounds=rounds)
    if benchmark.stats is None:  # --benchmark-disable: the check alone
        return
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(
        n_atoms=cell.n_atoms,
        nnz=cell.nnz,
        output_GB=cell.output_bytes / 1e9,
        GB_per_s=cell.output_bytes / seconds / 1e9,
        peak_over_output=peak / cell.output_bytes,
    )
    RESULTS[(cell.n_atoms, method)] = dict(seconds=seconds, peak=peak, ratio=ratio)


def _row_order(indptr: np.ndarray, indices: np.ndarray):
    """The permutation that sorts the columns of every row (a slice when they are sorted already)."""
    ascending = np.diff(indices) > 0
    boundaries = indptr[1:-1]
    ascending[boundaries[(boundaries > 0) & (boundaries < indices.size)] - 1] = True
    if ascending.all():
        return slice(None)
    return np.concatenate([np.argsort(indices[a:b], kind="stable") + a for a, b in zip(indptr[:-1], indptr[1:])])


def assert_matrix(indptr, indices, values, expected, k: int) -> None:
    """One CSR matrix (columns sorted if need be) equals matrix ``k`` of ``expected``, exactly."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    order = _row_order(indptr, indices)
    np.testing.assert_array_equal(indptr, expected.indptr)
    np.testing.assert_array_equal(np.asarray(indices)[order], expected.indices)
    np.testing.assert_array_equal(np.asarray(values)[order], expected.data[:, k])


def same_csr(expected):
    """Check of an :class:`AssembledCSR` result (host or device) against ``expected``."""

    def check(csr) -> None:
        host = (lambda a: a.get()) if hasattr(csr.indices, "get") else np.asarray
        for k in range(expected.data.shape[1]):
            assert_matrix(host(csr.indptr), host(csr.indices), host(csr.data)[:, k], expected, k)

    return check


def same_scipy(expected):
    """Check of scipy (or cupyx) CSR matrices, one per value array, against ``expected``."""

    def check(matrices) -> None:
        for k, m in enumerate(matrices):
            m = m.get() if hasattr(m, "get") else m
            assert_matrix(m.indptr, m.indices, m.data, expected, k)

    return check


def skip_unless_memory(cell: Cell, bytes_per_nonzero: float, what: str) -> None:
    need = cell.nnz * bytes_per_nonzero
    available = psutil.virtual_memory().available
    if need > 0.8 * available:
        RESULTS[(cell.n_atoms, what)] = dict(skipped=f"needs ~{need / 1e9:.0f} GB, {available / 1e9:.0f} GB free")
        pytest.skip(f"{what}: needs ~{need / 1e9:.1f} GB, only {available / 1e9:.1f} GB available")


def coo_triplets(cell: Cell):
    """Rows, columns (int32, in block order: every block, then every partner block) and H, S values."""
    import sisl

    n, (i, j), shift = ORBITALS, cell.edge_index, cell.cell_shift
    lattice = sisl.Lattice(np.eye(3), nsc=2 * np.abs(shift).max(axis=0) + 1)
    no = cell.n_atoms * n
    partner = ~((i == j) & ~shift.any(axis=1))
    sc = np.asarray(lattice.sc_index(shift), dtype=np.int64)
    sc_partner = np.asarray(lattice.sc_index(-shift[partner]), dtype=np.int64)
    orbital = np.arange(n, dtype=np.int32)

    def expand(row_first, col_first):  # (P,) first row / column of each block -> (P * n * n,) int32
        shape = (row_first.size, n, n)
        rows = np.broadcast_to(row_first.astype(np.int32)[:, None, None] + orbital[:, None], shape)
        cols = np.broadcast_to(col_first.astype(np.int32)[:, None, None] + orbital, shape)
        return rows.ravel(), cols.ravel()

    forward = expand(n * i, no * sc + n * j)
    backward = expand(n * j[partner], no * sc_partner + n * i[partner])
    rows, cols = np.concatenate([forward[0], backward[0]]), np.concatenate([forward[1], backward[1]])
    del forward, backward
    values = cell.blocks.reshape(2, -1, n, n)
    data = [np.concatenate([v.ravel(), v[partner].transpose(0, 2, 1).ravel()]) for v in values]
    return rows, cols, data, (no, no * lattice.n_s)


def _rounds(cell: Cell, small: int, large: int) -> int:
    return small if cell.n_atoms <= 1_000 else large


BANDWIDTH_PAIRS = (  # (assembly, the copy of the same bytes it is compared with)
    ("hforge numba fill (preallocated)", "numpy copy (preallocated)"),
    ("hforge numba", "numpy copy (allocating)"),
    ("hforge cupy (GPU)", "cupy copy (GPU, allocating)"),
)


@pytest.fixture(scope="module", autouse=True)
def summary():
    """Print the measured table, with ratios to HForge's time and to the copy bandwidth, at the end."""
    yield
    lines = ["", f"csr_assembly (load average {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}): "
             "min time over rounds, peak RSS rise / output bytes, output bytes / time, time / hforge numba "
             "(median and range over interleaved rounds where interleaved, else ratio of minima)"]
    for n_atoms in SIZES:
        mine = RESULTS.get((n_atoms, "hforge numba"), {})
        for (size, method), r in RESULTS.items():
            if size != n_atoms:
                continue
            if "skipped" in r:
                lines.append(f"{n_atoms:>6} atoms  {method:<36} skipped: {r['skipped']}")
                continue
            ratio = r.get("ratio") or (f"{r['seconds'] / mine['seconds']:.1f}x" if "seconds" in mine else "")
            peak = "  n/a" if r["peak"] is None else f"{r['peak'] / OUTPUT[n_atoms]:5.2f}x"
            lines.append(
                f"{n_atoms:>6} atoms  {method:<36} {r['seconds']:8.3f} s  peak {peak}  "
                f"{OUTPUT[n_atoms] / r['seconds'] / 1e9:6.2f} GB/s  {ratio}"
            )
        for fill, copy in BANDWIDTH_PAIRS:
            a, b = RESULTS.get((n_atoms, fill), {}), RESULTS.get((n_atoms, copy), {})
            if "seconds" in a and "seconds" in b:
                lines.append(f"{n_atoms:>6} atoms  {fill} at {b['seconds'] / a['seconds']:.0%} of {copy}")
    print("\n".join(lines))


@pytest.fixture
def out(cell):
    OUTPUT[cell.n_atoms] = cell.output_bytes
    return cell


@pytest.fixture(scope="module")
def expected(cell):
    """HForge's numba assembly of the cell, checked against the scipy reference on the rows of 50 atoms."""
    args = (cell.edge_index, cell.cell_shift, cell.block_ptr, cell.orbitals_per_atom)
    whole = plan_csr_assembly(*args, backend="numba").fill(cell.blocks)
    rows = (cell.n_atoms // 2, cell.n_atoms // 2 + 50)
    reference = plan_csr_assembly(*args, nsc=whole.nsc, atoms=rows, backend="torch").fill(cell.blocks)
    part = plan_csr_assembly(*args, nsc=whole.nsc, atoms=rows, backend="numba").fill(cell.blocks)
    same_csr(reference)(part)
    first, last = whole.indptr[reference.row_offset], whole.indptr[reference.row_offset + reference.shape[0]]
    np.testing.assert_array_equal(whole.indices[first:last], reference.indices)
    np.testing.assert_array_equal(whole.data[first:last], reference.data)
    return whole


def hforge_numba(cell: Cell):
    """HForge's whole-matrix assembly (numba), the side every CPU peer is interleaved with."""
    args = (cell.edge_index, cell.cell_shift, cell.block_ptr, cell.blocks, cell.orbitals_per_atom)
    return lambda: assemble_csr(*args, backend="numba")


@pytest.mark.benchmark(group="csr_assembly")
def test_hforge_numba(benchmark, out, expected):
    measure(benchmark, out, "hforge numba", hforge_numba(out), same_csr(expected), rounds=_rounds(out, 10, 3))


@pytest.mark.benchmark(group="csr_assembly")
def test_hforge_numba_fill_preallocated(benchmark, out, expected):
    """The row-range path: plan once, fill caller-provided (already touched) buffers."""
    cell = out
    plan = plan_csr_assembly(cell.edge_index, cell.cell_shift, cell.block_ptr, cell.orbitals_per_atom)
    indices, data = np.zeros(plan.nnz, dtype=np.int32), np.zeros((plan.nnz, 2))
    run = lambda: plan.fill(cell.blocks, indices_out=indices, data_out=data)  # noqa: E731
    measure(benchmark, cell, "hforge numba fill (preallocated)", run, same_csr(expected), rounds=_rounds(cell, 10, 3))


def same_arrays(*arrays):
    """Check of a copy: arrays of its own memory (not the originals or views of them) holding the
    originals' values, element for element."""

    def check(copies) -> None:
        for copy, original in zip(copies, arrays):
            host = copy.get() if hasattr(copy, "get") else copy
            assert not np.shares_memory(host, original), "not a copy: the original's memory"
            np.testing.assert_array_equal(host, original)

    return check


@pytest.mark.benchmark(group="csr_assembly")
def test_numpy_copy_preallocated(benchmark, out, expected):
    """Copy of the output bytes into touched buffers: the ceiling of a fill into given buffers."""
    indices, data = np.zeros_like(expected.indices), np.zeros_like(expected.data)

    def run():
        np.copyto(indices, expected.indices)
        np.copyto(data, expected.data)
        return indices, data

    measure(benchmark, out, "numpy copy (preallocated)", run, same_arrays(expected.indices, expected.data),
            rounds=_rounds(out, 10, 3))


@pytest.mark.benchmark(group="csr_assembly")
def test_numpy_copy_allocating(benchmark, out, expected):
    """Copy of the output bytes into new arrays: the ceiling of an assembly that allocates its output."""
    run = lambda: (expected.indices.copy(), expected.data.copy())  # noqa: E731
    measure(benchmark, out, "numpy copy (allocating)", run, same_arrays(expected.indices, expected.data),
            rounds=_rounds(out, 10, 3))


def scipy_csr(rows, cols, data, shape):
    import scipy.sparse

    return [scipy.sparse.coo_matrix((d, (rows, cols)), shape=shape).tocsr() for d in data]


@pytest.mark.benchmark(group="csr_assembly")
def test_scipy_coo_tocsr(benchmark, out, expected):
    """scipy's COO -> CSR of H and S, the COO triplets given (built before the clock starts)."""
    cell = out
    skip_unless_memory(cell, 48, "scipy coo_matrix.tocsr")
    triplets = coo_triplets(cell)
    measure(benchmark, cell, "scipy coo_matrix.tocsr", lambda: scipy_csr(*triplets), same_scipy(expected),
            rounds=3, hforge=hforge_numba(cell))


@pytest.mark.benchmark(group="csr_assembly")
def test_scipy_from_blocks(benchmark, out, expected):
    """The peers' pipeline, vectorised: blocks -> COO triplets (numpy) -> CSR (scipy), H and S."""
    cell = out
    skip_unless_memory(cell, 64, "scipy from blocks (COO + tocsr)")
    measure(benchmark, cell, "scipy from blocks (COO + tocsr)", lambda: scipy_csr(*coo_triplets(cell)),
            same_scipy(expected), rounds=3, hforge=hforge_numba(cell))


@pytest.mark.benchmark(group="csr_assembly")
def test_torch_coo_coalesce_csr(benchmark, out, expected):
    import torch

    cell = out
    skip_unless_memory(cell, 130, "torch coalesce.to_sparse_csr")
    rows, cols, data, shape = coo_triplets(cell)
    indices = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    values = torch.from_numpy(np.stack(data, axis=1))
    del rows, cols, data

    def run():
        return torch.sparse_coo_tensor(indices, values, (*shape, 2), check_invariants=False).coalesce().to_sparse_csr()

    def check(csr) -> None:
        for k in range(2):
            assert_matrix(csr.crow_indices().numpy(), csr.col_indices().numpy(), csr.values()[:, k].numpy(), expected, k)

    measure(benchmark, cell, "torch coalesce.to_sparse_csr", run, check, rounds=3,
            hforge=hforge_numba(cell))


@pytest.mark.benchmark(group="csr_assembly")
def test_sisl_fromsp(benchmark, out, expected):
    """sisl's construction of a Hamiltonian from (already assembled) scipy CSR matrices of H and S."""
    import sisl

    cell = out
    skip_unless_memory(cell, 64, "sisl Hamiltonian.fromsp")
    rows, cols, data, shape = coo_triplets(cell)
    h, s = scipy_csr(rows, cols, data, shape)
    del rows, cols, data
    atom = sisl.Atom(5, orbitals=[sisl.AtomicOrbital("s", R=3.0)] * ORBITALS)
    geometry = sisl.Geometry(np.zeros((cell.n_atoms, 3)), atoms=atom, lattice=cell.lattice)
    geometry.set_nsc(2 * np.abs(cell.cell_shift).max(axis=0) + 1)
    run = lambda: sisl.Hamiltonian.fromsp(geometry, h, S=s)  # noqa: E731
    check = lambda H: same_scipy(expected)([H.tocsr(0), H.tocsr(1)])  # noqa: E731
    measure(benchmark, cell, "sisl Hamiltonian.fromsp", run, check, rounds=3, hforge=hforge_numba(cell))


@pytest.mark.benchmark(group="csr_assembly")
def test_sisl_setitem_per_block(benchmark, out, expected):
    """sisl's native construction from blocks, ``H[rows, cols] = (h, s)`` per directed block: timed on
    the first 200 canonical pairs (and their partners) and extrapolated to the cell, which it names."""
    import sisl

    cell = out
    if cell.n_atoms > 1_000:
        pytest.skip("a Python loop over blocks: timed at 10^3 atoms only")
    n, (i, j), shift = ORBITALS, cell.edge_index, cell.cell_shift
    atom = sisl.Atom(5, orbitals=[sisl.AtomicOrbital("s", R=3.0)] * n)
    geometry = sisl.Geometry(np.zeros((cell.n_atoms, 3)), atoms=atom, lattice=cell.lattice)
    geometry.set_nsc(2 * np.abs(shift).max(axis=0) + 1)
    no, sc_index = geometry.no, geometry.lattice.sc_index
    values = np.stack(cell.blocks, axis=-1).reshape(-1, n, n, 2)
    sample = range(200)
    n_directed = 2 * i.size - cell.n_atoms
    n_sample = sum(1 if (i[e] == j[e] and not shift[e].any()) else 2 for e in sample)

    def run():
        H = sisl.Hamiltonian(geometry, orthogonal=False, nnzpr=2000)
        for e in sample:
            rows, cols = n * i[e] + np.arange(n), n * j[e] + np.arange(n)
            H[rows[:, None], (cols + no * sc_index(shift[e]))[None, :]] = values[e]
            if not (i[e] == j[e] and not shift[e].any()):
                H[cols[:, None], (rows + no * sc_index(-shift[e]))[None, :]] = values[e].transpose(1, 0, 2)
        return H

    def check(H) -> None:  # the sampled blocks hold HForge's entries, nothing else is stored
        for k in range(2):
            coo = H.tocsr(k).tocoo()
            assert coo.nnz == n_sample * n * n
            np.testing.assert_array_equal(coo.data, np.asarray(expected.to_scipy(k)[coo.row, coo.col]).ravel())

    check(run())
    ratio = interleaved(benchmark, run, hforge_numba(cell))
    if benchmark.stats is None:  # --benchmark-disable: the check alone
        return
    scale = n_directed / n_sample
    seconds = benchmark.stats.stats.min * scale
    benchmark.extra_info.update(n_atoms=cell.n_atoms, extrapolated_seconds=seconds, blocks_timed=n_sample)
    RESULTS[(cell.n_atoms, f"sisl H[r, c] = block (x{scale:.0f} of {n_sample})")] = dict(
        seconds=seconds, peak=None, ratio=None if ratio is None else replace(
            ratio, median=ratio.median * scale, low=ratio.low * scale, high=ratio.high * scale
        ),
    )


# --- GPU (skipped without cupy and a CUDA device): inputs already on the device, timings synchronised ---


def _cupy():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        pytest.skip(f"needs cupy and a CUDA GPU: {exc}")
    return cupy


def _synchronised(cupy, run):
    def timed():
        result = run()
        cupy.cuda.Device().synchronize()
        return result

    return timed


def hforge_cupy(cupy, cell: Cell):
    """HForge's CuPy assembly (plan and fill on the device, synchronised), inputs already on the GPU."""
    edge_index, cell_shift, block_ptr, orbitals = (
        cupy.asarray(a) for a in (cell.edge_index, cell.cell_shift, cell.block_ptr, cell.orbitals_per_atom)
    )
    blocks = cupy.asarray(cell.blocks)

    def run():
        plan = plan_csr_assembly(edge_index, cell_shift, block_ptr, orbitals, backend="cupy")
        return plan.fill(blocks)

    return _synchronised(cupy, run)


@pytest.mark.benchmark(group="csr_assembly")
def test_hforge_cupy(benchmark, out, expected):
    """The CuPy backend (kernels/assemble.cu): plan (row counts, row pointer) and fill on the GPU."""
    cupy, cell = _cupy(), out
    measure(benchmark, cell, "hforge cupy (GPU)", hforge_cupy(cupy, cell), same_csr(expected), rounds=_rounds(cell, 10, 5))


@pytest.mark.benchmark(group="csr_assembly")
def test_cupyx_coo_tocsr(benchmark, out, expected):
    """cupyx.scipy.sparse COO -> CSR of H and S on the GPU, the COO triplets given on the device."""
    cupy, cell = _cupy(), out
    import cupyx.scipy.sparse as cusparse

    rows, cols, data, shape = coo_triplets(cell)
    rows, cols, data = cupy.asarray(rows), cupy.asarray(cols), [cupy.asarray(d) for d in data]
    run = lambda: [cusparse.coo_matrix((d, (rows, cols)), shape=shape).tocsr() for d in data]  # noqa: E731
    measure(benchmark, cell, "cupyx coo_matrix.tocsr (GPU)", _synchronised(cupy, run), same_scipy(expected),
            rounds=3, hforge=hforge_cupy(cupy, cell))


@pytest.mark.benchmark(group="csr_assembly")
def test_cupy_copy_allocating(benchmark, out, expected):
    """Device-to-device copy of the output bytes into new arrays: the GPU's bandwidth ceiling."""
    cupy = _cupy()
    indices, data = cupy.asarray(expected.indices), cupy.asarray(expected.data)
    run = lambda: (indices.copy(), data.copy())  # noqa: E731
    measure(benchmark, out, "cupy copy (GPU, allocating)", _synchronised(cupy, run),
            same_arrays(expected.indices, expected.data), rounds=_rounds(out, 10, 5))
