"""Eigenvalues of ``H c = E S c`` in an energy window by sparse shift-invert (ARPACK).

``scipy.sparse.linalg.eigsh(H, M=S, sigma=σ)`` factorises ``H - σ S`` once (SuperLU) and returns
the eigenvalues nearest σ, the window centre; their number is doubled until the farthest one
lies outside the window, so every eigenvalue of the window is found.  The factorisation is what
limits the size: its fill-in grows faster than linearly in 3D cells (measured in
``benchmarks/bench_analysis.py``).  With a ``threshold`` (canonical orthogonalization) the
problem is solved densely, as the eigenvectors of S below it must be dropped first (up to
``dense_max_orbitals``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from hforge.analysis.kpm import DENSE_MAX_ORBITALS
from hforge.analysis.spectrum import matrices_at_k
from hforge.errors import InputError, UnsupportedSystemError
from hforge.metrics import generalized_eigenvalues

__all__ = ["WindowEigenvalues", "window_eigenvalues"]


@dataclass
class WindowEigenvalues:
    """Eigenvalues (eV, sorted) of a window.

    Attributes:
        eigenvalues: ``(n,)`` every eigenvalue in ``[e_min, e_max]``.
        window: ``(e_min, e_max)``.
        method: ``"shift-invert"`` or ``"dense"``.
        threshold: canonical-orthogonalization threshold (None: raw).
        details: number of eigenvalues requested, seconds.
        figure: levels plot (None when ``plot=False``).
    """

    eigenvalues: np.ndarray
    window: tuple[float, float]
    method: str
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)
    figure: Any = field(default=None, repr=False)


def window_eigenvalues(
    H: Any,
    e_min: float,
    e_max: float,
    *,
    k: Sequence[float] = (0.0, 0.0, 0.0),
    spin: int = 0,
    threshold: float | None = None,
    n_initial: int = 16,
    dense_max_orbitals: int = DENSE_MAX_ORBITALS,
    plot: bool = True,
    save: str | os.PathLike | None = None,
) -> WindowEigenvalues:
    """All eigenvalues in ``[e_min, e_max]`` (eV) at one k-point.

    Args:
        H: a non-orthogonal :class:`sisl.Hamiltonian`, or ``(H, S)`` scipy sparse matrices.
        e_min, e_max: the window.
        k: reduced k-point (sisl Hamiltonian only).
        spin: spin channel of a polarized H.
        threshold: canonical-orthogonalization threshold (dense); None: sparse shift-invert.
        n_initial: eigenvalues asked first (doubled until the window is covered).
        dense_max_orbitals: largest problem solved densely with a threshold.
        plot, save: levels figure, and where to write it.

    Raises:
        UnsupportedSystemError: a threshold above ``dense_max_orbitals`` orbitals.
    """
    if not e_max > e_min:
        raise InputError(f"empty window [{e_min}, {e_max}]")
    h, s = H if isinstance(H, tuple) else matrices_at_k(H, k, spin=spin, format="csr")
    n = h.shape[0]
    began = time.perf_counter()
    if threshold is not None:
        if n > dense_max_orbitals:
            raise UnsupportedSystemError(
                f"{n} orbitals: canonical orthogonalization (threshold) is dense, offered up to {dense_max_orbitals}"
            )
        evals = generalized_eigenvalues(h.toarray() if sp.issparse(h) else h, s.toarray() if sp.issparse(s) else s, threshold)
        method, asked = "dense", len(evals)
    else:
        evals, asked = _shift_invert(sp.csc_matrix(h), sp.csc_matrix(s), 0.5 * (e_min + e_max), 0.5 * (e_max - e_min), n_initial)
        method = "shift-invert"
    inside = np.sort(evals[(evals >= e_min) & (evals <= e_max)])
    result = WindowEigenvalues(
        inside, (e_min, e_max), method, threshold, {"n_requested": asked, "seconds": time.perf_counter() - began}
    )
    if plot or save:
        from hforge.analysis.plots import plot_levels, save_figure

        result.figure = plot_levels({method: inside}, window=(e_min, e_max))
        if save:
            save_figure(result.figure, save)
    return result


def _shift_invert(h: sp.csc_matrix, s: sp.csc_matrix, sigma: float, half_width: float, n_initial: int) -> tuple[np.ndarray, int]:
    from scipy.sparse.linalg import LinearOperator, eigsh, splu

    n = h.shape[0]
    lu = splu((h - sigma * s).tocsc())  # one factorisation for every request
    op_inv = LinearOperator((n, n), matvec=lu.solve, dtype=np.result_type(h.dtype, s.dtype))
    count = max(1, min(n_initial, n - 2))
    while True:
        evals = eigsh(h, k=count, M=s, sigma=sigma, which="LM", OPinv=op_inv, return_eigenvectors=False)
        if np.max(np.abs(evals - sigma)) > half_width or count >= n - 2:
            return np.asarray(evals.real), count
        count = min(2 * count, n - 2)
