"""hforge.load / Predictor: whole-cell and chunked prediction, inputs, bad input, output files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import signal
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hforge
from hforge.basis.radial import KBProjector, RadialFunction, SpeciesRadials
from hforge.errors import (
    BackendUnavailableError,
    FileFormatError,
    GeometryError,
    HForgeError,
    InputError,
    OutputError,
    OverlapWarning,
    ResourceLimitError,
    UnknownSpeciesError,
)
from hforge.files import temp_path
from hforge.infer import Predictor, check_output_path, predict_hamiltonian, pretrained_names, write_hamiltonian
from hforge.infer.chunks import chunk_grid, csr_row_pointer, morton_codes
from hforge.infer.predictor import resolve_device
from hforge.infer.problem import populated_empty
from hforge.models import ModelConfig, build_model, save_model

# A tiny float64 model on the bundled DZP basis with its orbital radii scaled down (pair
# cut-offs ~3 Å, halo ~5 Å), so that a 256-atom cell holds several chunks with small halos.
RADIUS_SCALE = 0.4
TINY = ModelConfig(
    channels=4, num_interactions=1, r_max=2.0, max_ell=1, node_l_max=1, correlation=1, num_bessel=4,
    radial_mlp=(8,), pair_l_max=2, pair_num_basis=4, radial_hidden=(8,), block_hidden=(8,), s_channels=2,
    avg_num_neighbors=4.0, dtype="float64",
)


def small_radii(basis):
    """The basis with every radius (shells, KB projectors, V_NA; their radial tables stretched alike)
    times RADIUS_SCALE: small cells with many periodic images."""

    def scaled(table):
        return RadialFunction(table.delta * RADIUS_SCALE, table.values, table.cutoff * RADIUS_SCALE)

    def species(sp):
        shells = tuple(dataclasses.replace(s, cutoff=s.cutoff * RADIUS_SCALE) for s in sp.shells)
        kb = None if sp.kb_projectors is None else tuple((l, r * RADIUS_SCALE) for l, r in sp.kb_projectors)
        r = sp.radials
        radials = SpeciesRadials(
            tuple(scaled(t) for t in r.orbitals),
            tuple(KBProjector(p.l, p.energy, scaled(p.radial)) for p in r.projectors),
            None if r.neutral_atom is None else scaled(r.neutral_atom),
        )
        return dataclasses.replace(sp, shells=shells, kb_projectors=kb, radials=radials)

    return type(basis)(tuple(species(sp) for sp in basis))


@pytest.fixture(scope="module")
def bundled():
    from hforge.datasets import load

    return load("abn-small")


@pytest.fixture(scope="module")
def model(bundled):
    torch.manual_seed(0)
    return build_model(TINY, small_radii(bundled.basis)).eval()


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model)


def as_atoms(data, basis):
    from ase import Atoms

    return Atoms([basis.symbols[s] for s in data.species], positions=data.positions, cell=data.cell, pbc=True)


def tiled_64_atoms(bundled):
    """A 64-atom aBN cell: the bundled 16-atom SIESTA cell abn_16_0 repeated 2x2x1."""
    data = bundled[2]
    assert data.n_atoms == 16
    return as_atoms(data, bundled.basis).repeat((2, 2, 1))


@pytest.fixture(scope="module")
def cell64(bundled):
    return tiled_64_atoms(bundled)


@pytest.fixture(scope="module")
def cell256(cell64):
    """The 64-atom cell tiled 2x2x1, atoms shaken by 0.05 Å and shuffled (no spatial order)."""
    rng = np.random.default_rng(1)
    atoms = cell64.repeat((2, 2, 1))
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms[rng.permutation(len(atoms))]


@contextlib.contextmanager
def file_size_limit(n_bytes: int):
    """Writes beyond ``n_bytes`` fail with EFBIG, as on a full disk (SIGXFSZ ignored, as its default kills)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def assert_same(a, b, tol=1e-12):
    assert a.no == b.no and list(a.nsc) == list(b.nsc)
    np.testing.assert_allclose(a.geometry.xyz, b.geometry.xyz)
    for k in range(2):  # H, S
        x, y = a.tocsr(k), b.tocsr(k)
        assert (x != y).nnz == 0 or abs(x - y).max() <= tol * abs(y).max()
        assert x.nnz == y.nnz


