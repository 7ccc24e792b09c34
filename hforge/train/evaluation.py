"""A trained model against SIESTA: metrics per structure and per size group.

:func:`predict_blocks` runs a model on one structure and returns its prediction as an
:class:`~hforge.io.HSData` on the model's pairs (onsite + canonical half; ``h`` the unshifted H,
E_F = 0).  :func:`evaluate_predictions` (any predictor) and :func:`evaluate_structures` (an HForge
model) compare the predictions of many structures with their references.  Per structure:

- the headline, what a user of the predicted (H, S) sees (:mod:`hforge.metrics.full_spectrum`): the
  full-S spectrum at Γ (or given k-points), the raw generalized problem with each side's own S
  after removing the best uniform ``c S``: ghost states outside DFT's spectrum, the ±window MAE
  paired from the HOMO and the states of each side in the window, the gap, band-energy and DOS
  errors; and the per-atom onsite-energy errors (:func:`~hforge.metrics.onsite_energy_errors`,
  RMSE over atoms: held-out over training cells is the memorisation ratio);
- the block metrics of :mod:`hforge.metrics.blocks` (H MAE in meV: all, onsite, hopping, per species
  pair and block type, raw and shift-removed; S MAE);
- the secondary, thresholded view of :mod:`hforge.metrics.spectra`: per canonical-orthogonalization
  threshold the spectra with each side's S and with the reference S for both (H's errors alone),
  each key naming its threshold.

Per size group (structures with the same number of atoms): the pooled block metrics and the mean of
every other summary value over the group's structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, InvalidMatrixError
from hforge.io import HSData
from hforge.io.siesta import hs_label
from hforge.metrics import (
    DEFAULT_GHOST_MARGIN,
    DEFAULT_WINDOW,
    EVALUATION_THRESHOLDS,
    BlockMetrics,
    align_reference,
    best_shift,
    compare_blocks,
    compare_full_spectra,
    compare_spectra,
    n_occupied_states,
    onsite_energy_errors,
)
from hforge.models import HSModel

__all__ = [
    "Evaluation",
    "check_data_basis",
    "evaluate_predictions",
    "evaluate_structures",
    "full_spectrum_summary",
    "nan_mean",
    "predict_blocks",
    "spectra_of",
    "summary_row",
    "threshold_key",
    "with_valence",
]

#: Eigenvalue metrics (dense Γ problem) are skipped above this many orbitals.
MAX_EIGEN_ORBITALS = 6000


def with_valence(basis: BasisSet, valence: Mapping[str, float]) -> BasisSet:
    """``basis`` with the valence charges of ``valence`` filled in where the basis has none."""
    if not valence:
        return basis
    return BasisSet(tuple(
        replace(sp, valence_charge=valence[sp.symbol]) if sp.valence_charge is None and sp.symbol in valence else sp
        for sp in basis
    ))


def check_data_basis(model_basis: BasisSet, data_basis: BasisSet, *, source: Any = None) -> None:
    """Raise :class:`BasisMismatchError` when a species of the data has other orbitals than the model's,
    or the data holds species the model does not know."""
    unknown = [s for s in data_basis.symbols if s not in model_basis]
    if unknown:
        raise BasisMismatchError(
            f"the data holds species {unknown} that the model does not know (it knows {model_basis.symbols})", path=source
        )
    differ = [sp.symbol for sp in data_basis if not sp.same_orbitals(model_basis[sp.symbol])]
    if differ:
        raise BasisMismatchError(f"species {differ} have other orbitals in the data than in the model's basis", path=source)


def predict_blocks(model: HSModel, data: HSData) -> HSData:
    """The model's prediction for ``data``'s structure, on the model's pairs (float64 ``HSData``)."""
    graph = model.graph_builder()(data, targets=False)
    with torch.no_grad():
        out = model(graph)
    edge, shift, ptr = graph.structure_pairs(0)
    species = np.array([data.basis.index(s) for s in (model.basis.symbols[k] for k in graph.species.numpy())])
    return HSData(
        cell=data.cell, positions=data.positions, species=species, basis=data.basis, edge_index=edge,
        cell_shift=shift, block_ptr=ptr, h=out.h.double().cpu().numpy()[None], s=out.s.double().cpu().numpy(),
        mask=np.ones(int(ptr[-1]), bool), pbc=data.pbc, nsc=data.nsc, source=data.source,
    )


