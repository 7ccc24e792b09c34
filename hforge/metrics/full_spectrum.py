"""The full-S spectrum of a prediction against SIESTA: what a user of the predicted (H, S) sees.

A user solves ``H(k) c = E S(k) c`` with the S that comes with H, in the whole basis (sisl's
``eigh``, SIESTA, TBtrans): no canonical orthogonalization.  Along the near-null directions of a
nearly singular S (dense aBN in its DZP basis: smallest S(Γ) eigenvalue ~5e-5) a matrix that is
not the matrix of an operator has unbounded Rayleigh quotients, and the spectrum grows *ghost
states* far outside DFT's, which the thresholded metrics of :mod:`hforge.metrics.spectra` drop
with those directions.  Here both sides are solved raw, each with its own S
(:func:`~hforge.metrics.spectra.generalized_eigenvalues` without a threshold, the Cholesky route,
scipy's ``eigh(H, S)`` to 1e-8 eV).

Before the comparison the best uniform shift of the prediction is removed: ``c =
<H_pred - H_ref, S_ref> / <S_ref, S_ref>`` over the predicted entries (:func:`best_shift`, the ``c``
of the shift-removed block metrics), and the prediction's spectrum is that of ``H_pred - c S_pred``,
its own spectrum moved by ``-c`` (SIESTA's energy zero is arbitrary up to ``c S``).

Metrics (:func:`full_spectrum_errors` on spectra, :func:`compare_full_spectra` on structures), over
one or several k-points (reduced coordinates; Γ by default):

- *ghost states* (:func:`count_ghosts`): predicted states below the reference's lowest state minus
  ``margin`` and above its highest plus ``margin`` (eV), per k-point against that k-point's
  reference, summed over k-points;
- *window*: the reference states within ``±window`` eV of the reference gap centre (midpoint of the
  highest HOMO and the lowest LUMO over the k-points), each paired with the predicted state of the
  same offset from the HOMO (:func:`~hforge.metrics.spectra.window_pairs`: HOMO-k with HOMO-k, LUMO+k with LUMO+k).  The
  HOMO is the ``n_occupied``-th state on both sides (the electron count, two per state), so a ghost
  state below the valence band moves every predicted state one rung down, as in the band filling
  a user gets.  MAE and largest error (meV), and the number of states of each side in the window;
- *gap*: lowest LUMO minus highest HOMO over the k-points, the error in meV;
- *band energy*: twice the sum of the occupied eigenvalues (mean over k-points), its error per
  atom in meV;
- *DOS distance*: :func:`~hforge.metrics.spectra.dos_distance` of the window's states, pooled over
  k-points (meV).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hforge.errors import InputError
from hforge.io import HSData
from hforge.metrics.blocks import MEV_PER_EV, align_reference, best_shift, check_same_structure
from hforge.metrics.spectra import (
    DEFAULT_WINDOW,
    dos_distance,
    generalized_eigenvalues,
    n_occupied_states,
    window_pairs,
)

__all__ = [
    "DEFAULT_GHOST_MARGIN",
    "FullSpectrumErrors",
    "FullSpectrumMetrics",
    "compare_full_spectra",
    "count_ghosts",
    "full_spectrum_errors",
]

#: Predicted states further than this (eV) below or above the reference spectrum are ghost states.
DEFAULT_GHOST_MARGIN = 1.0


def count_ghosts(pred: np.ndarray, ref: np.ndarray, margin: float = DEFAULT_GHOST_MARGIN) -> tuple[int, int]:
    """``(below, above)``: predicted states (eV) below ``min(ref) - margin`` and above ``max(ref) + margin``."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return int((pred < ref.min() - margin).sum()), int((pred > ref.max() + margin).sum())