def test_whole_cell_matches_the_model_pipeline(model, predictor, cell64):
    hamiltonian = predictor.predict(cell64, dtype=np.float64)
    assert_same(hamiltonian, predict_hamiltonian(model, cell64), tol=0)
    assert not hamiltonian.orthogonal and hamiltonian.no == 64 * 13
    report = predictor.last_report
    assert report.mode == "whole" and report.n_atoms == 64 and report.nnz == hamiltonian.tocsr(0).nnz
    assert report.csr_bytes >= report.nnz * 20


def test_chunked_equals_whole_cell(predictor, cell256):
    whole = predictor.predict(cell256, dtype=np.float64)
    chunked = predictor.predict(cell256, mode="chunked", parts=4, progress=True, dtype=np.float64)
    assert predictor.last_report.mode == "chunked" and predictor.last_report.grid == (2, 2, 1)
    assert_same(chunked, whole, tol=1e-12)


def test_streamed_equals_whole_cell(predictor, cell256):
    whole = predictor.predict(cell256, dtype=np.float64)
    streamed = predictor.predict(cell256, mode="streamed", parts=3, dtype=np.float64)
    assert predictor.last_report.mode == "streamed" and predictor.last_report.n_parts == 3
    assert_same(streamed, whole, tol=1e-12)


def test_pairs_in_small_batches_equal_the_whole_cell(predictor, cell256, monkeypatch):
    """Ranges split into batches of pairs (an atom's onsite and hopping pairs together), each pair
    evaluated once and written into its rows and its partner's: the same matrices."""
    import hforge.infer.passes as module

    whole = predictor.predict(cell256, mode="whole", dtype=np.float64)
    monkeypatch.setattr(module, "PAIR_BATCH", 37)
    calls = []
    original = predictor.model.pair_pass
    monkeypatch.setattr(predictor.model, "pair_pass", lambda *a, **k: calls.append(a[1].shape[1]) or original(*a, **k))
    batched = predictor.predict(cell256, mode="streamed", parts=2, dtype=np.float64)
    assert max(calls) <= 37 and sum(calls) == len(predictor.prepare(cell256).cell_shift) - 256  # every hopping pair once
    assert min(calls) < 37 < max(calls) + 256 // 2  # batches mix onsite pairs (from the node pass) with hopping ones
    assert_same(batched, whole, tol=1e-12)


def test_max_memory_chooses_the_mode_or_names_the_minimum(predictor, operator_predictor, cell256):
    """The whole cell when it fits; slabs ("streamed") where they need less (a separable operator's
    projections are packed per slab: fewer atoms touched); spatial chunks below that; below the
    smallest part, an error naming the minimum.  Without a separable operator slabs need what the
    whole cell does (its exact blocks go in batches either way): chunks come next."""
    from hforge.infer.passes import Physics
    from hforge.infer.plan import BATCH_BYTES, BYTES_PER_OPERATOR_GRAPH_ATOM

    problem = operator_predictor.prepare(cell256)
    whole = operator_predictor.plan(problem)
    assert whole.mode == "whole"
    # a model without free blocks: its node state per atom, beside the packed projections of every atom
    pack = Physics(operator_predictor.model, problem.arrays).pack_bytes_per_atom()
    assert whole.working_bytes == int(problem.n_atoms * (BYTES_PER_OPERATOR_GRAPH_ATOM + pack) + BATCH_BYTES)
    streamed = operator_predictor.plan(problem, max_memory=whole.total_bytes - 1)
    assert streamed.mode == "streamed" and streamed.parts >= 2 and streamed.total_bytes < whole.total_bytes
    smallest = operator_predictor.plan(problem, mode="streamed", parts=4096).total_bytes
    chunked = operator_predictor.plan(problem, max_memory=smallest - 1)
    assert chunked.mode == "chunked" and chunked.total_bytes < smallest
    problem = predictor.prepare(cell256)
    whole = predictor.plan(problem)
    assert predictor.plan(problem, mode="streamed", parts=64).total_bytes == whole.total_bytes
    assert predictor.plan(problem, max_memory=whole.total_bytes - 1).mode == "chunked"
    with pytest.raises(ResourceLimitError, match=r"at least \d+\.\d\d GB \(output CSR"):
        predictor.predict(cell256, max_memory=problem.csr_bytes(np.float64))


def test_device_is_cuda_when_usable_else_the_cpu(model):
    usable = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == usable
    assert resolve_device("cpu") == torch.device("cpu") and Predictor(model, device="cpu").device.type == "cpu"
    with pytest.raises(InputError, match="choose cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU"):
            hforge.load("abn-dzp", device="cuda")


