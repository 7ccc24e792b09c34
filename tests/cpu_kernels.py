"""The instruction sets of the compiled CPU kernels (``cpp`` backend) that tests run on this machine."""

from __future__ import annotations

from hforge.ops._cpu import ISAS, load_library
from hforge.ops.backends import backend_status


def cpp_isas() -> list[str]:
    """Every instruction set built into libhforge_cpu that this CPU runs; none where the library is not
    built (tests/test_backends.py fails on that under CI)."""
    if not backend_status()["cpp"].available:
        return []
    lib = load_library().lib
    return [name for name, code in ISAS.items() if lib.hforge_cpu_isa(code) >= 0]