@dataclass
class FullSpectrumErrors:
    """Errors of the full-S spectra of a prediction against a reference (module docstring).

    Attributes:
        n_kpoints, n_occupied, window_eV, margin_eV: the settings.
        ghosts_low, ghosts_high: predicted states below the reference's lowest state - margin and
            above its highest + margin, summed over k-points.
        range_ref_eV, range_pred_eV: ``[lowest, highest]`` state of each side over the k-points.
        window_mae_meV, window_max_meV: |predicted - reference| of the paired window states.
        n_window_ref, n_window_pred: states of each side in the window (summed over k-points).
        n_window_unpaired: window states without a predicted partner.
        gap_centre_eV: the reference gap centre (eV).
        gap_ref_eV, gap_pred_eV: lowest LUMO - highest HOMO of each side; gap_error_meV: their
            difference, prediction - reference.
        band_energy_ref_eV, band_energy_pred_eV: twice the sum of the occupied eigenvalues (mean over
            k-points); band_energy_error_meV_per_atom: prediction - reference, per atom.
        dos_distance_meV: Wasserstein-1 distance of the window's states.
    """

    n_kpoints: int
    n_occupied: int
    window_eV: float
    margin_eV: float
    ghosts_low: int
    ghosts_high: int
    range_ref_eV: list[float]
    range_pred_eV: list[float]
    window_mae_meV: float
    window_max_meV: float
    n_window_ref: int
    n_window_pred: int
    n_window_unpaired: int
    gap_centre_eV: float
    gap_ref_eV: float
    gap_pred_eV: float
    gap_error_meV: float
    band_energy_ref_eV: float
    band_energy_pred_eV: float
    band_energy_error_meV_per_atom: float
    dos_distance_meV: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def full_spectrum_errors(
    pred: np.ndarray,
    ref: np.ndarray,
    n_occupied: int,
    *,
    n_atoms: int,
    window: float = DEFAULT_WINDOW,
    margin: float = DEFAULT_GHOST_MARGIN,
) -> FullSpectrumErrors:
    """Errors of full spectra (module docstring).

    Args:
        pred, ref: sorted eigenvalues (eV), ``(n,)`` at one k-point or ``(K, n)`` (the same K on
            both sides; the predicted shift already removed).
        n_occupied: doubly occupied states per k-point (:func:`n_occupied_states`).
        n_atoms: atoms of the cell (the band energy per atom).
        window: half-width (eV) of the window around the reference gap centre.
        margin: how far (eV) outside the reference spectrum a predicted state is a ghost state.

    Raises:
        InputError: spectra of other shapes, non-finite values, or no LUMO for ``n_occupied``.
    """
    pred, ref = np.atleast_2d(np.asarray(pred, dtype=np.float64)), np.atleast_2d(np.asarray(ref, dtype=np.float64))
    if pred.ndim != 2 or ref.ndim != 2 or len(pred) != len(ref):
        raise InputError(f"spectra of shapes {pred.shape} (prediction) and {ref.shape} (reference): (K, n) each")
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise InputError("full spectra must be finite")
    if n_occupied < 1 or n_occupied >= min(pred.shape[1], ref.shape[1]):
        raise InputError(
            f"{n_occupied} occupied states need a HOMO and a LUMO: the spectra have {ref.shape[1]} (reference) "
            f"and {pred.shape[1]} (prediction) states"
        )
    homo, lumo = n_occupied - 1, n_occupied
    centre = 0.5 * (ref[:, homo].max() + ref[:, lumo].min())
    low = high = n_ref = n_pred = unpaired = 0
    errors = []
    for p, r in zip(pred, ref):
        below, above = count_ghosts(p, r, margin)
        low, high = low + below, high + above
        pairs = window_pairs(p, r, homo, homo, centre, window)
        errors.append(MEV_PER_EV * np.abs(p[pairs.pred] - r[pairs.ref]))
        n_ref, n_pred, unpaired = n_ref + pairs.n_ref, n_pred + pairs.n_pred, unpaired + pairs.n_unpaired
    err = np.concatenate(errors)
    gap_ref = float(ref[:, lumo].min() - ref[:, homo].max())
    gap_pred = float(pred[:, lumo].min() - pred[:, homo].max())
    band_ref = float(2 * ref[:, :n_occupied].sum(axis=1).mean())
    band_pred = float(2 * pred[:, :n_occupied].sum(axis=1).mean())
    nan = float("nan")
    return FullSpectrumErrors(
        n_kpoints=len(ref), n_occupied=n_occupied, window_eV=window, margin_eV=margin,
        ghosts_low=low, ghosts_high=high,
        range_ref_eV=[float(ref.min()), float(ref.max())], range_pred_eV=[float(pred.min()), float(pred.max())],
        window_mae_meV=float(err.mean()) if len(err) else nan, window_max_meV=float(err.max()) if len(err) else nan,
        n_window_ref=n_ref, n_window_pred=n_pred, n_window_unpaired=unpaired,
        gap_centre_eV=float(centre), gap_ref_eV=gap_ref, gap_pred_eV=gap_pred,
        gap_error_meV=MEV_PER_EV * (gap_pred - gap_ref),
        band_energy_ref_eV=band_ref, band_energy_pred_eV=band_pred,
        band_energy_error_meV_per_atom=MEV_PER_EV * (band_pred - band_ref) / n_atoms,
        dos_distance_meV=dos_distance(pred, ref, centre, window),
    )