def test_torch_threads_are_set_for_the_prediction_and_restored(predictor, cell64, monkeypatch):
    before = torch.get_num_threads()
    reference = predictor.predict(cell64, threads=before, dtype=np.float64)
    one = predictor.predict(cell64, threads=1, dtype=np.float64)
    assert predictor.last_report.torch_threads == 1 and torch.get_num_threads() == before
    assert_same(one, reference, tol=1e-12)
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0, 100.0, 100.0))  # the machine's load plays no part
    predictor.predict(cell64)
    assert predictor.last_report.torch_threads == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="threads="):
            predictor.predict(cell64, threads=bad)


# A child process predicting a structure with the default model (float32) and default threads: the
# SHA-256 of H's and S's values.  argv: checkpoint, structure, the load average it sees, and "threads"
# to print first the hashes of one and of two torch threads.
LOAD_CHILD = """
import hashlib, os, sys
checkpoint, structure, load, what = sys.argv[1:5]
os.getloadavg = lambda: (float(load),) * 3  # what a policy reading the machine's load would see
import hforge

predictor = hforge.load(checkpoint, device="cpu")

def digest(**options):
    H = predictor.predict(structure, **options)
    return hashlib.sha256(H.tocsr(0).data.tobytes() + H.tocsr(1).data.tobytes()).hexdigest()

print(" ".join(([digest(threads=1), digest(threads=2)] if what == "threads" else []) + [digest()]))
"""


def test_predicted_bits_do_not_depend_on_the_machine_load(bundled, tmp_path):
    """The same input gives the same bits on a quiet machine and on one whose cores all spin (busy
    loops, and a load average of 1000 where the quiet run sees 0), with the default threads.  The
    cell is one whose bits do depend on torch's thread count (checked first), so that a thread policy
    following the load would fail here."""
    import subprocess
    import sys

    torch.manual_seed(0)
    checkpoint = save_model(build_model(ModelConfig(), bundled.basis), tmp_path / "model.pt")
    atoms = as_atoms(bundled[3], bundled.basis).repeat((2, 2, 1))  # the 24-atom cell, 96 atoms, shaken
    atoms.positions += np.random.default_rng(0).normal(scale=0.02, size=atoms.positions.shape)
    structure = tmp_path / "cell.extxyz"
    atoms.write(structure)

    def child(load: float, what: str = "default") -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", LOAD_CHILD, str(checkpoint), str(structure), str(load), what],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    one, two, quiet = child(0.0, "threads")
    assert one != two, "premise: this cell's predicted bits depend on torch's thread count"
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        busy = child(1000.0)
    finally:
        for process in spinning:
            process.kill()
            process.wait()
    assert busy == [quiet] == [two]


def test_populated_buffers_are_plain_writable_arrays():
    small, large = populated_empty(10, np.int32), populated_empty((1 << 22, 2), np.float64)  # 64 MiB: mapped
    assert small.shape == (10,) and large.shape == (1 << 22, 2) and large.dtype == np.float64
    assert large.flags.c_contiguous and large.flags.writeable and not large.any()  # mapped pages are zeroed
    large[-1] = 3.0
    assert large.sum() == 6.0


def test_row_pointer_counts_both_directions_of_the_canonical_pairs():
    edge_index = np.array([[0, 1, 0, 0], [0, 1, 1, 0]])
    shift = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    n_orb = np.array([2, 3])
    # atom 0 rows: onsite (2) + (0,1) (3) + (0,0,+x) and its partner (0,0,-x) (2 + 2) = 9 columns
    # atom 1 rows: onsite (3) + partner of (0,1) (2) = 5 columns
    np.testing.assert_array_equal(np.diff(csr_row_pointer(edge_index, shift, n_orb)), [9, 9, 5, 5, 5])


def test_chunk_grid_is_at_least_the_count_asked():
    cell = np.diag([10.0, 20.0, 40.0])
    for n in (1, 2, 3, 5, 8, 30):
        grid = chunk_grid(cell, n)
        assert np.prod(grid) >= n
    assert chunk_grid(cell, 2) == (1, 1, 2)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(*[st.floats(0.0, 1.0, exclude_max=True)] * 3), min_size=1, max_size=20), st.integers(1, 20))
