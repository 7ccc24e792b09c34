"""Errors of predicted H and S against SIESTA, in physical units: what training, evaluation and
analysis all measure.

:mod:`hforge.metrics.blocks`: the reference on a predicted pair list (:func:`align_reference`),
block types, H MAE in meV (all, onsite, hopping, per species pair and block type; raw and with the
best uniform shift ``c S`` removed) and the MAE of S; per-atom onsite-energy errors.
:mod:`hforge.metrics.full_spectrum`: what a user sees, the headline: the full-S spectrum (raw
generalized problem, each side with its own S, best ``c S`` removed) at Γ or k-points: ghost states
outside the reference spectrum, the window around the gap paired from the HOMO, the gap, the band
energy and the DOS distance.
:mod:`hforge.metrics.spectra`: dense Γ matrices of flat blocks (:class:`GammaLayout`), generalized
eigenvalues (raw and canonically orthogonalized), occupied states, the window pairing, the DOS
distance, and the eigenvalue errors after canonical orthogonalization (the secondary view).

Numpy/torch only, on the layouts of :mod:`hforge.io` and :mod:`hforge.ops`: no model, no training.
"""

from __future__ import annotations

from hforge.metrics.blocks import (
    MEV_PER_EV,
    AlignedReference,
    BlockMetrics,
    BlockTypes,
    OnsiteEnergyErrors,
    TypeErrors,
    align_reference,
    best_shift,
    block_metrics,
    check_same_structure,
    compare_blocks,
    onsite_energy_errors,
)
from hforge.metrics.full_spectrum import (
    DEFAULT_GHOST_MARGIN,
    FullSpectrumErrors,
    FullSpectrumMetrics,
    compare_full_spectra,
    count_ghosts,
    full_spectrum_errors,
)
from hforge.metrics.spectra import (
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    EVALUATION_THRESHOLDS,
    EigenMetrics,
    GammaLayout,
    SpectrumErrors,
    WindowPairs,
    canonical_orthogonalization,
    compare_spectra,
    dos_distance,
    eigenvalue_metrics,
    generalized_eigenvalues,
    n_occupied_states,
    spectrum_errors,
    window_pairs,
)

__all__ = [
    "DEFAULT_GHOST_MARGIN",
    "DEFAULT_THRESHOLD",
    "DEFAULT_WINDOW",
    "EVALUATION_THRESHOLDS",
    "MEV_PER_EV",
    "AlignedReference",
    "BlockMetrics",
    "BlockTypes",
    "EigenMetrics",
    "FullSpectrumErrors",
    "FullSpectrumMetrics",
    "GammaLayout",
    "OnsiteEnergyErrors",
    "SpectrumErrors",
    "TypeErrors",
    "WindowPairs",
    "align_reference",
    "best_shift",
    "block_metrics",
    "canonical_orthogonalization",
    "check_same_structure",
    "compare_blocks",
    "compare_full_spectra",
    "compare_spectra",
    "count_ghosts",
    "dos_distance",
    "eigenvalue_metrics",
    "full_spectrum_errors",
    "generalized_eigenvalues",
    "n_occupied_states",
    "onsite_energy_errors",
    "spectrum_errors",
    "window_pairs",
]