def nan_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def threshold_key(threshold: float) -> str:
    """How a threshold names its keys: ``1e-2`` -> ``"1e-2"``."""
    mantissa, exponent = f"{threshold:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def full_spectrum_summary(full: dict[str, Any] | None, onsite: dict[str, Any] | None = None) -> dict[str, float]:
    """The headline keys of one structure (the full-S spectrum after removing the best ``c S``, and
    the per-atom onsite energies): ``ghosts_low`` / ``ghosts_high`` (predicted states more than the
    margin below / above DFT's spectrum), ``eig_window_fullS_meV`` (window MAE, paired from the
    HOMO), ``window_states_pred`` / ``window_states_ref`` (states in the window), ``gap_error_fullS_meV``,
    ``band_energy_error_fullS_meV_per_atom`` (both absolute), ``dos_distance_fullS_meV``,
    ``onsite_atom_rmse_meV`` and ``onsite_atom_mae_meV`` (over atoms).  NaN where not computed
    (``full`` None: too large, no valence charges, or a predicted S that is not positive definite)."""
    nan = float("nan")
    full = full or {}
    out = {
        "ghosts_low": full.get("ghosts_low", nan),
        "ghosts_high": full.get("ghosts_high", nan),
        "eig_window_fullS_meV": full.get("window_mae_meV", nan),
        "window_states_pred": full.get("n_window_pred", nan),
        "window_states_ref": full.get("n_window_ref", nan),
        "gap_error_fullS_meV": abs(full.get("gap_error_meV", nan)),
        "band_energy_error_fullS_meV_per_atom": abs(full.get("band_energy_error_meV_per_atom", nan)),
        "dos_distance_fullS_meV": full.get("dos_distance_meV", nan),
    }
    if onsite is not None:
        out.update({"onsite_atom_rmse_meV": onsite["rmse_meV"], "onsite_atom_mae_meV": onsite["mae_meV"]})
    return out


def _eigen_summary(eig: dict[str, Any] | None) -> dict[str, float]:
    """Keys of one structure's thresholded eigenvalue metrics (the secondary view), each naming its
    canonical-orthogonalization threshold ``t``: ``eig_window_refS_{t}_meV`` / ``eig_occupied_refS_{t}_meV``
    (the predicted H in the reference S's canonical basis: H's errors alone), ``eig_window_ortho_{t}_meV``
    (each side with its own S), ``gap_error_refS_{t}_meV``, ``band_energy_error_refS_{t}_meV_per_atom``
    and ``dos_distance_refS_{t}_meV``."""
    if eig is None:
        return {}
    out = {}
    n_atoms = eig["n_atoms"]
    for threshold, metrics in eig["thresholds"].items():
        t = threshold_key(float(threshold))
        own, ref_s = metrics["orthogonalized"], metrics["with_reference_s"]
        out[f"eig_window_ortho_{t}_meV"] = own["window_mae_meV"]
        out[f"eig_window_refS_{t}_meV"] = ref_s["window_mae_meV"]
        out[f"eig_occupied_refS_{t}_meV"] = ref_s["occupied_mae_meV"]
        out[f"gap_error_refS_{t}_meV"] = 1e3 * abs(ref_s["gap_pred_eV"] - ref_s["gap_ref_eV"])
        out[f"band_energy_error_refS_{t}_meV_per_atom"] = (
            1e3 * abs(ref_s["band_energy_pred_eV"] - ref_s["band_energy_ref_eV"]) / n_atoms
        )
        out[f"dos_distance_refS_{t}_meV"] = ref_s["dos_distance_meV"]
    return out