def test_morton_codes_interleave_the_cells_bits(points, bits):
    """Each code is the three grid cells' bits interleaved (bit b of axis a at 3 b + a), one bit at a time."""
    frac = np.array(points)
    cells = np.minimum((frac * 2**bits).astype(np.int64), 2**bits - 1)
    expected = [sum(((int(c[a]) >> b) & 1) << (3 * b + a) for b in range(bits) for a in range(3)) for c in cells]
    np.testing.assert_array_equal(morton_codes(frac, bits), expected)


def test_ranges_take_every_pair_once_with_each_owner_consecutive(predictor, cell256):
    """The ranges of pairs partition the canonical pairs; a range's owners lie in its slab, each owner's
    pairs consecutive, owners in Morton order."""
    problem = predictor.prepare(cell256)
    owner = np.where(problem.flipped, problem.edge_index[1], problem.edge_index[0])
    ranges = problem.ranges(3)
    np.testing.assert_array_equal(np.sort(np.concatenate(ranges)), np.arange(problem.edge_index.shape[1]))
    codes = morton_codes(problem.frac)
    for r, pairs in enumerate(ranges):
        assert np.all(np.floor(problem.frac[owner[pairs], problem.sweep_axis] * 3) == r)
        runs = owner[pairs][np.r_[True, owner[pairs][1:] != owner[pairs][:-1]]]
        assert len(np.unique(runs)) == len(runs)  # one run per owner
        assert np.all(np.diff(codes[runs]) >= 0)


def test_structure_kinds_agree(predictor, cell64, tmp_path):
    import ase.io
    import sisl

    reference = predictor.predict(cell64)
    path = tmp_path / "cell.traj"  # full precision
    ase.io.write(path, cell64)
    assert_same(predictor.predict(path), reference, tol=1e-12)
    geometry = sisl.Geometry(
        cell64.positions, atoms=[sisl.Atom(s, tag=s) for s in cell64.get_chemical_symbols()], lattice=cell64.cell.array
    )
    assert_same(predictor.predict(geometry), reference, tol=0)


def _bad(cell64, kind):
    atoms = cell64.copy()
    if kind == "species":
        atoms[3].symbol = "C"
    elif kind == "overlap":
        atoms.positions[5] = atoms.positions[4] + [0.3, 0.0, 0.0]
    elif kind == "nan":
        atoms.positions[2, 1] = np.nan
    elif kind == "inf":
        atoms.positions[2, 1] = np.inf
    elif kind == "empty":
        atoms = atoms[:0]
    elif kind == "degenerate":
        atoms.cell[2] = atoms.cell[0]
    elif kind == "zero cell":
        atoms.cell[1] = 0.0
    return atoms


@pytest.mark.parametrize(
    "kind, error, words",
    [
        ("species", UnknownSpeciesError, "C"),
        ("overlap", GeometryError, "overlapping atoms"),
        ("nan", GeometryError, "NaN or infinite"),
        ("inf", GeometryError, "NaN or infinite"),
        ("empty", GeometryError, "no atoms"),
        ("degenerate", GeometryError, "degenerate cell"),
        ("zero cell", GeometryError, "empty cell"),
    ],
)
def test_bad_structures_are_refused(predictor, cell64, kind, error, words):
    with pytest.raises(error, match=words):
        predictor.predict(_bad(cell64, kind))


def test_unreadable_structure_files(predictor, tmp_path):
    with pytest.raises(FileFormatError, match="no such structure file"):
        predictor.predict(tmp_path / "missing.xyz")
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not\nan xyz file\n")
    with pytest.raises(FileFormatError, match="junk.xyz"):
        predictor.predict(junk)


def test_multi_frame_files_need_a_frame(predictor, cell64, tmp_path):
    """A file of several structures is never reduced to its last one in silence."""
    import ase.io

    from hforge.infer import read_frames, read_structure

    shaken = cell64.copy()
    shaken.positions += 0.05
    path = tmp_path / "two.traj"
    ase.io.write(path, [cell64, shaken])
    frames = read_frames(path)
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1].positions, shaken.positions)
    for call in (lambda: read_structure(path), lambda: predictor.predict(path)):
        with pytest.raises(InputError, match="two.traj: holds 2 structures") as caught:
            call()
        assert "index=k" in str(caught.value) and "read_frames" in str(caught.value)
    np.testing.assert_array_equal(read_structure(path, index=1).positions, shaken.positions)
    np.testing.assert_array_equal(read_structure(path, index=-2).positions, cell64.positions)
    with pytest.raises(InputError, match="frame 2 asked for, the file holds 2"):
        read_structure(path, index=2)
    single = tmp_path / "one.traj"
    ase.io.write(single, cell64)
    np.testing.assert_array_equal(read_structure(single).positions, cell64.positions)


