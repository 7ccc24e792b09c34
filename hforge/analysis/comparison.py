"""One structure's comparison of a prediction with SIESTA: numbers and figures, for
``hforge evaluate`` and ``hforge predict``.

:func:`spectrum_report` returns the block metrics of :mod:`hforge.metrics.blocks` (H MAE in meV,
raw and shift-removed, per block type; S MAE), the Γ eigenvalue metrics of
:mod:`hforge.metrics.spectra` (raw and canonically orthogonalized), and the figures: a parity plot
of the H entries, the DFT | ML | difference heatmap of H(Γ), and the eigenvalue comparison.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hforge.analysis.plots import eigenvalue_comparison_plot, hamiltonian_heatmap, parity_plot, save_figure
from hforge.errors import InputError
from hforge.files import write_json
from hforge.io import HSData
from hforge.metrics import (
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    BlockTypes,
    GammaLayout,
    align_reference,
    block_metrics,
    eigenvalue_metrics,
    n_occupied_states,
)

__all__ = ["SpectrumReport", "spectrum_report", "as_hsdata", "EIGEN_MAX_ORBITALS"]

#: Γ eigenvalue metrics (dense) are computed up to this many orbitals.
EIGEN_MAX_ORBITALS = 6000


@dataclass
class SpectrumReport:
    """Metrics (JSON-ready dict) and figures (name -> matplotlib Figure) of one structure.

    Attributes:
        metrics: ``{"name", "n_atoms", "n_orbitals", "blocks": ..., "eigenvalues": ... or None}``.
        figures: ``parity``, ``heatmap``, ``eigenvalues`` (when computed).
        paths: files written (figures and ``metrics.json``) when an ``out_dir`` was given.
    """

    metrics: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict, repr=False)
    paths: dict[str, Path] = field(default_factory=dict)


def as_hsdata(prediction: Any, reference: HSData) -> HSData:
    """A prediction as :class:`HSData`: itself, or a non-orthogonal :class:`sisl.Hamiltonian` on the
    reference's atoms (its H taken as the unshifted H, E_F = 0)."""
    if isinstance(prediction, HSData):
        return prediction
    if hasattr(prediction, "Sk") and hasattr(prediction, "geometry"):
        return HSData.from_sisl(prediction, reference.basis, species=reference.species)
    raise InputError(f"a prediction must be an HSData or a sisl.Hamiltonian, not {type(prediction).__name__}")


def spectrum_report(
    prediction: Any,
    reference: HSData,
    *,
    name: str | None = None,
    n_occupied: int | None = None,
    window: float = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
    spin: int = 0,
    eigenvalues: bool | None = None,
    figures: bool = True,
    out_dir: str | os.PathLike | None = None,
) -> SpectrumReport:
    """Compare a predicted structure with its SIESTA reference.

    Args:
        prediction: :class:`HSData` (``h`` = unshifted H, E_F = 0; any subset of pairs) or a
            non-orthogonal :class:`sisl.Hamiltonian` on the same atoms.
        reference: the SIESTA structure.
        name: label in the metrics and file names (default: the reference file's stem).
        n_occupied: occupied states (default from the basis' valence charges).
        window, threshold: eigenvalue window (eV) and canonical-orthogonalization threshold.
        spin: spin channel.
        eigenvalues: compute the Γ eigenvalue metrics; default up to :data:`EIGEN_MAX_ORBITALS`.
        figures: build the figures.
        out_dir: write ``<name>_parity.png``, ``<name>_heatmap.png``, ``<name>_eigenvalues.png``
            and ``<name>_metrics.json`` there.
    """
    pred = as_hsdata(prediction, reference)
    name = name or (Path(reference.source).stem if reference.source else "structure")
    ref = align_reference(reference, pred.edge_index, pred.cell_shift, pred.block_ptr, spin=spin)
    types = BlockTypes.from_hsdata(pred)
    h_pred = pred.h_unshifted[spin]
    blocks = block_metrics(h_pred, ref.h, types, s_ref=ref.s, s_pred=pred.s)
    metrics: dict[str, Any] = {
        "name": name,
        "n_atoms": reference.n_atoms,
        "n_orbitals": reference.n_orbitals,
        "blocks": blocks.to_dict(),
        "eigenvalues": None,
    }
    if eigenvalues is None:
        eigenvalues = reference.n_orbitals <= EIGEN_MAX_ORBITALS
    # Γ matrices: the prediction on its pairs, the reference on all of the file's pairs
    layout, ref_layout = GammaLayout.from_hsdata(pred), GammaLayout.from_hsdata(reference)
    h_gamma = (layout.dense(h_pred), ref_layout.dense(reference.h_unshifted[spin])) if (eigenvalues or figures) else None
    eig = None
    if eigenvalues:
        if n_occupied is None:
            n_occupied = n_occupied_states(reference.basis, reference.species)
        eig = eigenvalue_metrics(
            h_gamma[0], layout.dense(pred.s), h_gamma[1], ref_layout.dense(reference.s), n_occupied,
            window=window, threshold=threshold,
        )
        metrics["eigenvalues"] = eig.to_dict()
    report = SpectrumReport(metrics)
    if figures:
        onsite = types.onsite
        report.figures["parity"] = parity_plot(h_pred, ref.h, groups={"onsite": onsite, "hopping": ~onsite})
        report.figures["heatmap"] = hamiltonian_heatmap(*h_gamma)
        if eig is not None:
            report.figures["eigenvalues"] = eigenvalue_comparison_plot(eig.eigenvalues, n_occupied=n_occupied, window=window)
    if out_dir is not None:
        out = Path(out_dir)
        for key, fig in report.figures.items():
            report.paths[key] = save_figure(fig, out / f"{name}_{key}.png")
        out.mkdir(parents=True, exist_ok=True)
        report.paths["metrics"] = write_json(out / f"{name}_metrics.json", metrics)
    return report
