"""Reading SIESTA files into HSData against sisl's plain read of the same file; store loading.

    .venv/bin/python -m pytest benchmarks/bench_io.py --benchmark-only --benchmark-group-by=param:case

Ratios to report: read_hs / sisl (same file), and store read / sisl read of the TSHS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sisl

from hforge.datasets import bundled_path
from hforge.io import HSStore, convert, read_hs

SHARED = Path(os.environ.get("HFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FILES = {
    "hBN": SHARED / "fixtures/siesta/hBN/aiida.HSX",
    "aBN-64": SHARED / "abn/runs/abn_64_0/abn_64_0.TSHS",
}


def _file(case: str) -> Path:
    path = FILES[case]
    if not path.is_file():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.mark.parametrize("case", list(FILES))
def test_sisl_read(benchmark, case):
    path = _file(case)
    benchmark.group = "io"
    benchmark(lambda: sisl.get_sile(str(path)).read_hamiltonian())


@pytest.mark.parametrize("case", list(FILES))
def test_read_hs(benchmark, case):
    path = _file(case)
    benchmark.group = "io"
    benchmark(read_hs, path)


@pytest.mark.parametrize("case", list(FILES))
def test_read_hs_without_validation(benchmark, case):
    path = _file(case)
    benchmark.group = "io"
    benchmark(read_hs, path, validate=False)


@pytest.fixture(scope="module")
def abn64_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "abn64.h5"
    convert([_file("aBN-64").parent], out, progress=False)
    return out


@pytest.mark.parametrize("case", ["aBN-64"])
def test_store_read_float64(benchmark, abn64_store, case):
    store = HSStore(abn64_store)
    benchmark.group = "io"
    data = benchmark(store.read, 0)
    assert data.n_atoms == 64


@pytest.mark.parametrize("case", ["aBN-24"])
def test_store_read_sample_gzip_float32_half(benchmark, case):
    """The bundled sample's 24-atom cell (gzip-compressed, so read through h5py, not memory-mapped)."""
    store = HSStore(bundled_path("abn-small"))
    benchmark.group = "io"
    data = benchmark(store.read, "abn_24_0")
    assert data.n_atoms == 24


@pytest.mark.parametrize("case", ["aBN-64"])
def test_bytes_copy_of_the_store_values(benchmark, abn64_store, case):
    """Bandwidth limit: copying the H and S bytes of the structure (numpy)."""
    data = HSStore(abn64_store).read(0)
    values = np.concatenate([data.h[:, data.mask].ravel(), data.s[data.mask]])
    benchmark.group = "io"
    benchmark(values.copy)
