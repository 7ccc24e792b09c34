"""H and S predictors on MACE descriptors: an equivariant model and its non-equivariant baseline.

Both share the trunk (MACE's blocks), the S embedding, the output scaling, the graphs
(:class:`~hforge.graph.GraphBuilder`) and the output layout; only the heads differ.

- :class:`ModelConfig`, :func:`build_model`: configure and build either kind.
- ``model(batch) -> HSBlocks``: flat-packed unshifted H (eV) and S blocks on ``batch.block_ptr``.
- :func:`predict_hamiltonian`: structure -> ``sisl.Hamiltonian`` (whole cell, CSR assembly).
- :func:`save_model` / :func:`load_model`: self-describing checkpoints (config, basis, code version).
"""

from __future__ import annotations

from hforge.models.base import HSBlocks, HSModel
from hforge.models.checkpoint import build_model, init_trunk_from_mace, load_checkpoint, load_model, save_model
from hforge.models.config import KINDS, ModelConfig
from hforge.models.equivariant import EquivariantHSModel
from hforge.models.invariant import InvariantHSModel
from hforge.models.predict import assemble_prediction, predict_hamiltonian

__all__ = [
    "KINDS",
    "EquivariantHSModel",
    "HSBlocks",
    "HSModel",
    "InvariantHSModel",
    "ModelConfig",
    "assemble_prediction",
    "build_model",
    "init_trunk_from_mace",
    "load_checkpoint",
    "load_model",
    "predict_hamiltonian",
    "save_model",
]
