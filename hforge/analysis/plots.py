"""Figures of spectra and of predicted vs DFT matrices (matplotlib, no display).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state,
no window; rendered by the Agg canvas), and takes ``save=`` to also write it (``.png``, ``.pdf``,
``.svg``; written by :func:`hforge.files.atomic_write`, so a killed run leaves no half figure).
Energies in eV, H in eV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import SymLogNorm, TwoSlopeNorm
from matplotlib.figure import Figure

from hforge.errors import InputError
from hforge.files import atomic_write

__all__ = [
    "new_figure",
    "save_figure",
    "plot_bands",
    "plot_dos",
    "plot_levels",
    "parity_plot",
    "hamiltonian_heatmap",
    "eigenvalue_comparison_plot",
]


def new_figure(
    ncols: int = 1, *, nrows: int = 1, size: tuple[float, float] = (5.0, 4.0), **subplot_kw: Any
) -> tuple[Figure, Any]:
    """A Figure on the Agg canvas and its axes (an array when ``ncols > 1`` or ``nrows > 1``), each ``size`` inches;
    ``subplot_kw`` go to :meth:`~matplotlib.figure.Figure.subplots` (e.g. ``sharex=True``)."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **subplot_kw)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` atomically (its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, None) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        save_figure(fig, save)
    return fig


def plot_bands(
    bands: Any,
    *,
    energy_reference: float = 0.0,
    energy_range: tuple[float, float] | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Band structure of a :class:`~hforge.analysis.spectrum.BandStructure`."""
    fig, ax = new_figure(size=(5.0, 4.5))
    ax.plot(bands.x, bands.eigenvalues - energy_reference, color="C0", lw=1.0)
    for xs in bands.special_x:
        ax.axvline(xs, color="0.7", lw=0.6)
    ax.set_xticks(bands.special_x, ["Γ" if lab == "G" else lab for lab in bands.labels])
    ax.set_xlim(bands.x[0], bands.x[-1])
    if energy_range is not None:
        ax.set_ylim(*energy_range)
    ref = "" if energy_reference == 0 else f" - {energy_reference:.3f}"
    title = "raw" if bands.threshold is None else f"canonical orthogonalization, threshold {bands.threshold:g}"
    ax.set_ylabel(f"E{ref} (eV)")
    ax.set_title(f"bands ({title})", fontsize=9)
    return _finish(fig, save)


def plot_dos(
    curves: Mapping[str, Any],
    *,
    energy_reference: float = 0.0,
    energy_range: tuple[float, float] | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """One or several :class:`~hforge.analysis.spectrum.DOS` (label -> DOS) on one axis."""
    fig, ax = new_figure(size=(6.0, 3.5))
    for label, dos in curves.items():
        extra = "" if dos.threshold is None else f", thr {dos.threshold:g}"
        ax.plot(dos.energies - energy_reference, dos.dos, lw=1.0, label=f"{label}{extra}")
    if energy_range is not None:
        ax.set_xlim(*energy_range)
    ax.set_xlabel("E (eV)" if energy_reference == 0 else f"E - {energy_reference:.3f} (eV)")
    ax.set_ylabel("DOS (states/eV/cell)")
    ax.legend(fontsize=8)
    return _finish(fig, save)


def plot_levels(
    levels: Mapping[str, np.ndarray],
    *,
    window: tuple[float, float] | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Eigenvalues as horizontal ticks, one column per label (e.g. a shift-invert window)."""
    fig, ax = new_figure(size=(4.0, 4.5))
    for col, values in enumerate(levels.values()):
        ax.hlines(np.asarray(values), col - 0.35, col + 0.35, color=f"C{col}", lw=1.0)
    ax.set_xticks(range(len(levels)), list(levels))
    if window is not None:
        ax.set_ylim(*window)
    ax.set_ylabel("E (eV)")
    return _finish(fig, save)


def parity_plot(
    predicted: np.ndarray,
    reference: np.ndarray,
    *,
    groups: Mapping[str, np.ndarray] | None = None,
    max_points: int = 200_000,
    unit: str = "eV",
    title: str = "H",
    save: str | os.PathLike | None = None,
    seed: int = 0,
) -> Figure:
    """Predicted against reference entries (e.g. H in eV), with the MAE in the legend.

    Args:
        predicted, reference: ``(n_values,)`` on one layout.
        groups: label -> bool mask (e.g. ``{"onsite": ..., "hopping": ...}``); default one group.
        max_points: random subsample plotted per group (all entries count in the MAE).
    """
    predicted, reference = np.asarray(predicted, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if predicted.shape != reference.shape:
        raise InputError(f"parity plot of arrays of shapes {predicted.shape} and {reference.shape}")
    groups = {"all": np.ones(predicted.shape, bool)} if groups is None else groups
    rng = np.random.default_rng(seed)
    fig, ax = new_figure(size=(4.5, 4.5))
    lo = float(min(predicted.min(initial=0), reference.min(initial=0)))
    hi = float(max(predicted.max(initial=0), reference.max(initial=0)))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
    for col, (label, mask) in enumerate(groups.items()):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        mae = np.abs(predicted[idx] - reference[idx]).mean()
        if len(idx) > max_points:
            idx = rng.choice(idx, max_points, replace=False)
        legend = f"{label}: MAE {1e3 * mae:.3g} m{unit}" if unit == "eV" else f"{label}: MAE {mae:.3g}"
        ax.scatter(reference[idx], predicted[idx], s=2, alpha=0.5, color=f"C{col}", rasterized=True, label=legend)
    ax.set_xlabel(f"DFT {title} ({unit})")
    ax.set_ylabel(f"ML {title} ({unit})")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=4)
    return _finish(fig, save)


def hamiltonian_heatmap(
    predicted: np.ndarray,
    reference: np.ndarray,
    *,
    max_orbitals: int = 400,
    linthresh: float = 1e-2,
    save: str | os.PathLike | None = None,
) -> Figure:
    """DFT | ML | ML - DFT heatmaps of a dense matrix (e.g. H(Γ) in eV), first ``max_orbitals``.

    DFT and ML share a symmetric-log colour scale (linear within ±``linthresh`` eV); the
    difference has its own linear scale in meV.
    """
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape or predicted.ndim != 2:
        raise InputError(f"heatmap of matrices of shapes {predicted.shape} and {reference.shape}")
    n = min(max_orbitals, reference.shape[0])
    p, r = predicted[:n, :n], reference[:n, :n]
    d = 1e3 * (p - r)
    fig, axes = new_figure(3, size=(4.2, 3.8))
    vmax = float(max(np.abs(r).max(), np.abs(p).max(), linthresh))
    norm = SymLogNorm(linthresh=linthresh, vmin=-vmax, vmax=vmax)
    for ax, m, label in ((axes[0], r, "DFT"), (axes[1], p, "ML")):
        im = ax.imshow(m, cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"{label} H (eV)")
    fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8, label="eV")
    dmax = float(max(np.abs(d).max(), 1e-6))
    im = axes[2].imshow(d, cmap="PuOr_r", norm=TwoSlopeNorm(0.0, -dmax, dmax), interpolation="nearest")
    axes[2].set_title(f"ML - DFT (meV), MAE {np.abs(d).mean():.3g}")
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="meV")
    for ax in axes:
        ax.set_xlabel("orbital")
    axes[0].set_ylabel("orbital")
    return _finish(fig, save)


