"""Dataset layouts of one 32-atom aBN cell: bytes per atom against its TSHS.xz, and the time to load it.

    .venv/bin/python -m pytest benchmarks/bench_store.py --benchmark-only

The cell is ``abn-extra/runs/abn_32_10`` of the shared data (its SIESTA TSHS compressed with xz, as
shipped: 5.6 MB).  Layouts: the TSHS.xz read by ``read_hs`` (decompressed, then sisl); HSStores
with H and S (float64, all pairs: ``hforge data convert``'s default; float32, canonical half, gzip);
the compact store (H only, fixed point, S computed from the basis on loading: ``--compact``).
Every layout is first checked against ``read_hs`` of the TSHS.xz: float64 exactly, float32 to
its rounding plus SIESTA's 1e-8 asymmetry, compact H to half its quantum plus that asymmetry and S
to 1e-8.  ``extra_info`` holds ``bytes_per_atom`` (the store file with one structure, its basis
tables included) and ``ratio_vs_tshs_xz``.  ``HFORGE_BENCH_SIZE`` changes nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks._bench import timed
from hforge.datasets import open_store
from hforge.io import convert, read_hs
from hforge.io.inspect import hermiticity_error
from hforge.io.store import H_QUANTUM
from hforge.ops.two_centre import overlap_blocks

SHARED = Path(os.environ.get("HFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
RUN = SHARED / "abn-extra" / "runs" / "abn_32_10"
BASIS = SHARED / "abn-extra" / "basis"
ROUNDS = 10
LAYOUTS = {
    "float64-full": {},
    "float32-half-gzip": {"dtype": np.float32, "half": True, "compression": "gzip"},
    "compact": {"overlap": overlap_blocks},
}


@pytest.fixture(scope="module")
def source():
    path = RUN / "abn_32_10.TSHS.xz"
    if not path.is_file():
        pytest.skip(f"shared data not found: {path}")
    return path, read_hs(path, basis=BASIS)


def test_read_tshs_xz(benchmark, source):
    path, data = source
    benchmark.group = "store"
    benchmark.extra_info.update(bytes_per_atom=path.stat().st_size / data.n_atoms, ratio_vs_tshs_xz=1.0)
    timed(benchmark, lambda: read_hs(path, basis=BASIS), rounds=3)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_store_read(benchmark, source, tmp_path, layout):
    path, reference = source
    store_path = convert([RUN], tmp_path / f"{layout}.h5", basis=BASIS, progress=False, **LAYOUTS[layout]).store
    store = open_store(store_path)
    data = store.read(0)
    asymmetry = hermiticity_error(reference, "h")
    h_tol, s_tol = {"float64-full": (0.0, 0.0), "float32-half-gzip": (2e-6, 1e-7),
                    "compact": (H_QUANTUM / 2 + asymmetry, 1e-8)}[layout]
    np.testing.assert_array_equal(data.mask, reference.mask)
    assert np.abs(data.h - reference.h).max() <= h_tol and np.abs(data.s - reference.s).max() <= s_tol
    benchmark.group = "store"
    size = store_path.stat().st_size
    benchmark.extra_info.update(bytes_per_atom=size / data.n_atoms, ratio_vs_tshs_xz=path.stat().st_size / size)
    timed(benchmark, lambda: store.read(0), rounds=ROUNDS)
