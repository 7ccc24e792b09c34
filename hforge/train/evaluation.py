"""A trained model against SIESTA: metrics per structure and per size group.

:func:`predict_blocks` runs a model on one structure and returns its prediction as an
:class:`~hforge.io.HSData` on the model's pairs (onsite + canonical half; ``h`` the unshifted H,
E_F = 0).  :func:`evaluate_structures` compares the predictions of many structures with their
references: per structure the block metrics of :mod:`hforge.train.metrics` (H MAE in meV: all,
onsite, hopping, per species pair and block type, raw and shift-removed; S MAE) and the Γ
eigenvalue metrics of :mod:`hforge.train.spectral` (window around the gap centre and occupied
states, raw and canonically orthogonalized); per size group (structures with the same number of
atoms) the pooled block metrics and the mean eigenvalue errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError
from hforge.io import HSData
from hforge.io.siesta import hs_label
from hforge.models import HSModel
from hforge.train.metrics import BlockMetrics, align_reference, compare_blocks
from hforge.train.spectral import DEFAULT_THRESHOLD, DEFAULT_WINDOW, compare_spectra, n_occupied_states

__all__ = ["Evaluation", "check_data_basis", "evaluate_structures", "nan_mean", "predict_blocks", "summary_row", "with_valence"]

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
        raise BasisMismatchError(f"the data holds species {unknown} that the model does not know (it knows {model_basis.symbols})", path=source)
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


def _eigen_summary(eig: dict[str, Any] | None) -> dict[str, float]:
    nan = float("nan")
    if eig is None:
        return {}
    raw, ortho = eig.get("raw"), eig["orthogonalized"]
    out = {
        "eig_window_raw_meV": raw["window_mae_meV"] if raw else nan,
        "eig_window_ortho_meV": ortho["window_mae_meV"],
        "eig_occupied_raw_meV": raw["occupied_mae_meV"] if raw else nan,
        "eig_occupied_ortho_meV": ortho["occupied_mae_meV"],
    }
    ref_s = eig.get("with_reference_s")
    if ref_s is not None:
        out["eig_window_refS_meV"] = ref_s["orthogonalized"]["window_mae_meV"]
        out["eig_occupied_refS_meV"] = ref_s["orthogonalized"]["occupied_mae_meV"]
    return out


def summary_row(blocks: dict[str, Any], eig: dict[str, Any] | None = None) -> dict[str, float]:
    """The headline numbers of one structure or group: H MAE (meV) all/onsite/hopping raw and
    shift-removed, S MAE, and the Γ eigenvalue MAEs (meV)."""
    h, hs, s = blocks["h_mae_meV"], blocks["h_mae_shifted_meV"], blocks["s_mae"]
    row = {
        "h_mae_meV": h["all"], "h_onsite_meV": h["onsite"], "h_hopping_meV": h["hopping"],
        "h_mae_shifted_meV": hs["all"] if hs else float("nan"),
        "s_mae": s["all"] if s else float("nan"),
    }
    row.update(_eigen_summary(eig))
    return row


@dataclass
class Evaluation:
    """Metrics of a model on several structures.

    Attributes:
        structures: per structure ``{"name", "n_atoms", "summary", "blocks", "eigenvalues"}``.
        groups: per size (``"64"``) ``{"n_structures", "summary", "blocks"}`` (pooled MAEs; the
            eigenvalue MAEs are means over the group's structures).
        settings: window, threshold.
    """

    structures: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "structures": self.structures, "groups": self.groups}


def evaluate_structures(
    model: HSModel,
    references: Iterable[HSData],
    *,
    window: float = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
    eigenvalues: bool = True,
    valence: Mapping[str, float] | None = None,
    on_structure: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Metrics of ``model`` on every reference structure, and per size group.

    Args:
        model: the model (evaluated in its dtype, no gradients).
        references: SIESTA structures (:class:`HSData`; the model's basis).
        window, threshold: eigenvalue window (eV) and canonical-orthogonalization threshold.
        eigenvalues: compute the Γ eigenvalue metrics (skipped above 6000 orbitals, and where the
            number of occupied states is unknown: no valence charges in either basis): with the
            predicted H and S, and (``eigenvalues["with_reference_s"]``, summary keys ``*_refS_*``)
            with the predicted H and the reference S, the error that H alone causes.
        valence: Z_valence per species for bases that lack it.
        on_structure: called with each structure's entry (progress).

    Raises:
        BasisMismatchError: a reference whose species or orbitals the model does not share.
    """
    model.eval()
    result = Evaluation(settings={"window_eV": window, "threshold": threshold})
    pooled: dict[int, list[BlockMetrics]] = {}
    eig_rows: dict[int, list[dict[str, float]]] = {}
    valence = dict(valence or {})
    for sp in model.basis:
        if sp.valence_charge is not None:
            valence.setdefault(sp.symbol, sp.valence_charge)
    for reference in references:
        check_data_basis(model.basis, reference.basis, source=reference.source)
        prediction = predict_blocks(model, reference)
        blocks = compare_blocks(prediction, reference)
        eig = None
        if eigenvalues and reference.n_orbitals <= MAX_EIGEN_ORBITALS:
            basis = with_valence(reference.basis, valence)
            if not np.isnan(basis.valence_charges[np.unique(reference.species)]).any():
                n_occupied = n_occupied_states(basis, reference.species)
                eig = compare_spectra(prediction, reference, n_occupied=n_occupied, window=window, threshold=threshold).to_dict()
                # the predicted H with the reference S: the eigenvalue error that H alone causes
                with_ref_s = replace(prediction, s=align_reference(reference, prediction.edge_index, prediction.cell_shift).s)
                eig["with_reference_s"] = compare_spectra(
                    with_ref_s, reference, n_occupied=n_occupied, window=window, threshold=threshold
                ).to_dict()
        name = _name(reference)
        entry = {
            "name": name, "n_atoms": reference.n_atoms, "n_orbitals": reference.n_orbitals,
            "summary": summary_row(blocks.to_dict(), eig), "blocks": blocks.to_dict(), "eigenvalues": eig,
        }
        result.structures.append(entry)
        pooled.setdefault(reference.n_atoms, []).append(blocks)
        eig_rows.setdefault(reference.n_atoms, []).append(_eigen_summary(eig))
        if on_structure is not None:
            on_structure(entry)
    for n_atoms in sorted(pooled):
        blocks = BlockMetrics.combine(pooled[n_atoms]).to_dict()
        summary = summary_row(blocks)
        keys = sorted({k for row in eig_rows[n_atoms] for k in row})
        summary.update({k: nan_mean([row.get(k, np.nan) for row in eig_rows[n_atoms]]) for k in keys})
        result.groups[str(n_atoms)] = {"n_structures": len(pooled[n_atoms]), "summary": summary, "blocks": blocks}
    return result


def _name(data: HSData) -> str:
    return hs_label(data.source) if data.source else "structure"  # abn_8_0 also for abn_8_0.TSHS.xz
