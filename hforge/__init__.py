"""HForge: predict SIESTA Hamiltonian (H) and overlap (S) matrices from atomic structure.

Units throughout: energies in eV, lengths in Å; S is dimensionless.
"""

from __future__ import annotations

from hforge._lazy import lazy_getattr
from hforge.errors import (
    BackendUnavailableError,
    BasisMismatchError,
    ConfigError,
    ConvergenceError,
    FileFormatError,
    FoldedMatrixError,
    GeometryError,
    HForgeError,
    InputError,
    InvalidMatrixError,
    OutputError,
    OverlapMismatchError,
    ResourceLimitError,
    UnknownSpeciesError,
    UnsupportedSystemError,
)

__version__ = "0.1.0"

# Public names resolved on first use, so that ``import hforge`` stays cheap.
_LAZY: dict[str, str] = {
    "BasisSet": "hforge.basis",
    "HSData": "hforge.io",
    "read_hs": "hforge.io",
    "write_hs": "hforge.io",
    "assemble_csr": "hforge.ops.assemble",
    "plan_csr_assembly": "hforge.ops.assemble",
    "amorphous_bn": "hforge.structures",
    "structure_statistics": "hforge.structures",
    "validate_structure": "hforge.structures",
    "neighbour_list": "hforge.graph",
    "orbital_pair_list": "hforge.graph",
    "PairList": "hforge.graph",
    "cg_descriptor": "hforge.ops.cg_blocks",
    "edge_blocks": "hforge.ops.cg_blocks",
    "irreps_to_blocks": "hforge.ops.cg_blocks",
    "onsite_blocks": "hforge.ops.cg_blocks",
    "TrainConfig": "hforge.train",
    "Trainer": "hforge.train",
    "evaluate_structures": "hforge.train",
    "load": "hforge.infer",
    "Predictor": "hforge.infer",
    "predict_hamiltonian": "hforge.infer",
}

__all__ = [
    "__version__",
    "HForgeError",
    "InputError",
    "FileFormatError",
    "BasisMismatchError",
    "OverlapMismatchError",
    "UnknownSpeciesError",
    "GeometryError",
    "InvalidMatrixError",
    "ConfigError",
    "UnsupportedSystemError",
    "FoldedMatrixError",
    "ConvergenceError",
    "OutputError",
    "ResourceLimitError",
    "BackendUnavailableError",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)
