"""Dense spectra of a non-orthogonal :class:`sisl.Hamiltonian`: eigenvalues at k, bands, DOS.

Every function takes the overlap-eigenvalue ``threshold`` of the training metrics
(:mod:`hforge.metrics.spectra`): None solves the raw generalized problem ``H(k) c = E S(k) c``;
a value (1e-3 is the metrics' default) canonically orthogonalizes S(k) first, dropping its
eigenvectors below the threshold, so that a nearly singular overlap (dense aBN in its DZP basis)
cannot turn small errors of a predicted H into large eigenvalue errors.  With a threshold the
number of states can change from one k-point to the next: arrays are padded with NaN at the top.

Energies are those of the Hamiltonian as given (eV): a SIESTA file read by sisl or by
``HSData.to_sisl()`` has ``E_F = 0``; :func:`hamiltonian_from` gives the unshifted H of an
``HSData``.  DOS are in states/eV per cell for one spin channel (an unpolarized cell holds two
electrons per state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from hforge.errors import InputError, UnsupportedSystemError
from hforge.io import HSData
from hforge.metrics import generalized_eigenvalues

__all__ = [
    "BandStructure",
    "DOS",
    "hamiltonian_from",
    "matrices_at_k",
    "eigenvalues_at_k",
    "band_structure",
    "broadened_dos",
    "dos_dense",
    "default_energies",
]


def hamiltonian_from(data: HSData, *, unshifted: bool = True) -> Any:
    """:class:`sisl.Hamiltonian` of an :class:`HSData` (with S); ``unshifted`` adds ``E_F S`` back
    (the H that models learn and SIESTA's ``.EIG`` energies refer to)."""
    H = data.to_sisl()
    if unshifted and data.fermi_level:
        H.shift(data.fermi_level)
    return H


def _check_hamiltonian(H: Any) -> None:
    if getattr(H, "orthogonal", True) or not hasattr(H, "Sk"):
        raise UnsupportedSystemError("a non-orthogonal sisl.Hamiltonian (with its overlap S) is needed")
    if not (H.spin.is_unpolarized or H.spin.is_polarized):
        raise UnsupportedSystemError(f"{H.spin!s} Hamiltonian: spectra of unpolarized or collinear H only")


def matrices_at_k(H: Any, k: Sequence[float] = (0.0, 0.0, 0.0), *, spin: int = 0, format: str = "array") -> tuple[Any, Any]:
    """``(H(k), S(k))`` of a non-orthogonal sisl Hamiltonian (k in reduced units; ``format`` as sisl's:
    ``"array"`` dense, ``"csr"`` sparse).  Real at Γ, complex elsewhere."""
    _check_hamiltonian(H)
    extra = {"spin": spin} if H.spin.is_polarized else {}
    gamma = not np.any(np.asarray(k, dtype=np.float64))
    dtype = np.float64 if gamma else np.complex128
    return H.Hk(k, dtype=dtype, format=format, **extra), H.Sk(k, dtype=dtype, format=format)


def _as_kpoints(k: Any) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == 1:
        k = k[None, :]
    if k.ndim != 2 or k.shape[1] != 3 or not np.isfinite(k).all():
        raise InputError(f"k-points must be finite (K, 3) reduced coordinates, got shape {k.shape}")
    return k


def eigenvalues_at_k(
    H: Any, k: Any = (0.0, 0.0, 0.0), *, threshold: float | None = None, spin: int = 0, progress: bool = False
) -> np.ndarray:
    """Sorted eigenvalues (eV) at every k-point: ``(K, n_states)`` (NaN-padded with a threshold).

    Args:
        H: non-orthogonal :class:`sisl.Hamiltonian`.
        k: ``(3,)`` or ``(K, 3)`` reduced k-points.
        threshold: canonical-orthogonalization threshold; None for the raw problem.
        spin: spin channel of a polarized H.
        progress: show a progress bar over k-points.
    """
    kpts = _as_kpoints(k)
    rows = []
    for kk in _progress(kpts, progress, "k-points"):
        h, s = matrices_at_k(H, kk, spin=spin)
        rows.append(generalized_eigenvalues(h, s, threshold))
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _progress(items: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


@dataclass
class BandStructure:
    """Eigenvalues along a k-path.

    Attributes:
        kpts: ``(K, 3)`` reduced k-points.
        x: ``(K,)`` distance along the path (1/Å, ASE's linear axis).
        special_x: positions of the labelled points; labels: their names (``G`` is Γ).
        eigenvalues: ``(K, n_states)`` eV (NaN-padded).
        threshold: canonical-orthogonalization threshold used (None: raw).
        figure: matplotlib Figure (None when ``plot=False``).
    """

    kpts: np.ndarray
    x: np.ndarray
    special_x: np.ndarray
    labels: list[str]
    eigenvalues: np.ndarray
    threshold: float | None
    figure: Any = field(default=None, repr=False)


def _path_axis(cell: np.ndarray, kpts: np.ndarray) -> np.ndarray:
    """Cumulative Cartesian distance (1/Å, without 2π as ASE) along reduced k-points."""
    recip = np.linalg.inv(cell).T
    steps = np.linalg.norm(np.diff(kpts @ recip, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def band_structure(
    H: Any,
    path: str | np.ndarray | Any | None = None,
    *,
    npoints: int = 100,
    threshold: float | None = None,
    spin: int = 0,
    energy_reference: float = 0.0,
    energy_range: tuple[float, float] | None = None,
    plot: bool = True,
    save: str | os.PathLike | None = None,
    progress: bool = False,
) -> BandStructure:
    """Bands along a k-path.

    Args:
        H: non-orthogonal :class:`sisl.Hamiltonian`.
        path: ASE special-point string (``"GXMGR"``), an :class:`ase.dft.kpoints.BandPath`, a
            ``(K, 3)`` array of reduced k-points, or None for ASE's default path of the lattice.
        npoints: points of an ASE path.
        threshold: canonical-orthogonalization threshold (None: raw problem).
        spin: spin channel of a polarized H.
        energy_reference, energy_range: plot energies relative to this (eV), within this range.
        plot: build :attr:`BandStructure.figure`; save: also write it there (png, pdf, svg).
        progress: progress bar over k-points.
    """
    cell = np.asarray(H.geometry.cell, dtype=np.float64)
    if isinstance(path, np.ndarray) or (isinstance(path, (list, tuple)) and len(path) and not isinstance(path[0], str)):
        kpts = _as_kpoints(path)
        x = _path_axis(cell, kpts)
        special_x, labels = x[[0, -1]], ["", ""]
    else:
        if path is None or isinstance(path, str):
            from ase.cell import Cell

            path = Cell(cell).bandpath(path, npoints=npoints)
        kpts = np.asarray(path.kpts, dtype=np.float64)
        x, special_x, labels = path.get_linear_kpoint_axis()
    eigenvalues = eigenvalues_at_k(H, kpts, threshold=threshold, spin=spin, progress=progress)
    result = BandStructure(kpts, np.asarray(x), np.asarray(special_x), list(labels), eigenvalues, threshold)
    if plot or save:
        from hforge.analysis.plots import plot_bands, save_figure

        result.figure = plot_bands(result, energy_reference=energy_reference, energy_range=energy_range)
        if save:
            save_figure(result.figure, save)
    return result


@dataclass
class DOS:
    """A density of states.

    Attributes:
        energies: ``(n_E,)`` eV.
        dos: ``(n_E,)`` states/eV per cell (one spin channel).
        method: ``"dense"``, ``"kpm"``.
        threshold: canonical-orthogonalization threshold (None: raw problem).
        n_states: states the DOS integrates to over all energies.
        details: method-specific numbers (broadening, moments, bounds, solver costs, ...).
        figure: matplotlib Figure (None when ``plot=False``).
    """

    energies: np.ndarray
    dos: np.ndarray
    method: str
    threshold: float | None
    n_states: float
    details: dict[str, Any] = field(default_factory=dict)
    figure: Any = field(default=None, repr=False)

    def integrated(self) -> np.ndarray:
        """``(n_E,)`` states below each energy, counted from the first energy (trapezoid rule)."""
        steps = 0.5 * (self.dos[1:] + self.dos[:-1]) * np.diff(self.energies)
        return np.concatenate([[0.0], np.cumsum(steps)])


def broadened_dos(
    eigenvalues: np.ndarray,
    energies: np.ndarray,
    *,
    broadening: float = 0.05,
    kind: Literal["gaussian", "lorentzian"] = "gaussian",
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``Σ_k w_k Σ_n δ_σ(E - ε_nk)`` on ``energies``: Gaussian (std ``broadening``) or Lorentzian
    (half width ``broadening``) lines; ``eigenvalues`` ``(K, n)`` or ``(n,)`` (NaN ignored), weights
    ``(K,)`` summing to 1 (default uniform)."""
    if broadening <= 0:
        raise InputError(f"broadening must be positive, got {broadening}")
    eig = np.atleast_2d(np.asarray(eigenvalues, dtype=np.float64))
    w = np.full(len(eig), 1.0 / len(eig)) if weights is None else np.asarray(weights, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    out = np.zeros_like(energies)
    for wk, row in zip(w, eig):
        row = row[np.isfinite(row)]
        d = energies[:, None] - row[None, :]
        if kind == "gaussian":
            lines = np.exp(-0.5 * (d / broadening) ** 2) / (broadening * np.sqrt(2 * np.pi))
        elif kind == "lorentzian":
            lines = (broadening / np.pi) / (d * d + broadening * broadening)
        else:
            raise InputError(f"unknown broadening {kind!r}: gaussian or lorentzian")
        out += wk * lines.sum(axis=1)
    return out


def default_energies(lowest: float, *, span: float = 40.0, step: float = 0.01) -> np.ndarray:
    """Energies from 1 eV below the lowest state to ``span`` eV above it (valence band, gap and
    the bottom of the conduction band of aBN), every ``step`` eV."""
    return np.arange(lowest - 1.0, lowest + span + 0.5 * step, step)


def dos_dense(
    H: Any,
    energies: np.ndarray | None = None,
    *,
    k: Any = (0.0, 0.0, 0.0),
    weights: np.ndarray | None = None,
    broadening: float = 0.05,
    kind: Literal["gaussian", "lorentzian"] = "gaussian",
    threshold: float | None = None,
    spin: int = 0,
    plot: bool = True,
    save: str | os.PathLike | None = None,
    progress: bool = False,
) -> DOS:
    """DOS from dense diagonalisation at k-points (small cells: up to a few thousand orbitals).

    Args:
        H: non-orthogonal :class:`sisl.Hamiltonian`.
        energies: eV; default :func:`default_energies`.
        k: ``(K, 3)`` reduced k-points (default Γ), e.g. ``sisl.MonkhorstPack(H, [4, 4, 4]).k``.
        weights: ``(K,)`` k weights (default uniform).
        broadening, kind: line shape (:func:`broadened_dos`).
        threshold: canonical-orthogonalization threshold (None: raw problem).
        spin: spin channel of a polarized H.
        plot, save: figure, and where to write it.
        progress: progress bar over k-points.
    """
    eig = eigenvalues_at_k(H, k, threshold=threshold, spin=spin, progress=progress)
    if energies is None:
        energies = default_energies(float(np.nanmin(eig)))
    energies = np.asarray(energies, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    values = broadened_dos(eig, energies, broadening=broadening, kind=kind, weights=w)
    n_states = float(np.sum((w if w is not None else np.full(len(eig), 1 / len(eig))) * np.isfinite(eig).sum(axis=1)))
    result = DOS(
        energies, values, "dense", threshold, n_states, {"broadening": broadening, "kind": kind, "n_kpoints": len(eig)}
    )
    _finish_dos(result, plot, save)
    return result


def _finish_dos(result: DOS, plot: bool, save: str | os.PathLike | None) -> None:
    if plot or save:
        from hforge.analysis.plots import plot_dos, save_figure

        result.figure = plot_dos({result.method: result})
        if save:
            save_figure(result.figure, save)
