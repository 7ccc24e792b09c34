"""Row-pointer kernel: every backend against numpy's cumsum and the vectors shared with ctest."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hforge.ops import row_pointer

CASES = Path(__file__).parent / "data" / "row_pointer_cases.txt"
CPU_BACKENDS = ["torch", "numba"]


def shared_cases():
    lines = [ln.split() for ln in CASES.read_text().splitlines() if ln and not ln.startswith("#")]
    for counts_line, ptr_line in zip(lines[::2], lines[1::2]):
        assert counts_line[0] == "counts" and ptr_line[0] == "row_ptr"
        yield np.array(counts_line[2:], dtype=np.int64), np.array(ptr_line[2:], dtype=np.int64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_shared_vectors(backend):
    cases = list(shared_cases())
    assert len(cases) >= 5
    for counts, expected in cases:
        np.testing.assert_array_equal(row_pointer(counts, backend=backend), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(counts=arrays(np.int64, st.integers(0, 5000), elements=st.integers(0, 10**6)))
def test_matches_cumsum(backend, counts):
    expected = np.concatenate([[0], np.cumsum(counts)])
    got = row_pointer(counts, backend=backend)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu
def test_cupy_matches_reference():
    import cupy

    rng = np.random.default_rng(0)
    for n in (0, 1, 255, 256, 257, 100_000):
        counts = rng.integers(0, 200, n)
        got = row_pointer(cupy.asarray(counts), backend="cupy").get()
        np.testing.assert_array_equal(got, row_pointer(counts, backend="torch"))
