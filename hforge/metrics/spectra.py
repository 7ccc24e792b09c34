"""Γ-point generalized eigenvalues of (H, S), canonically orthogonalized, and their errors in meV.

What a user sees is the full-S spectrum (:mod:`hforge.metrics.full_spectrum`, the headline of the
evaluation): no basis truncation.  This module holds the shared pieces (dense Γ matrices, the
generalized eigensolver, occupied states, the window pairing and the DOS distance) and the
secondary, thresholded view.

The DZP basis of dense aBN is nearly linearly dependent: S(Γ) has eigenvalues down to ~5e-5 and
about 10 % of them below 1e-3.  The generalized eigenvalues of ``H c = E S c`` are therefore very
sensitive to errors in H: random 1 meV noise on every entry moves the states near the gap by
1-3 eV.  *Canonical orthogonalization* removes that sensitivity, and with it the view of what
breaks: with ``S = U diag(s) U^T``, keep the eigenvectors with ``s > threshold`` and diagonalise
``X^T H X`` with ``X = U_kept diag(s_kept)^(-1/2)`` (so ``X^T S X = 1``).  Each side (prediction,
reference) is orthogonalized with its own S; with the reference S on both sides (exact S, or the
H-only comparison of the evaluation) only H's errors count.  Every number states its threshold
(:data:`DEFAULT_THRESHOLD` = 1e-2 first: at 1e-3 even random 22 meV noise on H moves the states near
the gap by eV on the shared aBN cells).

Pairing of two spectra (:func:`window_pairs`): eigenvalues are sorted and paired by their offset
from the HOMO: reference HOMO-k with predicted HOMO-k, LUMO+k with LUMO+k.  The *occupied* states
are the lowest ``n_occupied`` (electrons from the valence charges of the basis, two per state;
:func:`n_occupied_states`) on both sides, so the pairing is index k with index k from the bottom;
the *window* is the set of reference states within ``±window`` eV of the reference gap centre
(midpoint of its HOMO and LUMO), compared with their predicted partners.  After orthogonalization
the two sides may keep different numbers of states (their S differ): the dropped directions are
combinations of nearly dependent orbitals whose states lie at the top of the spectrum (tens to
hundreds of eV above the gap), so the low states stay matched; window states whose partner lies
beyond the shorter spectrum are left out and counted (``n_window_unpaired``).

The differentiable eigenvalue loss built on :class:`GammaLayout` is in :mod:`hforge.train.losses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, InputError, InvalidMatrixError
from hforge.io import HSData
from hforge.metrics.blocks import MEV_PER_EV, check_same_structure
from hforge.ops.assemble import is_canonical

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_WINDOW",
    "EVALUATION_THRESHOLDS",
    "GammaLayout",
    "SpectrumErrors",
    "EigenMetrics",
    "WindowPairs",
    "canonical_orthogonalization",
    "dos_distance",
    "generalized_eigenvalues",
    "n_occupied_states",
    "spectrum_errors",
    "window_pairs",
    "eigenvalue_metrics",
    "compare_spectra",
]

#: Overlap eigenvalues below this are dropped by canonical orthogonalization (the headline).
DEFAULT_THRESHOLD = 1e-2
#: The thresholds the evaluation reports (the headline first).
EVALUATION_THRESHOLDS = (1e-2, 1e-3)
#: Half-width (eV) of the energy window around the gap centre.
DEFAULT_WINDOW = 2.0


# ---------------------------------------------------------------------------------------
# dense Γ matrices from flat blocks
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class GammaLayout:
    """How the flat blocks of a pair list fold into the dense Γ-point matrix ``Σ_n M(n)``.

    A canonical-half pair list (every pair canonical, see :func:`hforge.ops.assemble.is_canonical`)
    also contributes the transpose of each non-onsite block (its partner ``(j, i, -n)``); any
    other list is taken to hold every partner itself.  The result is symmetrised,
    ``(M + M^T) / 2`` (SIESTA's H is symmetric to ~1e-8 eV only).

    Attributes:
        n_orbitals: orbitals of the cell.
        index: ``(n_values,)`` int64 position ``row * n + col`` of every value.
        mirror_values: int64 values that are also written transposed (half lists).
        mirror_index: their transposed positions ``col * n + row``.
    """

    n_orbitals: int
    index: np.ndarray
    mirror_values: np.ndarray
    mirror_index: np.ndarray

    @classmethod
    def of(cls, edge_index: Any, cell_shift: Any, block_ptr: Any, orbital_offsets: Any) -> "GammaLayout":
        """From a pair list and the first orbital of every atom (``(N + 1,)``, last = n_orbitals)."""
        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
        block_ptr = np.asarray(block_ptr, dtype=np.int64)
        offsets = np.asarray(orbital_offsets, dtype=np.int64)
        counts = np.diff(offsets)
        sizes = np.diff(block_ptr)
        pair = np.repeat(np.arange(len(sizes)), sizes)
        i, j = edge_index[:, pair]
        local = np.arange(int(block_ptr[-1])) - block_ptr[pair]
        rows = offsets[i] + local // counts[j]
        cols = offsets[j] + local % counts[j]
        n = int(offsets[-1])
        half = bool(is_canonical(edge_index, cell_shift).all())
        onsite = (edge_index[0] == edge_index[1]) & ~cell_shift.any(axis=1)
        mirror = np.flatnonzero(~onsite[pair]) if half else np.zeros(0, dtype=np.int64)
        return cls(n, rows * n + cols, mirror, cols[mirror] * n + rows[mirror])

    @classmethod
    def from_hsdata(cls, data: HSData) -> "GammaLayout":
        """The layout of ``data``'s pairs."""
        return cls.of(data.edge_index, data.cell_shift, data.block_ptr, data.orbital_offsets)

    def dense(self, values: Any) -> Any:
        """``(n, n)`` symmetric Γ matrix of flat ``values``: a numpy array for numpy input, a
        tensor (differentiable) for a tensor."""
        n = self.n_orbitals
        if isinstance(values, torch.Tensor):
            out = torch.zeros(n * n, dtype=values.dtype, device=values.device)
            out = out.index_add(0, torch.as_tensor(self.index, device=values.device), values)
            if len(self.mirror_values):
                mirror = torch.as_tensor(self.mirror_values, device=values.device)
                out = out.index_add(0, torch.as_tensor(self.mirror_index, device=values.device), values[mirror])
            out = out.reshape(n, n)
            return 0.5 * (out + out.T)
        values = np.asarray(values, dtype=np.float64)
        out = np.bincount(self.index, weights=values, minlength=n * n)
        if len(self.mirror_values):
            out += np.bincount(self.mirror_index, weights=values[self.mirror_values], minlength=n * n)
        out = out.reshape(n, n)
        return 0.5 * (out + out.T)


# ---------------------------------------------------------------------------------------
# eigenvalues
# ---------------------------------------------------------------------------------------
def canonical_orthogonalization(s: Any, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """``X = U_kept diag(s_kept)^(-1/2)`` (``(n, m)`` float64 tensor, ``X^T S X = 1``): the
    eigenvectors of the symmetric (or Hermitian) ``s`` with eigenvalue above ``threshold``."""
    if threshold <= 0:
        raise InputError(f"canonical orthogonalization threshold must be positive, got {threshold}")
    s = torch.as_tensor(s)
    s = s.to(torch.complex128 if s.is_complex() else torch.float64)
    evals, evecs = torch.linalg.eigh(s)
    keep = evals > threshold
    return evecs[:, keep] / torch.sqrt(evals[keep])


def generalized_eigenvalues(h: Any, s: Any, threshold: float | None = None) -> np.ndarray:
    """Sorted eigenvalues of ``H c = E S c`` (dense symmetric/Hermitian; float64 numpy).

    Args:
        h, s: ``(n, n)`` matrices (arrays or tensors).
        threshold: None solves the raw problem (Cholesky of S); a value canonically
            orthogonalizes first (fewer eigenvalues: one per kept S eigenvector).

    Raises:
        InvalidMatrixError: ``threshold=None`` and S is not positive definite.
    """
    with torch.no_grad():
        h, s = torch.as_tensor(h), torch.as_tensor(s)
        dtype = torch.complex128 if (h.is_complex() or s.is_complex()) else torch.float64
        h, s = h.to(dtype), s.to(dtype)
        if threshold is not None:
            x = canonical_orthogonalization(s, threshold)
            return torch.linalg.eigvalsh(x.mH @ h @ x).numpy()
        chol, info = torch.linalg.cholesky_ex(s)
        if int(info):
            low = float(torch.linalg.eigvalsh(s)[0])
            raise InvalidMatrixError(f"S is not positive definite (smallest eigenvalue {low:.3e}): give a threshold")
        a = torch.linalg.solve_triangular(chol, h, upper=False)
        a = torch.linalg.solve_triangular(chol, a.mH, upper=False)
        return torch.linalg.eigvalsh(a).numpy()


def n_occupied_states(basis: BasisSet, species: Any, *, charge: float = 0.0) -> int:
    """Doubly occupied states of a spin-unpolarized cell: ``ceil((Σ Z_valence - charge) / 2)``.

    Raises:
        BasisMismatchError: the basis records no valence charge (read it from ``.ion`` files, or
            pass the number of occupied states to the metrics yourself).
    """
    zval = basis.valence_charges[np.asarray(species, dtype=np.int64)]
    if np.isnan(zval).any():
        missing = sorted({basis.symbols[k] for k in np.asarray(species)[np.isnan(zval)]})
        raise BasisMismatchError(
            f"the basis records no valence charge for {missing}: read it from .ion/.ion.xml/.ion.nc files "
            "or give n_occupied"
        )
    return int(math.ceil(round(float(zval.sum()) - charge, 6) / 2))


@dataclass
class SpectrumErrors:
    """Errors of paired eigenvalues (energies in eV, errors in meV).

    Attributes:
        window_mae_meV, window_max_meV: over the reference states within ±window of its gap centre.
        occupied_mae_meV, occupied_max_meV: over the lowest ``n_occupied`` states.
        occupied_mean_error_meV: mean signed error (prediction - reference) of the occupied states:
            a uniform energy offset of the prediction shows here.
        n_window: window states compared; n_window_unpaired: window states beyond the shorter spectrum.
        n_states_ref, n_states_pred: eigenvalues of each side (kept S eigenvectors).
        gap_centre_eV, gap_ref_eV, gap_pred_eV: reference gap centre, HOMO-LUMO gaps.
        band_energy_ref_eV, band_energy_pred_eV: twice the sum of the occupied eigenvalues (the
            band-structure energy of the cell at Γ).
        dos_distance_meV: Wasserstein-1 distance between the two sets of eigenvalues within the
            window (the DOS as a distribution of states; 0 for equal spectra, the mean shift of the
            states for a rigid shift), in meV.
    """

    window_mae_meV: float
    window_max_meV: float
    occupied_mae_meV: float
    occupied_max_meV: float
    occupied_mean_error_meV: float
    n_window: int
    n_window_unpaired: int
    n_states_ref: int
    n_states_pred: int
    gap_centre_eV: float
    gap_ref_eV: float
    gap_pred_eV: float
    band_energy_ref_eV: float
    band_energy_pred_eV: float
    dos_distance_meV: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class WindowPairs:
    """The reference states in an energy window and their predicted partners.

    Attributes:
        ref: ``(P,)`` int64 indices of the paired reference states (ascending).
        pred: ``(P,)`` int64 indices of their predicted partners.
        n_ref: reference states in the window.
        n_pred: predicted states in the window.
        n_unpaired: reference states in the window whose partner index lies outside the
            predicted spectrum.
    """

    ref: np.ndarray
    pred: np.ndarray
    n_ref: int
    n_pred: int
    n_unpaired: int


def window_pairs(
    pred: np.ndarray, ref: np.ndarray, homo_pred: int, homo_ref: int, centre: float, window: float = DEFAULT_WINDOW
) -> WindowPairs:
    """Pair the reference states within ``centre ± window`` with the predicted states of the same
    offset from each side's HOMO: reference state ``homo_ref + d`` with predicted state ``homo_pred + d``.

    Args:
        pred, ref: sorted eigenvalues (eV) of each side, ``(n_pred,)`` and ``(n_ref,)``.
        homo_pred, homo_ref: index of each side's HOMO.
        centre, window: the window (eV).
    """
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    inside = np.flatnonzero(np.abs(ref - centre) <= window)
    partner = inside - homo_ref + homo_pred
    ok = (partner >= 0) & (partner < len(pred))
    return WindowPairs(
        ref=inside[ok], pred=partner[ok], n_ref=len(inside),
        n_pred=int((np.abs(pred - centre) <= window).sum()), n_unpaired=int((~ok).sum()),
    )


def dos_distance(pred: np.ndarray, ref: np.ndarray, centre: float, window: float = DEFAULT_WINDOW) -> float:
    """Wasserstein-1 distance (meV) between the states of two spectra within ``centre ± window``.

    The states of each side in the window are taken as a distribution (the DOS, each normalised
    to one): 0 for equal spectra, the shift for a rigid shift of every state; a different number
    of states in the window is not counted here (compare the counts themselves).

    Args:
        pred, ref: eigenvalues (eV), any shape (NaN ignored; e.g. ``(K, n)`` pooled over k-points).
        centre: window centre (eV), e.g. the reference gap centre.
        window: half-width (eV).

    Returns:
        The distance in meV; NaN when either side has no state in the window.
    """
    from scipy.stats import wasserstein_distance

    pred, ref = np.ravel(pred), np.ravel(ref)
    pred = pred[np.abs(pred - centre) <= window]
    ref = ref[np.abs(ref - centre) <= window]
    if not (len(pred) and len(ref)):
        return float("nan")
    return float(MEV_PER_EV * wasserstein_distance(pred, ref))


def spectrum_errors(pred: np.ndarray, ref: np.ndarray, n_occupied: int, window: float = DEFAULT_WINDOW) -> SpectrumErrors:
    """Errors of two sorted spectra (eV), paired from the HOMO (module docstring).

    Raises:
        InputError: a spectrum without a LUMO (``n_occupied`` not below both lengths).
    """
    if n_occupied < 1 or n_occupied >= min(len(pred), len(ref)):
        raise InputError(
            f"{n_occupied} occupied states need a HOMO and a LUMO: the spectra have {len(ref)} (reference) "
            f"and {len(pred)} (prediction) states"
        )
    centre = 0.5 * (ref[n_occupied - 1] + ref[n_occupied])
    pairs = window_pairs(pred, ref, n_occupied - 1, n_occupied - 1, centre, window)
    err_w = MEV_PER_EV * np.abs(pred[pairs.pred] - ref[pairs.ref])
    err_o = MEV_PER_EV * (pred[:n_occupied] - ref[:n_occupied])
    nan = float("nan")
    return SpectrumErrors(
        window_mae_meV=float(err_w.mean()) if len(err_w) else nan,
        window_max_meV=float(err_w.max()) if len(err_w) else nan,
        occupied_mae_meV=float(np.abs(err_o).mean()),
        occupied_max_meV=float(np.abs(err_o).max()),
        occupied_mean_error_meV=float(err_o.mean()),
        n_window=len(pairs.ref),
        n_window_unpaired=pairs.n_unpaired,
        n_states_ref=len(ref),
        n_states_pred=len(pred),
        gap_centre_eV=float(centre),
        gap_ref_eV=float(ref[n_occupied] - ref[n_occupied - 1]),
        gap_pred_eV=float(pred[n_occupied] - pred[n_occupied - 1]),
        band_energy_ref_eV=float(2 * ref[:n_occupied].sum()),
        band_energy_pred_eV=float(2 * pred[:n_occupied].sum()),
        dos_distance_meV=dos_distance(pred, ref, centre, window),
    )


@dataclass
class EigenMetrics:
    """Γ-point eigenvalue errors, raw and canonically orthogonalized.

    Attributes:
        raw: errors of the raw generalized problem (None when a predicted S is not positive definite).
        orthogonalized: errors after canonical orthogonalization (each side with its own S).
        threshold, window, n_occupied: the settings used.
        eigenvalues: the four sorted spectra (eV): ``ref_raw``, ``pred_raw``, ``ref_orthogonalized``,
            ``pred_orthogonalized`` (for plots; not in :meth:`to_dict`).
    """

    raw: SpectrumErrors | None
    orthogonalized: SpectrumErrors
    threshold: float
    window: float
    n_occupied: int
    eigenvalues: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "threshold": self.threshold,
            "window_eV": self.window,
            "n_occupied": self.n_occupied,
            "raw": None if self.raw is None else self.raw.to_dict(),
            "orthogonalized": self.orthogonalized.to_dict(),
        }


def eigenvalue_metrics(
    h_pred: Any,
    s_pred: Any,
    h_ref: Any,
    s_ref: Any,
    n_occupied: int,
    *,
    window: float = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
) -> EigenMetrics:
    """Γ-point eigenvalue errors of a predicted ``(H, S)`` against a reference (dense matrices).

    Args:
        h_pred, s_pred, h_ref, s_ref: ``(n, n)`` symmetric matrices (eV for H).
        n_occupied: occupied states (:func:`n_occupied_states`).
        window: half-width (eV) of the window around the reference gap centre.
        threshold: canonical-orthogonalization threshold on the eigenvalues of S.

    Returns:
        raw and orthogonalized errors; pairing as in the module docstring.
    """
    spectra = {
        "ref_orthogonalized": generalized_eigenvalues(h_ref, s_ref, threshold),
        "pred_orthogonalized": generalized_eigenvalues(h_pred, s_pred, threshold),
        "ref_raw": generalized_eigenvalues(h_ref, s_ref),
    }
    try:
        spectra["pred_raw"] = generalized_eigenvalues(h_pred, s_pred)
        raw = spectrum_errors(spectra["pred_raw"], spectra["ref_raw"], n_occupied, window)
    except InvalidMatrixError:
        raw = None
    ortho = spectrum_errors(spectra["pred_orthogonalized"], spectra["ref_orthogonalized"], n_occupied, window)
    return EigenMetrics(raw, ortho, threshold, window, n_occupied, spectra)


def compare_spectra(
    prediction: HSData,
    reference: HSData,
    *,
    n_occupied: int | None = None,
    window: float = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
    spin: int = 0,
) -> EigenMetrics:
    """:func:`eigenvalue_metrics` of two structures (Γ matrices built from their blocks; the
    prediction's ``h_unshifted`` and ``s`` on its own pairs, the reference's unshifted H)."""
    check_same_structure(prediction, reference)
    if n_occupied is None:
        n_occupied = n_occupied_states(reference.basis, reference.species)
    pred_layout, ref_layout = GammaLayout.from_hsdata(prediction), GammaLayout.from_hsdata(reference)
    return eigenvalue_metrics(
        pred_layout.dense(prediction.h_unshifted[spin]),
        pred_layout.dense(prediction.s),
        ref_layout.dense(reference.h_unshifted[spin]),
        ref_layout.dense(reference.s),
        n_occupied,
        window=window,
        threshold=threshold,
    )
