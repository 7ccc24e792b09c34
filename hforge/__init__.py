"""HForge: predict SIESTA Hamiltonian (H) and overlap (S) matrices from atomic structure.

Units throughout: energies in eV, lengths in Å; S is dimensionless.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from hforge import _compat  # noqa: F401  (must run before e3nn is imported anywhere)
from hforge.errors import (
    BackendUnavailableError,
    BasisMismatchError,
    ConfigError,
    ConvergenceError,
    FileFormatError,
    GeometryError,
    HForgeError,
    InputError,
    ResourceLimitError,
    UnknownSpeciesError,
    UnsupportedSystemError,
)

__version__ = "0.1.0"

# Public names resolved on first use, so that ``import hforge`` stays cheap.
_LAZY: dict[str, str] = {
    "cg_descriptor": "hforge.ops.cg_blocks",
    "edge_blocks": "hforge.ops.cg_blocks",
    "irreps_to_blocks": "hforge.ops.cg_blocks",
    "onsite_blocks": "hforge.ops.cg_blocks",
}

__all__ = [
    "__version__",
    "HForgeError",
    "InputError",
    "FileFormatError",
    "BasisMismatchError",
    "UnknownSpeciesError",
    "GeometryError",
    "ConfigError",
    "UnsupportedSystemError",
    "ConvergenceError",
    "ResourceLimitError",
    "BackendUnavailableError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hforge' has no attribute {name!r}")
