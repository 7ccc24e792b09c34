"""Spectra of predicted or reference Hamiltonians, and comparison reports.

Dense (small cells): :func:`eigenvalues_at_k`, :func:`band_structure`, :func:`dos_dense`.
Sparse (large cells): :func:`dos_kpm` (kernel polynomial method of the generalized problem),
:func:`window_eigenvalues` (shift-invert).  Each takes the canonical-orthogonalization
``threshold`` of the training metrics and returns arrays with a matplotlib figure.
:func:`spectrum_report`: metrics and figures of a prediction against SIESTA.
"""

from __future__ import annotations

from hforge.analysis.comparison import SpectrumReport, spectrum_report
from hforge.analysis.kpm import dos_kpm
from hforge.analysis.spectrum import (
    DOS,
    BandStructure,
    band_structure,
    broadened_dos,
    dos_dense,
    eigenvalues_at_k,
    hamiltonian_from,
    matrices_at_k,
)
from hforge.analysis.window import WindowEigenvalues, window_eigenvalues

__all__ = [
    "DOS",
    "BandStructure",
    "SpectrumReport",
    "WindowEigenvalues",
    "band_structure",
    "broadened_dos",
    "dos_dense",
    "dos_kpm",
    "eigenvalues_at_k",
    "hamiltonian_from",
    "matrices_at_k",
    "spectrum_report",
    "window_eigenvalues",
]
