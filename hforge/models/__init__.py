"""H and S predictors on MACE descriptors: an equivariant model and its non-equivariant baseline.

Both share the trunk (MACE's blocks), the S embedding, the output scaling, the graphs
(:class:`~hforge.graph.GraphBuilder`) and the output layout; only the heads differ.

- :class:`ModelConfig`, :func:`build_model`: configure and build either kind.
- ``model(batch) -> HSBlocks``: flat-packed unshifted H (eV) and S blocks on ``batch.block_ptr``.
- :func:`assemble_prediction`: predicted blocks -> ``sisl.Hamiltonian`` (structure -> H and S:
  :func:`hforge.infer.predict_hamiltonian`, the inference layer's).
- :func:`save_model` / :func:`load_model`: self-describing checkpoints (config, basis, code version).

Blocks predicted: the onsite blocks and the canonical half of the pairs within ``r_i + r_j`` (the
blocks of S).  H's Kleinman-Bylander blocks beyond (pairs coupled through a third atom's projector,
up to ``r_i + r_j + 2 r_KB``) are left out by default (``ModelConfig.include_kb=True`` predicts
them).  Cost, measured on the 64-atom aBN validation cell (``scripts/kb_pairs_cost.py``): 1,338
pairs, 7.9 % of H's entries, |H| <= 0.43 meV; leaving them out adds 8e-5 meV to the H MAE and
moves Γ eigenvalues by <= 4.6 µeV (raw) and <= 3.2 µeV (canonically orthogonalized).

Default configs (16 channels up to l = 2, 2 MACE layers): 84,584 parameters (equivariant) and
208,668 (invariant), of which 19,936 in the shared trunk.
"""

from __future__ import annotations

from hforge._compat import import_mace

import_mace()  # before any module of this package imports mace or e3nn (hforge/_compat.py)

from hforge.models.base import HSBlocks, HSModel  # noqa: E402
from hforge.models.checkpoint import build_model, load_checkpoint, load_model, save_model  # noqa: E402
from hforge.models.config import KINDS, ModelConfig  # noqa: E402
from hforge.models.equivariant import EquivariantHSModel  # noqa: E402
from hforge.models.invariant import InvariantHSModel  # noqa: E402
from hforge.models.predict import assemble_prediction  # noqa: E402

__all__ = [
    "KINDS",
    "EquivariantHSModel",
    "HSBlocks",
    "HSModel",
    "InvariantHSModel",
    "ModelConfig",
    "assemble_prediction",
    "build_model",
    "load_checkpoint",
    "load_model",
    "save_model",
]