def test_load_checkpoint_and_names(model, predictor, cell64, tmp_path):
    path = save_model(model, tmp_path / "tiny.pt")
    loaded = hforge.load(path)
    assert isinstance(loaded, Predictor)
    assert_same(loaded.predict(cell64), predictor.predict(cell64), tol=0)  # float32 output, both
    with pytest.raises(FileFormatError, match="no bundled model"):
        hforge.load("no-such-model")


def test_bundled_abn_dzp_predicts_a_real_cell(abn_dir):
    """The bundled model on the shared 64-atom validation cell: SIESTA's S (a two-centre integral,
    learned closely) on the file's nonzeros, and finite H of the same pattern."""
    import sisl

    from hforge.io import read_hs

    run = abn_dir / "runs" / "abn_64_0" / "abn_64_0.TSHS"
    reference = sisl.get_sile(run).read_hamiltonian()
    assert "abn-dzp" in pretrained_names()
    with warnings.catch_warnings():  # the shipped model computes S exactly: nothing to warn about
        warnings.simplefilter("error", OverlapWarning)
        predicted = hforge.load("abn-dzp").predict(read_hs(run))
    assert predicted.no == reference.no
    s_ref = reference.tocsr(reference.S_idx).tocoo()
    keep = s_ref.data != 0
    rows, cols, values = s_ref.row[keep], s_ref.col[keep], s_ref.data[keep]
    width, ours_lattice = reference.no, predicted.geometry.lattice
    our_isc = np.array([  # the same cell shift in the prediction's supercell numbering (-1: beyond it)
        ours_lattice.sc_index(offset) if (np.abs(offset) <= ours_lattice.nsc // 2).all() else -1
        for offset in reference.geometry.lattice.sc_off
    ])
    isc = our_isc[cols // width]
    assert (isc >= 0).all()  # S blocks reach r_i + r_j: within the prediction's supercells
    ours = np.asarray(predicted.tocsr(1)[rows, isc * width + cols % width]).ravel()
    assert np.abs(ours - values).mean() < 0.02
    assert np.isfinite(predicted.tocsr(0).data).all()


def test_a_learned_overlap_that_is_not_positive_definite_is_reported(abn_dir, bundled, monkeypatch):
    import hforge.infer.overlap as overlap_module
    from hforge.io import read_hs

    data = read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")
    torch.manual_seed(0)  # a learned S (random weights): indefinite on the dense cell, as trained ones were
    learned = Predictor(build_model(ModelConfig(overlap="learned"), bundled.basis, bundled.statistics).eval())
    assert learned.model.learns_overlap
    with pytest.warns(OverlapWarning, match=r"not positive definite: S\(Γ\) has the eigenvalue -.*overlap='exact'") as caught:
        hamiltonian = learned.predict(data)
    s = hamiltonian.Sk(format="array")
    low = np.linalg.eigvalsh(0.5 * (s + s.T))[0]  # all eigenvalues (the check factorizes, then asks LAPACK for one)
    assert low < 0 and f"{low:.3e}" in str(caught[0].message)
    with pytest.warns(OverlapWarning, match=f"eigenvalue {low:.3e}"):  # predict_many checks too
        learned.predict_many([data])
    with pytest.warns(OverlapWarning, match=r"S was not checked \(104 orbitals"):
        monkeypatch.setattr(overlap_module, "OVERLAP_CHECK_MAX_ORBITALS", 100)
        learned.predict(data)

    torch.manual_seed(0)
    exact = Predictor(build_model(TINY, bundled.basis).eval())  # exact S (the default): never warned
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverlapWarning)
        s = exact.predict(data, dtype=np.float64).Sk(format="array")
    np.testing.assert_allclose(s, data.matrix_at_k(which="s"), atol=1e-7)  # SIESTA's S: positive definite
    assert np.linalg.eigvalsh(s)[0] > 0


@pytest.mark.parametrize("suffix", [".TSHS", ".nc"])
def test_written_files_read_back(predictor, cell64, tmp_path, suffix):
    import sisl

    hamiltonian = predictor.predict(cell64)
    path = write_hamiltonian(hamiltonian, tmp_path / f"out{suffix}")
    back = sisl.get_sile(path).read_hamiltonian()
    assert sorted(os.listdir(tmp_path)) == [f"out{suffix}"]
    assert list(back.nsc) == list(hamiltonian.nsc) and back.no == hamiltonian.no
    for k in (0, 1):
        np.testing.assert_allclose(back.tocsr(k).toarray(), hamiltonian.tocsr(k).toarray(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suffix", [".TSHS", ".nc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_files_are_what_sisl_writes(operator_predictor, cell256, tmp_path, suffix, dtype):
    """predict_to_file streams the output buffers (a range of rows at a time, onsite blocks transposed,
    SIESTA's supercell order) into the file sisl's own writer makes of the same prediction: a TSHS
    byte for byte, a NetCDF file read back to the same matrices, geometry and supercells."""
    import sisl

    from hforge.io import csr_files

    csr_files.CHUNK_VALUES, chunk = 5000, csr_files.CHUNK_VALUES  # many steps on a small cell
    try:
        streamed = operator_predictor.predict_to_file(cell256, tmp_path / f"streamed{suffix}", dtype=dtype, threads=1)
    finally:
        csr_files.CHUNK_VALUES = chunk
    assert operator_predictor.last_report.seconds["write"] > 0
    reference = write_hamiltonian(operator_predictor.predict(cell256, dtype=dtype, threads=1), tmp_path / f"sisl{suffix}")
    if suffix == ".TSHS":
        assert streamed.read_bytes() == reference.read_bytes()
    with sisl.get_sile(streamed) as a, sisl.get_sile(reference) as b:
        got, expected = a.read_hamiltonian(), b.read_hamiltonian()
    assert list(got.nsc) == list(expected.nsc) and np.array_equal(got.geometry.xyz, expected.geometry.xyz)
    for k in (0, 1):
        assert (got.tocsr(k) != expected.tocsr(k)).nnz == 0 and got.tocsr(k).nnz == expected.tocsr(k).nnz


def test_files_in_a_row_reuse_the_output_buffers_and_are_the_same_files(
    operator_predictor, cell64, cell256, tmp_path, monkeypatch
):
    """predict_to_file keeps its output buffers after the write and fills them again for the next
    structure that fits (no new mapping of the output's pages), dropping them for one that does not
    and before any call that hands its matrices out; every file equals a fresh predictor's."""
    from hforge.infer import predictor as predictor_module
    from hforge.infer import problem as problem_module

    expected = {name: operator_predictor.predict_to_file(atoms, tmp_path / f"ref_{name}.TSHS", threads=1).read_bytes()
                for name, atoms in (("64", cell64), ("256", cell256))}
    fresh = []
    real = problem_module.populated_empty

    def counting(shape, dtype):
        fresh.append(shape)
        return real(shape, dtype)

    monkeypatch.setattr(problem_module, "populated_empty", counting)
    reused = predictor_module.Predictor(operator_predictor.model, source="test")
    for k, (name, atoms, allocations) in enumerate([("256", cell256, 2), ("256", cell256, 0), ("64", cell64, 0),
                                                    ("256", cell256, 2)]):
        fresh.clear()
        path = reused.predict_to_file(atoms, tmp_path / f"run{k}.TSHS", threads=1)
        assert len([shape for shape in fresh if np.prod(shape) >= reused.last_report.nnz]) == allocations, (k, fresh)
        assert path.read_bytes() == expected[name], k
    assert reused.spare_output.arrays is not None
    reused.predict(cell64, threads=1)  # hands its matrices out: the spare buffers are let go first
    assert reused.spare_output.arrays is None


def test_output_is_float32_by_default_the_float64_output_rounded(predictor, cell64):
    """The default output dtype is float32: the float64 output's values, rounded once."""
    default, full = predictor.predict(cell64), predictor.predict(cell64, dtype=np.float64)
    assert predictor.last_report.csr_bytes > predictor.prepare(cell64).csr_bytes(np.float32)
    for k in (0, 1):
        x, y = default.tocsr(k), full.tocsr(k)
        assert x.dtype == np.float32 and np.array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.data, y.data.astype(np.float32))


def test_output_paths_checked_and_failed_writes_leave_nothing(predictor, cell64, tmp_path, monkeypatch):
    with pytest.raises(FileFormatError, match="TSHS or .nc"):
        check_output_path(tmp_path / "out.xyz")
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "nowhere" / "out.TSHS")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path / "dir.TSHS" if (tmp_path / "dir.TSHS").mkdir() is None else None)
    import sisl
    import sisl.io.siesta.binaries as binaries

    hamiltonian = predictor.predict(cell64)
    for suffix in (".TSHS", ".nc"):  # a real failed write: the file size limit (EFBIG) as a full disk would
        with file_size_limit(100_000), pytest.raises(OutputError, match=f"out{suffix}: .*(File too large|truncated|HDF)"):
            write_hamiltonian(hamiltonian, tmp_path / f"out{suffix}")
    assert sorted(os.listdir(tmp_path)) == ["dir.TSHS"]
    monkeypatch.chdir(tmp_path)  # sisl's Fortran writer, failing to open a file, writes fort.1000 here
    with pytest.raises(HForgeError, match="^/proc/out.TSHS: "):  # check_output_path or the write itself
        write_hamiltonian(hamiltonian, "/proc/out.TSHS")
    assert sorted(os.listdir(tmp_path)) == ["dir.TSHS"]

    def broken(self, *args, **kwargs):
        with open(self.file, "wb") as handle:
            handle.write(b"partial")
        raise sisl.io.SileError(f"{self}.write_hamiltonian could not write Hamiltonian and overlap matrix. (ierr=28)")

    monkeypatch.setattr(binaries.tshsSileSiesta, "write_hamiltonian", broken)
    with pytest.raises(OutputError, match="out.TSHS: cannot write it: No space left on device") as caught:
        write_hamiltonian(hamiltonian, tmp_path / "out.TSHS")
    assert isinstance(caught.value.__cause__, OSError)
    assert sorted(os.listdir(tmp_path)) == ["dir.TSHS"]


