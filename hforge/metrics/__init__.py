"""Errors of predicted H and S against SIESTA, in physical units: what training, evaluation and
analysis all measure.

:mod:`hforge.metrics.blocks`: the reference on a predicted pair list (:func:`align_reference`),
block types, H MAE in meV (all, onsite, hopping, per species pair and block type; raw and with the
best uniform shift ``c S`` removed) and the MAE of S.
:mod:`hforge.metrics.spectra`: dense Γ matrices of flat blocks (:class:`GammaLayout`), generalized
eigenvalues (raw and canonically orthogonalized), occupied states, and eigenvalue errors in meV.

Numpy/torch only, on the layouts of :mod:`hforge.io` and :mod:`hforge.ops`: no model, no training.
"""

from __future__ import annotations

from hforge.metrics.blocks import (
    MEV_PER_EV,
    AlignedReference,
    BlockMetrics,
    BlockTypes,
    TypeErrors,
    align_reference,
    best_shift,
    block_metrics,
    check_same_structure,
    compare_blocks,
)
from hforge.metrics.spectra import (
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    EVALUATION_THRESHOLDS,
    EigenMetrics,
    GammaLayout,
    SpectrumErrors,
    canonical_orthogonalization,
    compare_spectra,
    eigenvalue_metrics,
    generalized_eigenvalues,
    n_occupied_states,
    spectrum_errors,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_WINDOW",
    "EVALUATION_THRESHOLDS",
    "MEV_PER_EV",
    "AlignedReference",
    "BlockMetrics",
    "BlockTypes",
    "EigenMetrics",
    "GammaLayout",
    "SpectrumErrors",
    "TypeErrors",
    "align_reference",
    "best_shift",
    "block_metrics",
    "canonical_orthogonalization",
    "check_same_structure",
    "compare_blocks",
    "compare_spectra",
    "eigenvalue_metrics",
    "generalized_eigenvalues",
    "n_occupied_states",
    "spectrum_errors",
]