def summary_row(
    blocks: dict[str, Any],
    eig: dict[str, Any] | None = None,
    full: dict[str, Any] | None = None,
    onsite: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The numbers of one structure or group: the headline (:func:`full_spectrum_summary`, when
    ``full`` or ``onsite`` is given), H MAE (meV) all/onsite/hopping raw and shift-removed, S MAE, and
    the thresholded eigenvalue metrics (:func:`_eigen_summary`)."""
    h, hs, s = blocks["h_mae_meV"], blocks["h_mae_shifted_meV"], blocks["s_mae"]
    row = full_spectrum_summary(full, onsite) if (full is not None or onsite is not None) else {}
    row.update({
        "h_mae_meV": h["all"], "h_onsite_meV": h["onsite"], "h_hopping_meV": h["hopping"],
        "h_mae_shifted_meV": hs["all"] if hs else float("nan"),
        "h_onsite_shifted_meV": hs["onsite"] if hs else float("nan"),
        "s_mae": s["all"] if s else float("nan"),
    })
    row.update(_eigen_summary(eig))
    return row


@dataclass
class Evaluation:
    """Metrics of a model on several structures.

    Attributes:
        structures: per structure ``{"name", "n_atoms", "n_orbitals", "summary", "full_spectrum",
            "onsite_energies", "blocks", "eigenvalues"}`` (``full_spectrum``: the
            :meth:`~hforge.metrics.FullSpectrumMetrics.to_dict` of the headline, or None with the
            reason in ``full_spectrum_skipped``).
        groups: per size (``"64"``) ``{"n_structures", "summary", "blocks"}`` (pooled block MAEs;
            every other summary value is the mean over the group's structures).
        settings: window, ghost margin, k-points, thresholds.
    """

    structures: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "structures": self.structures, "groups": self.groups}


def spectra_of(
    prediction: HSData, reference: HSData, n_occupied: int, *, window: float, thresholds: Sequence[float]
) -> dict[str, Any]:
    """The thresholded eigenvalue metrics of one structure (the secondary view; the raw generalized
    problem is the full-S headline): per threshold the canonically orthogonalized spectra with each
    side's own S and with the reference S for both, after removing the best uniform c·S (as the
    headline: SIESTA's energy zero is arbitrary)."""
    ref = align_reference(reference, prediction.edge_index, prediction.cell_shift)
    c = best_shift(prediction.h_unshifted[0] - ref.h, ref.s)
    prediction = replace(prediction, h=prediction.h - c * ref.s[None, :])
    with_ref_s = replace(prediction, s=ref.s)
    per_threshold = {}
    for threshold in thresholds:
        own = compare_spectra(prediction, reference, n_occupied=n_occupied, window=window, threshold=threshold).to_dict()
        per_threshold[str(threshold)] = {
            "orthogonalized": own["orthogonalized"],
            "with_reference_s": compare_spectra(
                with_ref_s, reference, n_occupied=n_occupied, window=window, threshold=threshold
            ).to_dict()["orthogonalized"],
        }
    return {"window_eV": window, "n_occupied": n_occupied, "n_atoms": reference.n_atoms, "thresholds": per_threshold}


def evaluate_predictions(
    predict: Callable[[HSData], HSData],
    references: Iterable[HSData],
    *,
    window: float = DEFAULT_WINDOW,
    thresholds: Sequence[float] = EVALUATION_THRESHOLDS,
    kpoints: Any = None,
    eigenvalues: bool = True,
    valence: Mapping[str, float] | None = None,
    on_structure: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Metrics of the predictions ``predict(reference)`` (an :class:`HSData` on its own pairs: H
    unshifted, E_F = 0, and S) against every reference, and per size group.

    Args:
        predict: one structure's prediction (an HForge model: :func:`predict_blocks`; graph2mat:
            :func:`hforge.train.graph2mat.predict_graph2mat`).
        references: SIESTA structures (:class:`HSData`).
        window: half-width (eV) of the eigenvalue window around the reference gap centre.
        thresholds: canonical-orthogonalization thresholds of the secondary eigenvalue metrics (each
            key names its threshold).
        kpoints: ``(K, 3)`` reduced k-points of the full-S spectra; default Γ.  Each is a dense
            eigensolve of both sides: a few, for small cells.
        eigenvalues: compute the eigenvalue metrics, full-S and thresholded (skipped above 6000
            orbitals, and where the number of occupied states is unknown: no valence charges in
            the basis).
        valence: Z_valence per species for bases that lack it.
        on_structure: called with each structure's entry (progress).
    """
    kpts = np.zeros((1, 3)) if kpoints is None else np.atleast_2d(np.asarray(kpoints, dtype=np.float64))
    result = Evaluation(settings={"window_eV": window, "ghost_margin_eV": DEFAULT_GHOST_MARGIN,
                                  "kpoints": kpts.tolist(), "thresholds": list(thresholds)})
    pooled: dict[int, list[BlockMetrics]] = {}
    rows: dict[int, list[dict[str, float]]] = {}
    for reference in references:
        prediction = predict(reference)
        blocks = compare_blocks(prediction, reference)
        onsite = onsite_energy_errors(prediction, reference).to_dict()
        eig = full = None
        skipped = "eigenvalues not asked for"
        if eigenvalues and reference.n_orbitals > MAX_EIGEN_ORBITALS:
            skipped = f"more than {MAX_EIGEN_ORBITALS} orbitals"
        elif eigenvalues:
            basis = with_valence(reference.basis, dict(valence or {}))
            skipped = "no valence charges in the basis"
            if not np.isnan(basis.valence_charges[np.unique(reference.species)]).any():
                n_occupied = n_occupied_states(basis, reference.species)
                try:
                    full = compare_full_spectra(prediction, reference, n_occupied=n_occupied, kpoints=kpts,
                                                window=window).to_dict()
                except InvalidMatrixError as error:
                    skipped = error.message
                eig = spectra_of(prediction, reference, n_occupied, window=window, thresholds=thresholds)
        entry = {
            "name": _name(reference), "n_atoms": reference.n_atoms, "n_orbitals": reference.n_orbitals,
            "summary": summary_row(blocks.to_dict(), eig, full, onsite), "full_spectrum": full,
            "onsite_energies": onsite, "blocks": blocks.to_dict(), "eigenvalues": eig,
        }
        if full is None:
            entry["full_spectrum_skipped"] = skipped
        result.structures.append(entry)
        pooled.setdefault(reference.n_atoms, []).append(blocks)
        rows.setdefault(reference.n_atoms, []).append(entry["summary"])
        if on_structure is not None:
            on_structure(entry)
    for n_atoms in sorted(pooled):
        blocks = BlockMetrics.combine(pooled[n_atoms]).to_dict()
        keys = dict.fromkeys(k for row in rows[n_atoms] for k in row)
        summary = {k: nan_mean([row.get(k, np.nan) for row in rows[n_atoms]]) for k in keys}
        summary.update(summary_row(blocks))  # the block MAEs pooled over the group's entries
        result.groups[str(n_atoms)] = {"n_structures": len(pooled[n_atoms]), "summary": summary, "blocks": blocks}
    return result


def evaluate_structures(
    model: HSModel,
    references: Iterable[HSData],
    *,
    valence: Mapping[str, float] | None = None,
    **options: Any,
) -> Evaluation:
    """:func:`evaluate_predictions` of an HForge model (evaluated in its dtype, no gradients); the
    valence charges of the model's basis count where the references' lack them.

    Raises:
        BasisMismatchError: a reference whose species or orbitals the model does not share.
    """
    model.eval()
    valence = dict(valence or {})
    for sp in model.basis:
        if sp.valence_charge is not None:
            valence.setdefault(sp.symbol, sp.valence_charge)

    def predict(reference: HSData) -> HSData:
        check_data_basis(model.basis, reference.basis, source=reference.source)
        return predict_blocks(model, reference)

    return evaluate_predictions(predict, references, valence=valence, **options)


def _name(data: HSData) -> str:
    return hs_label(data.source) if data.source else "structure"  # abn_8_0 also for abn_8_0.TSHS.xz