def test_stale_temporary_files_of_dead_processes_are_removed(predictor, cell64, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out.TSHS"
    # a dead process's file goes; a running one's stays (pytest's parent: this process's own name is the write's)
    stale, running = temp_path(out, int(dead.stdout)), temp_path(out, os.getppid())
    other = tmp_path / f".other.{int(dead.stdout)}.tmp.TSHS"
    for path in (stale, running, other):
        path.write_bytes(b"partial")
    write_hamiltonian(predictor.predict(cell64), out)
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, running.name, other.name])


def test_predict_many_equals_predict(predictor, cell64, bundled):
    structures = [as_atoms(bundled[k], bundled.basis) for k in (0, 2, 3)] + [cell64]
    many = predictor.predict_many(structures, batch_atoms=40, dtype=np.float64)
    assert len(many) == 4
    for one, structure in zip(many, structures):
        assert_same(one, predictor.predict(structure, dtype=np.float64), tol=1e-12)


@pytest.fixture(scope="module")
def operator_predictor(bundled):
    """The operator model (T + V_KB + c0 S + a separable operator, no free blocks) on the small-radius
    basis, float64, with random D weights (a new model's D_env head starts at zero)."""
    config = dataclasses.replace(
        TINY, baseline="operator", separable=True, free_blocks=False, projector_radius=0.6, projector_l_max=1,
        projector_radial=2,
    )
    torch.manual_seed(3)
    model = build_model(config, small_radii(bundled.basis)).eval()
    with torch.no_grad():
        model.baseline_coef[3] = -0.2  # c0 S
        for parameter in model.separable.parameters():
            parameter.normal_(0.0, 0.3)
    return Predictor(model)


