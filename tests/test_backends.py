import os

import pytest

from hforge.errors import BackendUnavailableError
from hforge.ops.backends import backend_status, resolve_backend


def test_every_backend_reports_a_reason():
    status = backend_status()
    assert set(status) == {"torch", "numba", "cpp", "triton", "cupy"}
    assert status["torch"].available
    for s in status.values():
        assert s.reason


def test_compiled_cpu_kernels_are_built_under_ci():
    """CI installs with a C++ compiler: libhforge_cpu must be there and load (auto picks it for the ops
    that have it); elsewhere its absence is reported with the reason."""
    status = backend_status()["cpp"]
    if os.environ.get("CI") == "true":
        assert status.available, status.reason
    if status.available:
        assert resolve_backend("auto", on_gpu=False, implemented=("cpp", "numba", "torch"), op="x") == "cpp"


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


def test_numba_kernels_keep_the_torch_thread_count_set_before():
    """numba's OpenMP pool, when it starts, sets the process's OpenMP threads (torch's too) to
    NUMBA_NUM_THREADS; HForge starts it on import and puts torch's count back (hforge/_numba.py)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch; torch.set_num_threads(1); torch.get_num_threads()  # (then numba's start changed it)\n"
        "from hforge.graph import neighbour_list\n"
        "neighbour_list(np.random.rand(20, 3) * 5, np.eye(3) * 5, np.ones(3, bool), 2.0)\n"
        "import numba; n = numba.get_num_threads()  # the pool is running (started here at the latest)\n"
        "print(torch.get_num_threads(), n, numba.threading_layer())\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    torch_threads, numba_threads, layer = done.stdout.split()
    assert (torch_threads, numba_threads) == ("1", "2"), layer
