"""numba for HForge's kernels, its thread pool started without changing torch's thread count.

numba's OpenMP threading layer (``omp``, chosen where libgomp is present) sets the OpenMP thread
count of the whole process to ``NUMBA_NUM_THREADS`` when it starts its threads (at the first
parallel kernel, or ``numba.get_num_threads()``).  torch's intra-op thread count *is* that OpenMP
setting, so a ``torch.set_num_threads(1)`` made before silently became ``NUMBA_NUM_THREADS`` at
HForge's first kernel (docs/measurements.md; when torch had read its thread count before numba
started, e.g. in an earlier test), and with it the threads of torch's
parallel CPU ops, some of which then sum in a varying order (``index_put`` with accumulation, the
backward of every gather).  Whether a run was reproducible depended on whether numba had started
before or after the caller set torch's threads (in a test suite: on the tests that ran before).

Every HForge module with numba kernels imports numba from here (``from hforge._numba import
numba``), which starts numba's pool once and sets torch's thread count back to what it was.
"""

from __future__ import annotations

import numba
import torch

__all__ = ["numba"]


def _start_threads() -> None:
    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the threading layer's pool (once per process)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


_start_threads()