@pytest.mark.parametrize("mode, parts", [("whole", None), ("streamed", 3), ("chunked", 4)])
def test_operator_model_predictions_equal_the_model_pipeline(operator_predictor, cell256, mode, parts):
    """Every mode of the operator model (V_KB in the separable contraction, packed projections, slabs
    of pairs built from their rear atom) gives the model's own forward pass (torch separable blocks,
    V_KB by the baseline's path: predict_many) to float64 rounding; the report times the separable
    operator's contraction, its projections and its D_k head apart from the trunk."""
    from hforge.infer.passes import Physics

    reference = operator_predictor.predict_many([cell256], dtype=np.float64)[0]
    got = operator_predictor.predict(cell256, mode=mode, parts=parts, dtype=np.float64)
    assert_same(got, reference, tol=1e-10)
    assert (got.tocsr(0) != 0).nnz > 0
    report = operator_predictor.last_report
    assert report.seconds["separable"] > 0 and report.seconds["heads"] > 0 and report.seconds["projections"] > 0
    physics = Physics(operator_predictor.model, operator_predictor.arrays(cell256))
    assert physics.kb_scale == 1.0 and physics.separable is not None


@pytest.fixture(scope="module")
def model32(bundled):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(TINY, dtype="float32"), small_radii(bundled.basis)).eval()