def eigenvalue_comparison_plot(
    eigenvalues: Mapping[str, np.ndarray],
    *,
    n_occupied: int,
    window: float = 2.0,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Predicted against reference Γ eigenvalues near the gap, raw and canonically orthogonalized.

    Args:
        eigenvalues: :attr:`hforge.metrics.EigenMetrics.eigenvalues` (``ref_raw``,
            ``pred_raw``, ``ref_orthogonalized``, ``pred_orthogonalized``; missing ones skipped).
        n_occupied: occupied states (the gap lies between state n_occupied - 1 and n_occupied).
        window: half-width (eV) of the plotted window around each reference gap centre.
    """
    fig, axes = new_figure(2, size=(4.5, 4.5))
    for ax, mode in zip(axes, ("raw", "orthogonalized")):
        ref, pred = eigenvalues.get(f"ref_{mode}"), eigenvalues.get(f"pred_{mode}")
        if ref is None or pred is None:
            ax.set_axis_off()
            continue
        centre = 0.5 * (ref[n_occupied - 1] + ref[n_occupied])
        m = min(len(ref), len(pred))
        idx = np.flatnonzero(np.abs(ref[:m] - centre) <= 3 * window)
        ax.plot(ref[idx] - centre, pred[idx] - centre, "o", ms=3, label="states")
        lim = (-3 * window, 3 * window)
        ax.plot(lim, lim, color="0.5", lw=0.8)
        ax.axvspan(-window, window, color="C1", alpha=0.1, label=f"±{window:g} eV window")
        err = 1e3 * np.abs(pred[idx] - ref[idx])
        inside = np.abs(ref[idx] - centre) <= window
        mae = err[inside].mean() if inside.any() else float("nan")
        ax.set_title(f"{mode}: window MAE {mae:.3g} meV", fontsize=9)
        ax.set_xlim(*lim)
        ax.set_xlabel("DFT E - gap centre (eV)")
        ax.set_ylabel("ML E - gap centre (eV)")
        ax.legend(fontsize=8)
    return _finish(fig, save)