@dataclass
class FullSpectrumMetrics:
    """The full-S comparison of one structure.

    Attributes:
        errors: the metrics, after removing the prediction's best uniform shift.
        shift_eV: the removed ``c`` (eV): the prediction's spectrum is its own moved by ``-c``.
        kpoints: ``(K, 3)`` reduced k-points.
        eigenvalues: ``{"ref": (K, n), "pred": (K, n)}`` sorted eigenvalues (eV; the prediction's
            after removing ``c S``), for plots; not in :meth:`to_dict`.
    """

    errors: FullSpectrumErrors
    shift_eV: float
    kpoints: np.ndarray
    eigenvalues: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``shift_removed_eV``, ``kpoints`` and every field of :class:`FullSpectrumErrors`."""
        return {"shift_removed_eV": self.shift_eV, "kpoints": self.kpoints.tolist(), **self.errors.to_dict()}


def _bloch(data: HSData, k: np.ndarray, which: str, spin: int) -> np.ndarray:
    """Hermitian dense ``M(k)`` of a structure holding every pair's partner."""
    m = data.matrix_at_k(k, which=which, spin=spin)
    return 0.5 * (m + m.conj().T)


def compare_full_spectra(
    prediction: HSData,
    reference: HSData,
    *,
    n_occupied: int | None = None,
    kpoints: Any = None,
    window: float = DEFAULT_WINDOW,
    margin: float = DEFAULT_GHOST_MARGIN,
    spin: int = 0,
) -> FullSpectrumMetrics:
    """Full-S spectrum metrics of a predicted structure against SIESTA (module docstring).

    Args:
        prediction: the prediction (``h`` the unshifted H, E_F = 0, and its S) on any pair list:
            a canonical half gets its partners as transposed blocks.
        reference: the SIESTA structure (same atoms and basis).
        n_occupied: occupied states (default: from the basis' valence charges).
        kpoints: ``(K, 3)`` or ``(3,)`` reduced k-points; default Γ.
        window: half-width (eV) of the window around the reference gap centre.
        margin: ghost-state margin (eV).
        spin: spin channel of both.

    Raises:
        BasisMismatchError: different bases, species or block sizes.
        InvalidMatrixError: an S (a learned one) that is not positive definite at a k-point.
        InputError: bad k-points.
    """
    check_same_structure(prediction, reference)
    if n_occupied is None:
        n_occupied = n_occupied_states(reference.basis, reference.species)
    kpts = np.atleast_2d(np.asarray((0.0, 0.0, 0.0) if kpoints is None else kpoints, dtype=np.float64))
    if kpts.ndim != 2 or kpts.shape[1] != 3 or not np.isfinite(kpts).all():
        raise InputError(f"k-points must be finite (K, 3) reduced coordinates, got shape {kpts.shape}")
    aligned = align_reference(reference, prediction.edge_index, prediction.cell_shift, prediction.block_ptr, spin=spin)
    h_pred = prediction.h_unshifted[spin]
    c = best_shift(h_pred - aligned.h, aligned.s)
    shifted = replace(prediction, h=(h_pred - c * prediction.s)[None], fermi_level=0.0).expand_half()
    reference = reference.expand_half()
    spectra: dict[str, list[np.ndarray]] = {"ref": [], "pred": []}
    for k in kpts:
        spectra["pred"].append(generalized_eigenvalues(_bloch(shifted, k, "h", 0), _bloch(shifted, k, "s", 0)))
        spectra["ref"].append(
            generalized_eigenvalues(_bloch(reference, k, "h_unshifted", spin), _bloch(reference, k, "s", spin))
        )
    eigenvalues = {key: np.stack(rows) for key, rows in spectra.items()}
    errors = full_spectrum_errors(
        eigenvalues["pred"], eigenvalues["ref"], n_occupied, n_atoms=reference.n_atoms, window=window, margin=margin
    )
    return FullSpectrumMetrics(errors, c, kpts, eigenvalues)