@pytest.mark.gpu
@pytest.mark.parametrize("mode, parts", [("whole", None), ("streamed", 3), ("chunked", 4)])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_cuda_predictions_equal_cpu_ones(model, model32, cell256, mode, parts, precision):
    """Model on the GPU (Triton CG kernels), CuPy assembly: the CPU's matrices to the model's
    float rounding (float32: 1e-5 of the largest entry; exact S is computed on the CPU in both)."""
    import copy

    import cupy

    chosen = model32 if precision == "float32" else model
    cpu = Predictor(copy.deepcopy(chosen), device="cpu").predict(cell256, mode=mode, parts=parts)
    gpu = Predictor(copy.deepcopy(chosen), device="cuda")
    got = gpu.predict(cell256, mode=mode, parts=parts)
    assert gpu.last_report.device.startswith("cuda") and gpu.last_report.mode == mode
    assert_same(got, cpu, tol=1e-5 if precision == "float32" else 1e-10)
    csr = gpu.predict_csr(cell256, mode=mode, parts=parts)
    on_device = mode != "chunked"  # chunks are gathered on the host
    assert isinstance(csr.data, cupy.ndarray) == on_device
    h = csr.to_cupy(0)
    np.testing.assert_allclose(h.get().toarray(), cpu.tocsr(0).toarray(), atol=1e-5 * abs(cpu.tocsr(0)).max())


def test_clusters_chains_and_slabs_get_one_cell_rule(predictor, tmp_path):
    """New-user probe: a chain (one periodic vector) kept its two zero-length lattice vectors in its TSHS (sisl
    warned, the re-read file had a NaN reciprocal cell and volume 0), while a cluster (no vector) got a box.  Now
    every missing non-periodic vector is orthogonal to the others and as long as the atoms' extent plus 10 Å."""
    import warnings

    import sisl
    from ase import Atoms

    cases = {
        "cluster": (Atoms("BN", [[0, 0, 0], [1.45, 0.2, 0.3]]), np.diag([11.45, 10.2, 10.3])),
        "chain": (Atoms("BN", [[0, 0, 0], [1.45, 0, 0]], cell=[2.9, 0, 0], pbc=[1, 0, 0]), np.diag([2.9, 10.0, 10.0])),
        "slab": (Atoms("BN", [[0, 0, 0], [1.25, 0.72, 0.5]], cell=[[2.5, 0, 0], [1.25, 2.165, 0], [0, 0, 0]], pbc=[1, 1, 0]),
                 [[2.5, 0, 0], [1.25, 2.165, 0], [0, 0, 10.5]]),
    }
    for name, (atoms, expected) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # sisl warned about the zero-length vectors
            path = write_hamiltonian(predictor.predict(atoms), tmp_path / f"{name}.TSHS")
            lattice = sisl.get_sile(str(path)).read_geometry().lattice
        np.testing.assert_allclose(lattice.cell, expected, rtol=0, atol=1e-9, err_msg=name)
        assert np.isfinite(lattice.rcell).all() and lattice.volume == pytest.approx(abs(np.linalg.det(expected)))
    tilted = Atoms("BN", [[0, 0, 0], [1.0, 1.0, 0.4]], cell=[[2.0, 2.0, 0], [0, 0, 0], [0, 0, 0]], pbc=[1, 0, 0])
    cell = np.asarray(predictor.predict(tilted).geometry.cell)
    np.testing.assert_allclose(cell[0], [2.0, 2.0, 0.0])
    assert abs(cell[0] @ cell[1]) < 1e-12 and abs(cell[0] @ cell[2]) < 1e-12 and abs(cell[1] @ cell[2]) < 1e-12
    for axis in (1, 2):  # extent along the new direction plus 10 Å
        direction = cell[axis] / np.linalg.norm(cell[axis])
        assert np.linalg.norm(cell[axis]) == pytest.approx(np.ptp(tilted.positions @ direction) + 10.0)
    assert np.linalg.det(cell) > 0
