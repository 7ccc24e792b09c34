"""Reading SIESTA files into HSData against sisl's plain read of the same file; store loading.

    .venv/bin/python -m pytest benchmarks/bench_io.py --benchmark-only --benchmark-group-by=param:case

Every reader's result is first checked against the reference: ``read_hs`` against sisl's
Hamiltonian of the same file (H and S to 1e-9), the store against ``read_hs`` of the file it was
converted from (exactly; the bundled float32 half sample to float32 rounding, where the shared
data holds its run), a copy against its source. Then at least 3 rounds after a warm-up; the
``read_hs`` benchmarks run interleaved with sisl's read of the same file
(``extra_info["ratio_median"]``, ``ratio_min``, ``ratio_max``: read_hs / sisl).  Small files
only: ``HFORGE_BENCH_SIZE`` changes nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sisl

from benchmarks._bench import interleaved, timed
from hforge.datasets import bundled_path
from hforge.io import HSStore, convert, read_hs

SHARED = Path(os.environ.get("HFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FILES = {
    "hBN": SHARED / "fixtures/siesta/hBN/aiida.HSX",
    "aBN-64": SHARED / "abn/runs/abn_64_0/abn_64_0.TSHS",
}
BUNDLED_CELL = SHARED / "abn/runs/abn_24_0/abn_24_0.TSHS"
ROUNDS = 10


def _file(case: str) -> Path:
    path = FILES[case]
    if not path.is_file():
        pytest.skip(f"shared data not found: {path}")
    return path


def _sisl_read(path: Path):
    return lambda: sisl.get_sile(str(path)).read_hamiltonian()


def assert_same_matrices(got, expected, *, h_tol: float, s_tol: float) -> None:
    """Two ``sisl.Hamiltonian``: the same H (every spin component) and S, within the tolerances."""
    assert got.shape == expected.shape and list(got.geometry.nsc) == list(expected.geometry.nsc)
    for k in range(expected.shape[2]):
        tol = s_tol if k == expected.S_idx else h_tol
        difference = got.tocsr(k) - expected.tocsr(k)
        assert difference.nnz == 0 or abs(difference).max() <= tol, f"component {k}: {abs(difference).max():.2e}"


@pytest.mark.parametrize("case", list(FILES))
def test_sisl_read(benchmark, case):
    path = _file(case)
    benchmark.group = "io"
    assert _sisl_read(path)().nnz > 0
    timed(benchmark, _sisl_read(path), rounds=ROUNDS)


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
@pytest.mark.parametrize("case", list(FILES))
def test_read_hs(benchmark, case, validate):
    path = _file(case)
    benchmark.group = "io"
    assert_same_matrices(read_hs(path, validate=validate).to_sisl(), _sisl_read(path)(), h_tol=1e-9, s_tol=1e-12)
    interleaved(benchmark, lambda: read_hs(path, validate=validate), _sisl_read(path), rounds=ROUNDS)


@pytest.fixture(scope="module")
def abn64_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "abn64.h5"
    convert([_file("aBN-64").parent], out, progress=False)
    return out


@pytest.mark.parametrize("case", ["aBN-64"])
def test_store_read_float64(benchmark, abn64_store, case):
    store = HSStore(abn64_store)
    benchmark.group = "io"
    assert_same_matrices(store.read(0).to_sisl(), read_hs(_file(case)).to_sisl(), h_tol=0, s_tol=0)
    timed(benchmark, lambda: store.read(0), rounds=ROUNDS)


@pytest.mark.parametrize("case", ["aBN-24"])
def test_store_read_sample_gzip_float32_half(benchmark, case):
    """The bundled sample's 24-atom cell (gzip-compressed, so read through h5py, not memory-mapped)."""
    store = HSStore(bundled_path("abn-small"))
    benchmark.group = "io"
    data = store.read("abn_24_0")
    assert data.n_atoms == 24
    if BUNDLED_CELL.is_file():  # float32 of the symmetrised run (SIESTA's H is symmetric to ~1e-8 eV)
        assert_same_matrices(data.expand_half().to_sisl(), read_hs(BUNDLED_CELL).to_sisl(), h_tol=2e-5, s_tol=1e-6)
    timed(benchmark, lambda: store.read("abn_24_0"), rounds=ROUNDS)


@pytest.mark.parametrize("case", ["aBN-64"])
def test_bytes_copy_of_the_store_values(benchmark, abn64_store, case):
    """Bandwidth limit: copying the H and S bytes of the structure (numpy)."""
    store = HSStore(abn64_store)
    data, entry = store.read(0), store.manifest[0]
    values = np.concatenate([data.h[:, data.mask].ravel(), data.s[data.mask]])
    benchmark.group = "io"
    assert values.size == (entry["n_spin"] + 1) * entry["nnz"]  # every stored H and S value, by the manifest's count
    copied = values.copy()
    assert not np.shares_memory(copied, values) and np.array_equal(copied, values)  # a copy, not a view
    timed(benchmark, values.copy, rounds=ROUNDS)
