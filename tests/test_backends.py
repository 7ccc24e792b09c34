import pytest

from hforge.errors import BackendUnavailableError
from hforge.ops.backends import backend_status, resolve_backend


def test_every_backend_reports_a_reason():
    status = backend_status()
    assert set(status) == {"torch", "numba", "triton", "cupy"}
    assert status["torch"].available
    for s in status.values():
        assert s.reason


def test_auto_prefers_numba_on_cpu():
    assert resolve_backend("auto", on_gpu=False, implemented=("cupy", "numba", "torch"), op="x") == "numba"
    assert resolve_backend("auto", on_gpu=False, implemented=("cupy", "torch"), op="x") == "torch"


def test_explicit_backend_errors_are_clear():
    with pytest.raises(BackendUnavailableError, match="no 'triton' backend"):
        resolve_backend("triton", on_gpu=False, implemented=("numba", "torch"), op="assemble")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        resolve_backend("cuda", on_gpu=False, implemented=("numba", "torch"), op="assemble")
    if not backend_status()["cupy"].available:
        with pytest.raises(BackendUnavailableError, match="unavailable"):
            resolve_backend("cupy", on_gpu=False, implemented=("cupy", "torch"), op="assemble")
