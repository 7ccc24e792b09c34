"""The transfer study: do equivariant models carry from small training cells to large cells better
than non-equivariant ones?

Three models are trained on the same cells with the same budget (optimizer steps, atoms per step,
peak learning rate, schedule, seed): HForge's equivariant model (e3nn irreps, MACE trunk), HForge's
invariant (non-equivariant) model, and graph2mat's ``MatrixMACE`` (PyPI ``graph2mat``, an external
equivariant peer; :mod:`hforge.train.graph2mat`).  All three learn H - H0 with the same physical
baseline (two-centre T + V_KB + V_NA fitted on the training cells) and all use the exact S, so the
comparison is of what each architecture learns.  Each is tested on held-out cells of every size, the
last step's weights (no model selection on the test cells), with :func:`evaluate_predictions`.  The
headline is what a user of the predicted (H, S) sees, the full-S Γ spectrum after removing the best
uniform c·S (:mod:`hforge.metrics.full_spectrum`): ghost states outside DFT's spectrum, the ±2 eV
window around the gap paired from the HOMO, the gap error; then the per-atom onsite RMSE and the
H MAE after c·S; the Γ eigenvalues in the reference S's canonical basis at threshold 1e-2 (H's
errors alone, dropping S's near-null directions) are the secondary view.  Cells of fewer than
:data:`TRANSFER_MIN_ATOMS` atoms say nothing about transfer (the shared 8-atom aBN cells are one
ordered network at eight densities, issue 24): they stay out of the transfer figure and are marked
in the tables.

:func:`run_study` trains (resuming any run it finds unfinished), evaluates and writes
``results.json``, ``results.md`` and the figures (:data:`FIGURES`) into one folder; the plans are
:func:`quick_plan` (the bundled ``abn-small``, minutes: CI) and :func:`full_plan` (every shared aBN
training cell of at most 32 atoms, held-out cells of 8 to 64 atoms, several seeds: hours).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hforge.errors import ConfigError
from hforge.files import write_json
from hforge.io import HSData

logger = logging.getLogger(__name__)

__all__ = [
    "CONSTRUCTIONS",
    "FIGURES",
    "MODELS",
    "TRANSFER_MIN_ATOMS",
    "StudyPlan",
    "error_by_distance",
    "full_plan",
    "quick_plan",
    "run_study",
    "study_markdown",
]

#: The models of the study, in table order.
MODELS = ("equivariant", "invariant", "graph2mat")
#: The figures :func:`run_study` writes (name -> what it shows).
FIGURES = {
    "transfer": "H MAE, full-S Γ eigenvalue MAE and ghost states against cell size, per model (mean and spread over "
                "seeds; cells of at least TRANSFER_MIN_ATOMS atoms)",
    "learning_curves": "training loss and validation H MAE against step, per model (first seed)",
    "parity": "ML against DFT H entries of the largest test cell, per model",
    "error_vs_distance": "H MAE (shift removed) against pair distance, largest test cell, per model",
    "heatmap": "DFT | ML | ML - DFT of H(Γ) of the largest test cell, best model",
    "spectrum": "full-S Γ eigenvalues near the gap and DOS of the largest test cell, DFT against each model",
}
#: How HForge's models build H in a study (:attr:`StudyPlan.construction`): the model-config fields of each.
CONSTRUCTIONS = {
    "operator": {"baseline": "operator", "separable": True, "free_blocks": False},
    "entries": {"baseline": "h0", "separable": False, "free_blocks": True},
}
#: The threshold (canonical orthogonalization of the reference S) of the secondary spectra.
THRESHOLD = 1e-2
#: Test cells with fewer atoms are no transfer test: the shared 8-atom aBN cells are one ordered network at eight
#: densities (every B alike, every N alike; issue 24).  Kept out of the transfer figure, marked in the tables.
TRANSFER_MIN_ATOMS = 16
#: Table columns, the headline (full S, c·S removed; per-atom onsite energies) first: summary key -> header.
COLUMNS = {
    "ghosts_low": "ghost states below DFT's spectrum - 1 eV, full S",
    "ghosts_high": "ghost states above DFT's spectrum + 1 eV, full S",
    "eig_window_fullS_meV": "Γ eig. ±2 eV, full S, paired from the HOMO (meV)",
    "window_states_pred": "predicted states in ±2 eV, full S",
    "window_states_ref": "DFT states in ±2 eV",
    "gap_error_fullS_meV": "gap error, full S (meV)",
    "onsite_atom_rmse_meV": "per-atom onsite-energy RMSE, c·S removed (meV)",
    "h_mae_shifted_meV": "H MAE, c·S removed (meV)",
    "h_mae_meV": "H MAE (meV)",
    "h_onsite_meV": "onsite (meV)",
    "h_hopping_meV": "hopping (meV)",
    "eig_window_refS_1e-2_meV": "secondary: Γ eig. ±2 eV, ref. S 1e-2 (meV)",
    "gap_error_refS_1e-2_meV": "secondary: gap error, ref. S 1e-2 (meV)",
}


@dataclass(frozen=True)
class StudyPlan:
    """What the study trains and tests.

    Attributes:
        source: a store (``.h5`` of ``hforge data convert``) or a bundled dataset name.
        train: names of the training structures.
        test: names of the held-out structures (every size; also the validation of the learning curves).
        models: a subset of :data:`MODELS`.
        seeds: one training per model and seed.
        steps: optimizer steps per training (the budget).
        batch_atoms: atoms per step (whole structures packed greedily).
        lr: peak learning rate (AdamW, linear warm-up, cosine decay), the same for every model.
        val_every: steps between validations (the learning curves).
        threads: torch CPU threads per training (None: torch's default).
        transfer_min_atoms: test cells with fewer atoms are kept out of the transfer figure and
            marked in the tables (:data:`TRANSFER_MIN_ATOMS`).
        construction: how HForge's two models build H (:data:`CONSTRUCTIONS`): ``"operator"``
            (``T + V_KB + c0 S`` plus the learned separable operator, no per-entry blocks; loss
            without each structure's best c·S) or ``"entries"`` (the fitted two-centre H0 plus blocks
            filled entry by entry, the construction before issue 24).  graph2mat's model always
            fills entries (H - H0).
    """

    source: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = (0,)
    steps: int = 1500
    batch_atoms: int = 32
    lr: float = 1e-2
    val_every: int = 250
    threads: int | None = None
    transfer_min_atoms: int = TRANSFER_MIN_ATOMS
    construction: str = "operator"

    def __post_init__(self) -> None:
        if self.construction not in CONSTRUCTIONS:
            raise ConfigError(f"study: construction {self.construction!r}: choose one of {', '.join(CONSTRUCTIONS)}")
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise ConfigError(f"study: unknown models {unknown} (known: {list(MODELS)})")
        shared = sorted(set(self.train) & set(self.test))
        if shared:
            raise ConfigError(f"study: structures {shared} are both training and test cells")
        if not self.train or not self.test or not self.seeds or self.steps < 1:
            raise ConfigError("study: needs training cells, test cells, a seed and at least one step")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _store_names(source: str) -> dict[str, int]:
    from hforge.datasets import load

    return {e["name"]: int(e["n_atoms"]) for e in load(source).store.manifest}


def quick_plan(source: str = "abn-small", *, steps: int = 60, seeds: Sequence[int] = (0,)) -> StudyPlan:
    """The CI-sized study: the bundled store's training cells (8-16 atoms) and its 24-atom cell."""
    names = _store_names(source)
    train = tuple(n for n, a in names.items() if a <= 16)
    test = tuple(n for n, a in names.items() if a > 16)
    return StudyPlan(source, train, test, seeds=tuple(seeds), steps=steps, val_every=max(1, steps // 3))


#: The held-out cells of the full study, one per size (the shared aBN data; abn_64_0 is its validation cell).
FULL_TEST = ("abn_8_7", "abn_16_5", "abn_24_3", "abn_32_2", "abn_64_0")


def full_plan(source: str | os.PathLike, *, steps: int = 1500, seeds: Sequence[int] = (0, 1),
              threads: int | None = None) -> StudyPlan:
    """Every cell of ``source`` with at most 32 atoms trains except :data:`FULL_TEST`, which test."""
    names = _store_names(os.fspath(source))
    missing = [n for n in FULL_TEST if n not in names]
    if missing:
        raise ConfigError(f"study: the store {source} lacks the test cells {missing}")
    train = tuple(sorted((n for n, a in names.items() if a <= 32 and n not in FULL_TEST), key=lambda n: (names[n], n)))
    return StudyPlan(os.fspath(source), train, FULL_TEST, seeds=tuple(seeds), steps=steps, threads=threads)


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _hforge_config(plan: StudyPlan, kind: str, seed: int) -> dict[str, Any]:
    return {
        "data": {"source": plan.source, "train": {"names": list(plan.train)}, "val": {"names": list(plan.test)}},
        "model": {"kind": kind, **CONSTRUCTIONS[plan.construction]},
        "loss": {"shift_invariant": plan.construction == "operator"},
        "optimizer": {"lr": plan.lr},
        "schedule": {"name": "cosine", "warmup_steps": min(100, max(1, plan.steps // 10))},
        "training": {
            "max_steps": plan.steps, "batch_atoms": plan.batch_atoms, "val_every": plan.val_every,
            "checkpoint_every": max(1, min(100, plan.steps)), "seed": seed, "device": "cpu", "ema_decay": 0.99,
            "val_eigenvalues": False,
        },
    }


def _train(plan: StudyPlan, kind: str, seed: int, out: Path, progress: bool) -> tuple[Path, float]:
    """Train one model; returns ``last.pt`` and the training's wall time (s).

    A finished training (``out/trained.json`` of the same budget) is not repeated; a killed one
    resumes from its ``last.pt``."""
    import json

    marker = out / "trained.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("steps") == plan.steps:
            return Path(done["checkpoint"]), float(done["train_s"])
    start = time.perf_counter()
    last = _train_steps(plan, kind, seed, out, progress)
    train_s = time.perf_counter() - start
    write_json(marker, {"steps": plan.steps, "checkpoint": str(last), "train_s": train_s})
    return last, train_s


def _train_steps(plan: StudyPlan, kind: str, seed: int, out: Path, progress: bool) -> Path:
    """Train one model to ``plan.steps`` (resuming ``out/last.pt`` when a killed run left one)."""
    import torch

    resume = (out / "last.pt").is_file()
    threads = torch.get_num_threads()
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    try:
        if kind == "graph2mat":
            from hforge.train.graph2mat import Graph2MatSettings, train_graph2mat

            settings = Graph2MatSettings(threads=plan.threads, val_every=plan.val_every, val_eigenvalues=False,
                                         warmup_steps=min(100, max(1, plan.steps // 10)))
            return train_graph2mat(plan.source, plan.train, plan.test, out, max_steps=plan.steps,
                                   batch_atoms=plan.batch_atoms, lr=plan.lr, seed=seed, settings=settings,
                                   target="residual", progress=progress, resume=resume)
        from hforge.train.config import load_config
        from hforge.train.trainer import Trainer

        # without last.pt a killed training starts over (overwrite: its partial log goes)
        trainer = Trainer(
            load_config(_hforge_config(plan, kind, seed)), out, resume=resume, overwrite=not resume, progress=progress
        )
        return trainer.run(final_validation=False).last
    finally:
        torch.set_num_threads(threads)


def _predictor(kind: str, checkpoint: Path) -> Callable[[HSData], HSData]:
    if kind == "graph2mat":
        from hforge.train.graph2mat import load_graph2mat

        return load_graph2mat(checkpoint).predict
    from hforge.models import load_checkpoint
    from hforge.train.evaluation import predict_blocks

    model, _ = load_checkpoint(checkpoint)
    model.eval()
    return lambda reference: predict_blocks(model, reference)


# ---------------------------------------------------------------------------------------
# measurements beyond evaluate_predictions
# ---------------------------------------------------------------------------------------
def error_by_distance(prediction: HSData, reference: HSData, edges: np.ndarray) -> dict[str, np.ndarray]:
    """H MAE (meV, after the best uniform shift c·S of the whole cell) per pair-distance bin.

    Args:
        prediction, reference: one structure (the prediction on any subset of the reference's pairs).
        edges: ``(n_bins + 1,)`` bin edges in Å; onsite blocks (distance 0) fall in the first bin
            when it starts at 0.

    Returns:
        ``{"centres": (n_bins,) Å, "mae_meV": (n_bins,) (NaN for empty bins), "count": (n_bins,)}``.
    """
    from hforge.metrics.blocks import align_reference, best_shift

    ref = align_reference(reference, prediction.edge_index, prediction.cell_shift, prediction.block_ptr)
    delta = prediction.h_unshifted[0] - ref.h
    error = np.abs(delta - best_shift(delta, ref.s) * ref.s)
    distance = prediction.pair_distances()[prediction.value_pair]
    which = np.digitize(distance, edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    count = np.bincount(which[inside], minlength=len(edges) - 1)
    total = np.bincount(which[inside], weights=error[inside], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(count > 0, 1e3 * total / np.maximum(count, 1), np.nan)
    return {"centres": 0.5 * (edges[1:] + edges[:-1]), "mae_meV": mae, "count": count}


# ---------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------
@dataclass
class _Run:
    kind: str
    seed: int
    out: Path
    checkpoint: Path | None = None
    train_s: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)


def _aggregate(runs: Sequence[_Run], sizes: Sequence[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """``table[model][size][key] = {"mean", "std", "values"}`` over seeds (sizes as strings)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        for size in sizes:
            summary = run.evaluation["groups"].get(str(size), {}).get("summary", {})
            cell = table.setdefault(run.kind, {}).setdefault(str(size), {})
            for key in COLUMNS:
                cell.setdefault(key, {"values": []})["values"].append(float(summary.get(key, np.nan)))
    for per_size in table.values():
        for cell in per_size.values():
            for stats in cell.values():
                v = np.asarray(stats["values"], dtype=float)
                stats["mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                stats["std"] = float(np.nanstd(v)) if np.isfinite(v).sum() > 1 else 0.0
    return table


def run_study(
    plan: StudyPlan,
    out: str | os.PathLike,
    *,
    docs: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every model and seed of ``plan``, test them, and write the results.

    Args:
        plan: the cells, models, seeds and budget.
        out: working folder: ``runs/<model>-s<seed>/`` (each training; a killed study resumes
            where it stopped, finished trainings are not repeated), ``results.json``.
        docs: where ``results.md`` and ``figures/`` go (default ``out``).
        progress: progress bars of the trainings.
        log: called with one line per step of the study (default: this module's logger, INFO).

    Returns:
        The content of ``results.json``: the plan, per run its evaluation summaries and training
        time, the table (model x size, mean and spread over seeds) and the figure paths.
    """
    from hforge.datasets import load

    log = log or logger.info
    out = Path(out)
    docs = Path(docs) if docs is not None else out
    store = load(plan.source).store
    references = [store.read(name) for name in plan.test]
    sizes = sorted({r.n_atoms for r in references})
    start = time.perf_counter()
    runs: list[_Run] = []
    for seed in plan.seeds:
        for kind in plan.models:
            run = _Run(kind, seed, out / "runs" / f"{kind}-s{seed}")
            log(f"{kind}, seed {seed}: training {plan.steps} steps on {len(plan.train)} cells -> {run.out}")
            run.checkpoint, run.train_s = _train(plan, kind, seed, run.out, progress)
            run.evaluation = _evaluate(kind, run.checkpoint, references)
            largest = run.evaluation["groups"][str(sizes[-1])]["summary"]
            log(f"  {sizes[-1]} atoms: ghost states {largest['ghosts_low']:.3g} / {largest['ghosts_high']:.3g}, Γ "
                f"eigenvalues {largest['eig_window_fullS_meV']:.1f} meV (full S), H MAE {largest['h_mae_shifted_meV']:.2f} "
                f"meV (c·S removed; all after the best c·S)")
            runs.append(run)
    table = _aggregate(runs, sizes)
    names = _store_names(plan.source)
    train_sizes = sorted({names[t] for t in plan.train})
    figures = _figures(plan, runs, references, table, train_sizes[-1], docs / "figures")
    results = {
        "plan": plan.to_dict(),
        "sizes": sizes,
        "train_sizes": train_sizes,
        "test_cells": {n: r.n_atoms for n, r in zip(plan.test, references)},
        "table": table,
        "runs": [{"model": r.kind, "seed": r.seed, "checkpoint": str(r.checkpoint), "train_s": r.train_s,
                  "structures": {e["name"]: e["summary"] for e in r.evaluation["structures"]}} for r in runs],
        "wall_s": time.perf_counter() - start,
        "figures": {k: os.path.relpath(p, docs) for k, p in figures.items()},
    }
    write_json(out / "results.json", results)
    from hforge.files import atomic_write

    with atomic_write(docs / "results.md", "w") as fh:
        fh.write(study_markdown(results))
    log(f"wrote {out / 'results.json'} and {docs / 'results.md'}")
    return results


def _evaluate(kind: str, checkpoint: Path, references: Sequence[HSData]) -> dict[str, Any]:
    from hforge.train.evaluation import evaluate_predictions

    evaluation = evaluate_predictions(_predictor(kind, checkpoint), references, thresholds=(THRESHOLD, 1e-3))
    return evaluation.to_dict()


# ---------------------------------------------------------------------------------------
# figures and the report
# ---------------------------------------------------------------------------------------
def _figures(plan: StudyPlan, runs: Sequence[_Run], references: Sequence[HSData],
             table: Mapping[str, Any], train_max: int, folder: Path) -> dict[str, Path]:
    from hforge.analysis.plots import hamiltonian_heatmap, new_figure, save_figure
    from hforge.metrics import GammaLayout
    from hforge.metrics.blocks import align_reference
    from hforge.train.curves import plot_learning_curves
    from hforge.train.loop import read_log

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    sizes = sorted({r.n_atoms for r in references})
    # transfer curve: the cells that can test transfer
    shown = [n for n in sizes if n >= plan.transfer_min_atoms] or sizes
    fig, axes = new_figure(3, size=(4.4, 3.8))
    panels = (("h_mae_shifted_meV",), ("eig_window_fullS_meV",), ("ghosts_low", "ghosts_high"))
    for colour, kind in enumerate(k for k in MODELS if k in table):
        for ax, keys in zip(axes, panels):
            for key, style in zip(keys, ("o-", "s--")):
                mean = [table[kind][str(n)][key]["mean"] for n in shown]
                std = [table[kind][str(n)][key]["std"] for n in shown]
                label = kind if len(keys) == 1 else f"{kind}, {key.split('_')[1]}"
                ax.errorbar(shown, mean, yerr=std, fmt=style, capsize=3, color=f"C{colour}", label=label)
    axes[0].set_ylabel("H MAE, c·S removed (meV)")
    axes[1].set_ylabel("Γ eigenvalue MAE ±2 eV (meV)\nfull S, paired from the HOMO")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("ghost states, full S\n(> 1 eV below / above DFT's spectrum)")
    for ax in axes:
        ax.set_xlabel("atoms in the test cell")
        ax.set_xticks(shown)
        ax.axvline(train_max, color="0.6", ls=":", lw=1)
        ax.legend(fontsize=7)
    left_out = [n for n in sizes if n not in shown]
    fig.suptitle(f"trained on cells of <= {train_max} atoms ({plan.steps} steps, {len(plan.seeds)} seed(s)); Γ, "
                 "best c·S removed" + (f"; {', '.join(map(str, left_out))}-atom cells left out (no transfer test)"
                                      if left_out else ""), fontsize=9)
    paths["transfer"] = save_figure(fig, folder / "transfer.png")
    first = [r for r in runs if r.seed == plan.seeds[0]]
    paths["learning_curves"] = plot_learning_curves(
        {r.kind: read_log(r.out / "metrics.jsonl") for r in first}, folder / "learning_curves.png",
        title="validation: the test cells",
    )
    # largest cell: parity, error against distance, heatmap, spectrum
    largest = max(range(len(references)), key=lambda k: references[k].n_atoms)
    reference, name = references[largest], plan.test[largest]
    predictions = {r.kind: _predictor(r.kind, r.checkpoint)(reference) for r in first}
    fig, axes = new_figure(len(predictions), size=(4.2, 4.2))
    axes = np.atleast_1d(axes)
    for ax, (kind, pred) in zip(axes, predictions.items()):
        ref_h = align_reference(reference, pred.edge_index, pred.cell_shift, pred.block_ptr).h
        err = 1e3 * np.abs(pred.h_unshifted[0] - ref_h).mean()
        ax.scatter(ref_h, pred.h_unshifted[0], s=1, alpha=0.3, rasterized=True)
        lim = (float(ref_h.min()), float(ref_h.max()))
        ax.plot(lim, lim, color="0.5", lw=0.8)
        ax.set_title(f"{kind}: MAE {err:.3g} meV", fontsize=9)
        ax.set_xlabel(f"DFT H (eV), {name}")
    axes[0].set_ylabel("ML H (eV)")
    paths["parity"] = save_figure(fig, folder / "parity.png")
    edges = np.concatenate([[0.0, 0.5], np.arange(1.0, 8.01, 0.5)])
    fig, ax = new_figure(size=(5.0, 3.8))
    for colour, (kind, pred) in enumerate(predictions.items()):
        binned = error_by_distance(pred, reference, edges)
        ax.plot(binned["centres"], binned["mae_meV"], "o-", ms=3, color=f"C{colour}", label=kind)
    ax.set_xlabel("pair distance (Å); first bin: onsite")
    ax.set_ylabel("H MAE, c·S removed (meV)")
    ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=8)
    paths["error_vs_distance"] = save_figure(fig, folder / "error_vs_distance.png")
    best = min(predictions, key=lambda k: table[k][str(reference.n_atoms)]["h_mae_shifted_meV"]["mean"])
    pred = predictions[best]
    heatmap = hamiltonian_heatmap(GammaLayout.from_hsdata(pred).dense(pred.h_unshifted[0]),
                                  GammaLayout.from_hsdata(reference).dense(reference.h_unshifted[0]))
    heatmap.suptitle(f"{best}, {name}: H(Γ)", fontsize=9)
    paths["heatmap"] = save_figure(heatmap, folder / "heatmap.png")
    paths["spectrum"] = _spectrum_figure(predictions, reference, name, folder / "spectrum.png")
    return paths


def _spectrum_figure(predictions: Mapping[str, HSData], reference: HSData, name: str, path: Path) -> Path:
    """Left: ML against DFT full-S Γ eigenvalues near the gap, paired from the HOMO; right: their
    Gaussian-broadened DOS (0.1 eV); the prediction's best c·S removed."""
    from hforge.analysis.plots import new_figure, save_figure
    from hforge.analysis.spectrum import broadened_dos
    from hforge.metrics import compare_full_spectra

    fig, (ax_eig, ax_dos) = new_figure(2, size=(4.8, 4.0))
    energies = np.linspace(-4.0, 4.0, 801)
    sigma = 0.1
    for colour, (kind, pred) in enumerate(predictions.items()):
        full = compare_full_spectra(pred, reference)
        ref, ml, e = full.eigenvalues["ref"][0], full.eigenvalues["pred"][0], full.errors
        centre = e.gap_centre_eV
        near = np.abs(ref - centre) <= 4.0
        ax_eig.plot(ref[near] - centre, ml[near] - centre, "o", ms=3, color=f"C{colour}",
                    label=f"{kind} (gap {e.gap_pred_eV:.2f} eV, ghosts {e.ghosts_low}/{e.ghosts_high})")
        ax_dos.plot(broadened_dos(ml - centre, energies, broadening=sigma), energies, color=f"C{colour}", lw=1, label=kind)
        if colour == 0:
            ax_dos.plot(broadened_dos(ref - centre, energies, broadening=sigma), energies, color="k", lw=1.5, label="DFT")
            ax_eig.set_title(f"{name}: DFT gap {e.gap_ref_eV:.2f} eV", fontsize=9)
    ax_eig.plot([-4, 4], [-4, 4], color="0.5", lw=0.8)
    ax_eig.set_xlabel("DFT E - gap centre (eV)")
    ax_eig.set_ylabel("ML E - gap centre (eV), same index from the HOMO")
    ax_eig.legend(fontsize=7)
    ax_dos.set_xlabel(f"DOS (states/eV, σ = {sigma} eV)")
    ax_dos.set_ylabel("E - DFT gap centre (eV)")
    ax_dos.legend(fontsize=7)
    fig.suptitle("Γ, full S (each side's own S, no basis truncation), best c·S removed", fontsize=9)
    return save_figure(fig, path)


def _cell(stats: Mapping[str, Any], seeds: int) -> str:
    if not np.isfinite(stats["mean"]):
        return "–"
    return f"{stats['mean']:.3g} ± {stats['std']:.2g}" if seeds > 1 else f"{stats['mean']:.3g}"


def _transfer_lines(results: Mapping[str, Any]) -> list[str]:
    """What the table says about transfer: each model's error on the largest test cell over its error on
    the largest test cell of a training size, and the models' ratios on the largest cell."""
    table, sizes = results["table"], results["sizes"]
    train_max = max(results["train_sizes"]) if results.get("train_sizes") else None
    least = results["plan"].get("transfer_min_atoms", TRANSFER_MIN_ATOMS)
    seen = [n for n in sizes if train_max is not None and least <= n <= train_max]
    if not seen or sizes[-1] == seen[-1]:
        return []
    big, small = str(sizes[-1]), str(seen[-1])
    keys = ("h_mae_shifted_meV", "eig_window_fullS_meV", "onsite_atom_rmse_meV", "eig_window_refS_1e-2_meV")
    lines = ["## Transfer", "",
             f"Error on the {big}-atom cell over the error on the {small}-atom test cell (a training size); "
             "1 means no loss of accuracy beyond the training sizes:", "",
             "| model | H MAE, c·S removed | Γ eig. ±2 eV, full S | per-atom onsite RMSE | secondary: Γ eig. ±2 eV, "
             "ref. S 1e-2 |", "|---|---|---|---|---|"]
    for kind, per_size in table.items():
        ratios = [per_size[big][k]["mean"] / per_size[small][k]["mean"] for k in keys]
        lines.append(f"| {kind} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    key = "h_mae_shifted_meV"
    best = min(table, key=lambda k: table[k][big][key]["mean"])
    everywhere = all(min(table, key=lambda k: table[k][str(n)][key]["mean"]) == best for n in sizes if n >= least)
    others = ", ".join(f"{k} {table[k][big][key]['mean'] / table[best][big][key]['mean']:.2f}x"
                       for k in table if k != best)
    lines += ["", f"On the {big}-atom cell the lowest H error is {best}'s ({others} of it)"
              + (f"; it is the lowest at every size from {least} atoms." if everywhere else "; not at every size."), ""]
    return lines


def study_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the plan and budget, the table (model x cell size) and the figures."""
    plan, table, sizes = results["plan"], results["table"], results["sizes"]
    seeds = len(plan["seeds"])
    train_s = {}
    for run in results["runs"]:
        train_s.setdefault(run["model"], []).append(run["train_s"])
    lines = [
        "# Transfer study: equivariant vs non-equivariant vs graph2mat",
        "",
        "Made by `hforge study` (hforge/train/study.py); every number below is measured by that run.",
        "Reproduce: `hforge study " + ("quick" if plan["source"] == "abn-small" else "full")
        + f" --steps {plan['steps']} " + " ".join(f"--seed {s}" for s in plan["seeds"])
        + " --docs docs` (full: the store is converted from `../shared/abn` and `../shared/abn-extra` when absent).",
        "",
        f"- Data: `{plan['source']}`; training cells ({len(plan['train'])}): {', '.join(plan['train'])}.",
        "- Test cells (never trained on; the last step's weights, no selection on them): "
        + ", ".join(f"{n} ({a} atoms)" for n, a in results["test_cells"].items()) + ".",
        f"- Budget per model and seed: {plan['steps']} optimizer steps of {plan['batch_atoms']} atoms, AdamW, "
        f"peak lr {plan['lr']:g}, cosine schedule; seeds {plan['seeds']}; all three learn H - H0 (the same "
        "fitted two-centre baseline) with the exact S.",
        "- Training time (wall s per seed, as recorded when each training ran): " + ", ".join(
            f"{k} {np.mean(v):.0f}" for k, v in train_s.items())
        + f"; {sum(sum(v) for v in train_s.values()) / 60:.1f} min of training in all; this invocation of "
        f"`hforge study` {results['wall_s'] / 60:.1f} min (it reuses finished trainings and times only itself).",
        "- Headline, what a user of the predicted H and S sees: the full-S Γ spectrum (H c = E S c in the whole "
        "basis, each side with its own S, no truncation) after removing the best uniform c·S; ghost states more "
        "than 1 eV outside DFT's spectrum; DFT's states within ±2 eV of its gap centre paired with the predicted "
        "states of the same offset from the HOMO; the per-atom onsite-energy RMSE (held-out over training cells: "
        "memorisation).",
        "- Secondary: both H in the reference S's canonical basis at threshold 1e-2 (H's errors alone, S's "
        "near-null directions dropped).",
        "",
    ]
    least = plan.get("transfer_min_atoms", TRANSFER_MIN_ATOMS)
    marked = [n for n in sizes if n < least]
    if marked:
        lines += [f"† cells of fewer than {least} atoms: no transfer test (the shared 8-atom aBN cells are one "
                  "ordered network at eight densities, every B alike and every N alike); left out of the transfer "
                  "figure.", ""]
    for key, header in COLUMNS.items():
        lines += [f"### {header}" + (" (mean ± std over seeds)" if seeds > 1 else ""), "",
                  "| model | " + " | ".join(f"{n} atoms" + ("†" if n < least else "") for n in sizes) + " |",
                  "|---" * (len(sizes) + 1) + "|"]
        for kind, per_size in table.items():
            lines.append(f"| {kind} | " + " | ".join(_cell(per_size[str(n)][key], seeds) for n in sizes) + " |")
        lines.append("")
    lines += _transfer_lines(results)
    lines += ["## Figures", ""]
    for key, path in results["figures"].items():
        lines += [f"- {FIGURES[key]}: `{path}`", "", f"![{key}]({path})", ""]
    return "\n".join(lines)
