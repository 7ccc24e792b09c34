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

Test cells may also come from outside the training store (:attr:`StudyPlan.external`: SIESTA run
folders, H/S files or stores, e.g. a campaign's 216- and 512-atom cells): test-only, never trained or
validated on, refused when one is a training cell (by name or by its atoms), marked in the tables.
HForge's models then predict through the inference API's :class:`~hforge.infer.Predictor` (the
streamed, memory-bounded route a user gets from ``hforge.load``), which the caller hands over as
``load_predictor`` (``hforge.infer.load``; this layer does not import its sibling ``hforge.infer``;
the CLI does).  For the largest test cell the study times HForge's prediction against SIESTA's wall
time (its log, or its campaign record) and compares their densities of states.

:func:`learning_curve` trains the models on nested subsets of the training cells (fractions chosen
deterministically with a seed, each keeping the size mix; the whole set is the study's own
training, reused) and fits the held-out errors against the training atoms with a power law
(:mod:`hforge.train.power_law`), saying how many atoms the 1 meV goal would need.

:func:`write_report` writes ``results.md`` from the study's ``results.json`` and the curve's
``curve.json``, whichever exist.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hforge.errors import ConfigError
from hforge.files import atomic_write, write_json
from hforge.io import HSData

logger = logging.getLogger(__name__)

__all__ = [
    "CONSTRUCTIONS",
    "CURVE_FIGURE",
    "CURVE_FRACTIONS",
    "CURVE_METRICS",
    "FIGURES",
    "GOAL_MEV",
    "MODELS",
    "TRANSFER_MIN_ATOMS",
    "HeldOutCell",
    "StudyPlan",
    "curve_markdown",
    "error_by_distance",
    "external_cells",
    "full_plan",
    "learning_curve",
    "nested_subsets",
    "quick_plan",
    "run_study",
    "siesta_cost",
    "study_markdown",
    "write_report",
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
    "speed": "SIESTA's wall time against HForge's prediction time on the largest test cell, and the DOS of both "
             "(written when the study predicts through the Predictor)",
}
#: The learning curve's figure (:func:`learning_curve`).
CURVE_FIGURE = "held-out errors against the training atoms, per model (each seed a point), with the power-law fits"
#: Fractions of the training cells :func:`learning_curve` trains on by default.
CURVE_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)
#: The learning curve's errors, each the mean over the held-out cells: summary key -> label.  The first two
#: get a power-law fit and the number of training atoms the goal (:data:`GOAL_MEV`) would need.
CURVE_METRICS = {
    "h_mae_shifted_meV": "H MAE, c·S removed (meV)",
    "onsite_atom_rmse_meV": "per-atom onsite-energy RMSE (meV)",
    "eig_window_fullS_meV": "Γ eig. ±2 eV, full S (meV)",
    "ghosts": "ghost states, full S (below + above)",
}
CURVE_FITTED = ("h_mae_shifted_meV", "onsite_atom_rmse_meV")
#: The accuracy goal of the learning curve's fits (meV).
GOAL_MEV = 1.0
#: Timed predictions of the largest cell per model, after one warm-up (the fastest counts).
SPEED_REPEATS = 2
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
#: The columns that need a dense eigensolve (skipped above :data:`~hforge.train.evaluation.MAX_EIGEN_ORBITALS` orbitals).
SPECTRUM_COLUMNS = frozenset(k for k in COLUMNS if k.startswith(("ghosts", "eig_", "window_", "gap_")))


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
        external: test-only cells from outside ``source``: SIESTA run folders (or folders of them),
            H/S files, or stores (every cell of one; e.g. a campaign's compact store).  Read with
            the training store's basis; never trained or validated on (a training cell among them,
            by name or by its atoms, is refused); HForge's models predict them through the
            Predictor (``load_predictor`` of :func:`run_study`).
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
    external: tuple[str, ...] = ()

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


def quick_plan(source: str = "abn-small", *, steps: int = 60, seeds: Sequence[int] = (0,),
               external: Sequence[str | os.PathLike] = ()) -> StudyPlan:
    """The CI-sized study: the bundled store's training cells (8-16 atoms) and its 24-atom cell
    (plus the test-only ``external`` cells, :attr:`StudyPlan.external`)."""
    names = _store_names(source)
    train = tuple(n for n, a in names.items() if a <= 16)
    test = tuple(n for n, a in names.items() if a > 16)
    return StudyPlan(source, train, test, seeds=tuple(seeds), steps=steps, val_every=max(1, steps // 3),
                     external=tuple(map(os.fspath, external)))


#: The held-out cells of the full study, one per size (the shared aBN data; abn_64_0 is its validation cell).
FULL_TEST = ("abn_8_7", "abn_16_5", "abn_24_3", "abn_32_2", "abn_64_0")


def full_plan(source: str | os.PathLike, *, steps: int = 1500, seeds: Sequence[int] = (0, 1),
              threads: int | None = None, external: Sequence[str | os.PathLike] = ()) -> StudyPlan:
    """Every cell of ``source`` with at most 32 atoms trains except :data:`FULL_TEST`, which test, with
    the test-only ``external`` cells (:attr:`StudyPlan.external`, e.g. 216- and 512-atom SIESTA runs)."""
    names = _store_names(os.fspath(source))
    missing = [n for n in FULL_TEST if n not in names]
    if missing:
        raise ConfigError(f"study: the store {source} lacks the test cells {missing}")
    train = tuple(sorted((n for n, a in names.items() if a <= 32 and n not in FULL_TEST), key=lambda n: (names[n], n)))
    return StudyPlan(os.fspath(source), train, FULL_TEST, seeds=tuple(seeds), steps=steps, threads=threads,
                     external=tuple(map(os.fspath, external)))


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
    resumes from its ``last.pt``.

    Raises:
        ConfigError: ``out`` holds a finished training on other cells.
    """
    marker = out / "trained.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("train", list(plan.train)) != list(plan.train):
            theirs, ours = sorted(set(done["train"]) - set(plan.train)), sorted(set(plan.train) - set(done["train"]))
            raise ConfigError(f"study: {out} holds a training on other cells (with {theirs or 'none more'}, without "
                              f"{ours or 'none more'} of the plan's): use another working folder")
        if done.get("steps") == plan.steps:
            return Path(done["checkpoint"]), float(done["train_s"])
    start = time.perf_counter()
    last = _train_steps(plan, kind, seed, out, progress)
    train_s = time.perf_counter() - start
    write_json(marker, {"steps": plan.steps, "checkpoint": str(last), "train_s": train_s, "train": list(plan.train)})
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


#: ``hforge.infer.load`` or a wrapper of it: a checkpoint path -> a :class:`~hforge.infer.Predictor`.
PredictorLoader = Callable[[Path], Any]


def _predictor(kind: str, checkpoint: Path, load_predictor: PredictorLoader | None = None,
               threads: int | None = None) -> Callable[[HSData], HSData]:
    """One structure's prediction (an :class:`HSData` on the model's canonical pairs) by a trained model:
    graph2mat's own route; HForge's through the Predictor when ``load_predictor`` is given (its default
    plan: whole cell or streamed atom ranges within the memory goal; float64 output, as the other routes, so
    that the errors compare at every digit), else one whole-cell model pass
    (:func:`~hforge.train.evaluation.predict_blocks`)."""
    if kind == "graph2mat":
        from hforge.train.graph2mat import load_graph2mat

        return load_graph2mat(checkpoint).predict
    if load_predictor is not None:
        predictor = load_predictor(checkpoint)
        return lambda reference: _predicted_hsdata(predictor.predict(reference, threads=threads, dtype=np.float64), reference)
    from hforge.models import load_checkpoint
    from hforge.train.evaluation import predict_blocks

    model, _ = load_checkpoint(checkpoint)
    model.eval()
    return lambda reference: predict_blocks(model, reference)


def _predicted_hsdata(hamiltonian: Any, reference: HSData) -> HSData:
    """The Predictor's ``sisl.Hamiltonian`` of ``reference``'s structure as an :class:`HSData` on its canonical pairs
    (the layout :func:`~hforge.train.evaluation.predict_blocks` gives)."""
    return HSData.from_sisl(hamiltonian, reference.basis, species=reference.species, source=reference.source).canonical_half()


# ---------------------------------------------------------------------------------------
# test cells
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutCell:
    """A test cell of the study.

    Attributes:
        name: its name (the store's, or the run's label).
        data: the SIESTA reference.
        origin: ``"store"`` for the plan's own test cells (:attr:`StudyPlan.test`), else the path it
            was read from (test-only: :attr:`StudyPlan.external`).
        provenance: what a store records of its run (:meth:`~hforge.io.HSStore.provenance`: fdf, SIESTA
            version, campaign record); empty for run folders, whose log sits beside ``data.source``.
    """

    name: str
    data: HSData
    origin: str = "store"
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return self.origin != "store"


def _is_store(path: Path) -> bool:
    return path.is_file() and path.suffix in (".h5", ".hdf5")


def external_cells(plan: StudyPlan) -> list[HeldOutCell]:
    """The test-only cells of ``plan`` (:attr:`StudyPlan.external`), read with the training store's basis.

    Raises:
        ConfigError: a cell that is a training cell (same name, or the same atoms under another name),
            or a name given twice.
        ConvergenceError: a run folder whose SIESTA log shows a run that did not finish or converge
            (a run still going has no final log).
        FileFormatError, BasisMismatchError: unreadable cells, or cells of another basis.
    """
    from hforge.datasets import load
    from hforge.io import find_runs, read_hs, run_output
    from hforge.io.siesta import hs_label
    from hforge.train.evaluation import check_data_basis

    training = load(plan.source).store
    cells: list[HeldOutCell] = []
    for item in plan.external:
        path = Path(item)
        if _is_store(path):
            store = load(path).store
            for name in store.names:
                data = store.read(name)
                check_data_basis(training.basis, data.basis, source=path)
                cells.append(HeldOutCell(name, data, str(path), store.provenance(name)))
            continue
        for run in find_runs([path]):
            hs_file = run_output(run)  # refuses a run whose log shows no converged end
            cells.append(HeldOutCell(hs_label(hs_file), read_hs(hs_file, training.basis), str(run)))
    _check_unseen(plan, cells, training)
    return cells


def _check_unseen(plan: StudyPlan, cells: Sequence[HeldOutCell], training: Any) -> None:
    """Refuse test-only cells that the plan trains on (by name, or by atoms: species, cell and positions
    within 1e-6 Å of a training cell of the same size) or that repeat a name."""
    seen: dict[str, str] = {name: "the plan's test cells" for name in plan.test}
    sizes = {e["name"]: int(e["n_atoms"]) for e in training.manifest}
    trained: dict[int, list[tuple[str, HSData]]] = {}
    for cell in cells:
        if cell.name in plan.train:
            raise ConfigError(f"study: the test-only cell {cell.name} ({cell.origin}) is a training cell")
        if cell.name in seen:
            raise ConfigError(f"study: the test cell {cell.name} comes twice ({seen[cell.name]} and {cell.origin})")
        seen[cell.name] = cell.origin
        n = cell.data.n_atoms
        if n not in trained:
            trained[n] = [(name, training.read(name)) for name in plan.train if sizes.get(name) == n]
        for name, data in trained[n]:
            same_species = [data.basis.symbols[s] for s in data.species] == [
                cell.data.basis.symbols[s] for s in cell.data.species]
            if same_species and np.allclose(data.cell, cell.data.cell, atol=1e-6) and np.allclose(
                    data.positions, cell.data.positions, atol=1e-6):
                raise ConfigError(f"study: the test-only cell {cell.name} ({cell.origin}) is the training cell {name}")


def siesta_cost(cell: HeldOutCell) -> dict[str, Any]:
    """What SIESTA's run of a cell cost, as its log (beside the H/S file the cell was read from) or its
    campaign record (a store's provenance) says.

    Returns:
        ``{"source", "wall_s", "cpu_s", "processes", "siesta", "attempts", "interrupted", "note"}``:
        ``source`` the log or ``"campaign record"`` (None when neither is found: every number None);
        ``wall_s`` SIESTA's ``Elapsed wall time`` of the run that finished (a run resumed from a saved
        density matrix: that attempt alone; ``note`` says how many attempts it took); ``cpu_s`` the CPU
        time of the run (its timer's ``siesta`` row); ``processes`` MPI processes (1: serial).
    """
    from hforge.io.runs import find_log, log_text
    from hforge.io.siesta import hs_label
    from hforge.io.siesta_log import read_siesta_log

    record = dict(cell.provenance.get("record") or {})
    cost: dict[str, Any] = dict.fromkeys(("source", "wall_s", "cpu_s", "processes", "siesta"))
    cost.update(attempts=record.get("attempts"), interrupted=record.get("interrupted"), note="")
    source = Path(cell.data.source) if cell.data.source else None
    log = find_log(source.parent, hs_label(source)) if source is not None and source.parent.is_dir() else None
    if log is not None:
        parsed = read_siesta_log(log_text(log))
        cost.update(source=str(log), wall_s=parsed.elapsed, cpu_s=parsed.cpu_time, processes=parsed.processes,
                    siesta=parsed.version)
    elif record.get("siesta_elapsed_s") is not None:
        cost.update(source="campaign record", wall_s=record["siesta_elapsed_s"], siesta=record.get("siesta_version"))
    else:
        cost["note"] = "no SIESTA log or campaign record of this cell found"
    if record.get("interrupted"):
        cost["note"] = (f"the last of {record['attempts']} attempts ({record['interrupted']} interrupted and resumed from "
                        "its saved density matrix; their time is not counted)")
    return cost


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
    load_predictor: PredictorLoader | None = None,
) -> dict[str, Any]:
    """Train every model and seed of ``plan``, test them, and write the results.

    Args:
        plan: the cells, models, seeds and budget.
        out: working folder: ``runs/<model>-s<seed>/`` (each training; a killed study resumes
            where it stopped, finished trainings are not repeated), ``results.json``.
        docs: where ``results.md`` and ``figures/`` go (default ``out``).
        progress: progress bars of the trainings.
        log: called with one line per step of the study (default: this module's logger, INFO).
        load_predictor: ``hforge.infer.load`` (or a wrapper choosing the device): HForge's models then
            predict every test cell through the Predictor, and the largest test cell is timed against
            SIESTA (:func:`siesta_cost`; figure ``speed``).  None: one whole-cell model pass per cell
            (:func:`~hforge.train.evaluation.predict_blocks`), no timing; refused with test-only cells.

    Returns:
        The content of ``results.json``: the plan, per run its evaluation summaries and training
        time, the table (model x size, mean and spread over seeds), the test cells (``external_cells``:
        the test-only ones and where they came from; ``skipped``: sizes whose spectra were not
        computed, and why), ``speed`` (with ``load_predictor``) and the figure paths.

    Raises:
        ConfigError: test-only cells without ``load_predictor``, or that the plan trains on
            (:func:`external_cells`).
    """
    from hforge.datasets import load

    log = log or logger.info
    out = Path(out)
    docs = Path(docs) if docs is not None else out
    if plan.external and load_predictor is None:
        raise ConfigError("study: test-only cells are predicted by the streamed Predictor: pass load_predictor "
                          "(hforge.infer.load; the CLI does)")
    store = load(plan.source).store
    cells = [HeldOutCell(name, store.read(name)) for name in plan.test] + external_cells(plan)
    references = [c.data for c in cells]
    sizes = sorted({r.n_atoms for r in references})
    start = time.perf_counter()
    runs: list[_Run] = []
    for seed in plan.seeds:
        for kind in plan.models:
            run = _Run(kind, seed, out / "runs" / f"{kind}-s{seed}")
            log(f"{kind}, seed {seed}: training {plan.steps} steps on {len(plan.train)} cells -> {run.out}")
            run.checkpoint, run.train_s = _train(plan, kind, seed, run.out, progress)
            run.evaluation = _evaluate(kind, run.checkpoint, references, load_predictor, threads=plan.threads)
            largest = run.evaluation["groups"][str(sizes[-1])]["summary"]
            log(f"  {sizes[-1]} atoms: ghost states {largest['ghosts_low']:.3g} / {largest['ghosts_high']:.3g}, Γ "
                f"eigenvalues {largest['eig_window_fullS_meV']:.1f} meV (full S), H MAE {largest['h_mae_shifted_meV']:.2f} "
                f"meV (c·S removed; all after the best c·S)")
            runs.append(run)
    table = _aggregate(runs, sizes)
    names = _store_names(plan.source)
    train_sizes = sorted({names[t] for t in plan.train})
    figures = _figures(plan, runs, cells, table, train_sizes[-1], docs / "figures", load_predictor)
    speed = None
    if load_predictor is not None:
        largest_cell = max(cells, key=lambda c: c.data.n_atoms)
        log(f"timing HForge's predictions of {largest_cell.name} ({largest_cell.data.n_atoms} atoms) against SIESTA")
        speed, figures["speed"] = _speed(plan, runs, largest_cell, load_predictor, docs / "figures" / "speed.png")
    results = {
        "plan": plan.to_dict(),
        "sizes": sizes,
        "train_sizes": train_sizes,
        "test_cells": {c.name: c.data.n_atoms for c in cells},
        "external_cells": {c.name: c.origin for c in cells if c.external},
        "skipped": _skipped_sizes(runs),
        "table": table,
        "runs": [{"model": r.kind, "seed": r.seed, "checkpoint": str(r.checkpoint), "train_s": r.train_s,
                  "structures": {e["name"]: e["summary"] for e in r.evaluation["structures"]}} for r in runs],
        "speed": speed,
        "wall_s": time.perf_counter() - start,
        "figures": {k: os.path.relpath(p, docs) for k, p in figures.items()},
    }
    write_json(out / "results.json", results)
    report = write_report(out, docs)
    log(f"wrote {out / 'results.json'} and {report}")
    return results


def _evaluate(kind: str, checkpoint: Path, references: Sequence[HSData], load_predictor: PredictorLoader | None = None,
              *, thresholds: Sequence[float] = (THRESHOLD, 1e-3), threads: int | None = None) -> dict[str, Any]:
    from hforge.train.evaluation import evaluate_predictions

    predict = _predictor(kind, checkpoint, load_predictor, threads)
    return evaluate_predictions(predict, references, thresholds=thresholds).to_dict()


def _skipped_sizes(runs: Sequence[_Run]) -> dict[str, str]:
    """Sizes (as strings) whose structures got no full-S spectrum in some run, with the reasons."""
    reasons: dict[str, set[str]] = {}
    for run in runs:
        for entry in run.evaluation["structures"]:
            if "full_spectrum_skipped" in entry:
                reasons.setdefault(str(entry["n_atoms"]), set()).add(entry["full_spectrum_skipped"])
    return {size: "; ".join(sorted(r)) for size, r in sorted(reasons.items(), key=lambda item: int(item[0]))}


def _speed(plan: StudyPlan, runs: Sequence[_Run], cell: HeldOutCell, load_predictor: PredictorLoader,
           path: Path) -> tuple[dict[str, Any], Path]:
    """SIESTA's cost of ``cell`` (:func:`siesta_cost`) against each HForge model's prediction of it
    (first seed): one warm-up prediction (numba compiled, caches filled), then the fastest of
    :data:`SPEED_REPEATS` timed ones, in this process on this machine; and the figure."""
    import torch

    from hforge.datasets.run_records import GAMMA_MAX_ORBITALS
    from hforge.metrics import compare_full_spectra

    reference = cell.data
    timed: dict[str, Any] = {}
    spectra: dict[str, Any] = {}
    for run in (r for r in runs if r.seed == plan.seeds[0] and r.kind != "graph2mat"):
        predictor = load_predictor(run.checkpoint)
        predictor.predict(reference, threads=plan.threads)
        walls = []
        for _ in range(SPEED_REPEATS):
            began = time.perf_counter()
            hamiltonian = predictor.predict(reference, threads=plan.threads)
            walls.append(time.perf_counter() - began)
        report = predictor.last_report
        timed[run.kind] = {
            "wall_s": min(walls), "walls_s": walls, "cpu_s": sum(report.cpu_seconds.values()), "mode": report.mode,
            "parts": report.n_parts, "threads": report.torch_threads, "stages_s": dict(report.seconds),
            "peak_rss_bytes": report.peak_rss_bytes, "device": report.device,
        }
        if reference.n_orbitals <= GAMMA_MAX_ORBITALS:
            spectra[run.kind] = compare_full_spectra(_predicted_hsdata(hamiltonian, reference), reference)
    siesta = siesta_cost(cell)
    speed = {
        "cell": cell.name, "n_atoms": reference.n_atoms, "n_orbitals": reference.n_orbitals, "origin": cell.origin,
        "siesta": siesta, "hforge": timed,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "speedup_wall": {k: siesta["wall_s"] / v["wall_s"] for k, v in timed.items()} if siesta["wall_s"] else {},
        "dos": "Γ, full S, best c·S removed" if spectra else
               f"not computed: {reference.n_orbitals} orbitals, above the dense limit of {GAMMA_MAX_ORBITALS}",
    }
    return speed, _speed_figure(speed, spectra, path)


# ---------------------------------------------------------------------------------------
# figures and the report
# ---------------------------------------------------------------------------------------
def _figures(plan: StudyPlan, runs: Sequence[_Run], cells: Sequence[HeldOutCell], table: Mapping[str, Any],
             train_max: int, folder: Path, load_predictor: PredictorLoader | None = None) -> dict[str, Path]:
    """Every figure of :data:`FIGURES` but ``speed``; those of one cell show the largest test cell whose
    spectrum is computed (at most :data:`~hforge.train.evaluation.MAX_EIGEN_ORBITALS` orbitals)."""
    from hforge.analysis.plots import hamiltonian_heatmap, new_figure, save_figure
    from hforge.metrics import GammaLayout
    from hforge.metrics.blocks import align_reference
    from hforge.train.curves import plot_learning_curves
    from hforge.train.evaluation import MAX_EIGEN_ORBITALS
    from hforge.train.loop import read_log

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    sizes = sorted({c.data.n_atoms for c in cells})
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
        if shown[-1] > 8 * shown[0]:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(shown, [str(n) for n in shown])
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
    # largest cell with a spectrum: parity, error against distance, heatmap, spectrum
    dense = [c for c in cells if c.data.n_orbitals <= MAX_EIGEN_ORBITALS] or list(cells)
    largest = max(dense, key=lambda c: c.data.n_atoms)
    reference, name = largest.data, largest.name
    predictions = {r.kind: _predictor(r.kind, r.checkpoint, load_predictor, plan.threads)(reference) for r in first}
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


def _speed_figure(speed: Mapping[str, Any], spectra: Mapping[str, Any], path: Path) -> Path:
    """Left: SIESTA's wall (and CPU) time against each model's prediction; right: the Gaussian-broadened
    (0.1 eV) Γ DOS of DFT and each model (full S, best c·S removed; when the cell is small enough)."""
    from hforge.analysis.plots import new_figure, save_figure
    from hforge.analysis.spectrum import broadened_dos

    fig, (ax_time, ax_dos) = new_figure(2, size=(4.8, 4.0))
    siesta = speed["siesta"]
    bars = [(f"SIESTA wall ({siesta['processes'] or '?'} process)", siesta["wall_s"], "k"),
            ("SIESTA CPU", siesta["cpu_s"], "0.5")]
    for colour, (kind, timed) in enumerate(speed["hforge"].items()):
        bars += [(f"{kind} wall ({timed['threads']} threads, {timed['mode']})", timed["wall_s"], f"C{colour}"),
                 (f"{kind} CPU", timed["cpu_s"], f"C{colour}")]
    bars = [b for b in bars if b[1]]
    ax_time.barh(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    for y, (_, seconds, _) in enumerate(bars):
        ax_time.annotate(f" {seconds:.3g} s", (seconds, y), va="center", fontsize=7)
    ax_time.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax_time.invert_yaxis()
    ax_time.set_xscale("log")
    ax_time.set_xlabel("seconds")
    ax_time.set_title(f"{speed['cell']} ({speed['n_atoms']} atoms): SIESTA SCF vs HForge H and S", fontsize=9)
    energies = np.linspace(-8.0, 8.0, 1601)
    sigma = 0.1
    for colour, (kind, full) in enumerate(spectra.items()):
        centre = full.errors.gap_centre_eV
        if colour == 0:
            ax_dos.plot(broadened_dos(full.eigenvalues["ref"][0] - centre, energies, broadening=sigma), energies,
                        color="k", lw=1.5, label="DFT")
        e = full.errors
        ax_dos.plot(broadened_dos(full.eigenvalues["pred"][0] - centre, energies, broadening=sigma), energies,
                    color=f"C{colour}", lw=1, label=f"{kind} (ghost states {e.ghosts_low}/{e.ghosts_high})")
    if spectra:
        ax_dos.legend(fontsize=7)
    else:
        ax_dos.text(0.5, 0.5, f"DOS {speed['dos']}", ha="center", va="center", wrap=True, fontsize=8,
                    transform=ax_dos.transAxes)
    ax_dos.set_xlabel(f"DOS (states/eV, σ = {sigma} eV), Γ, full S, best c·S removed")
    ax_dos.set_ylabel("E - DFT gap centre (eV)")
    return save_figure(fig, path)


def _number(value: float | None) -> float:
    """A number of a report read back from strict JSON, where NaN was written as null."""
    return math.nan if value is None else float(value)


def _cell(stats: Mapping[str, Any], seeds: int, skipped: bool = False) -> str:
    mean = _number(stats["mean"])
    if not np.isfinite(mean):
        return "skipped§" if skipped else "–"
    return f"{mean:.3g} ± {_number(stats['std']):.2g}" if seeds > 1 else f"{mean:.3g}"


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
        ratios = [_number(per_size[big][k]["mean"]) / _number(per_size[small][k]["mean"]) for k in keys]
        lines.append(f"| {kind} | " + " | ".join(f"{r:.2f}" if np.isfinite(r) else "–" for r in ratios) + " |")
    key = "h_mae_shifted_meV"
    best = min(table, key=lambda k: _number(table[k][big][key]["mean"]))
    everywhere = all(min(table, key=lambda k: _number(table[k][str(n)][key]["mean"])) == best
                     for n in sizes if n >= least)
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
    external = results.get("external_cells", {})
    lines = [
        "# Transfer study: equivariant vs non-equivariant vs graph2mat",
        "",
        "Made by `hforge study` (hforge/train/study.py); every number below is measured by that run.",
        f"Reproduce: `{_command(plan)} --docs docs` (full: the store is converted from `../shared/abn` and "
        "`../shared/abn-extra` when absent).",
        "",
        f"- Data: `{plan['source']}`; training cells ({len(plan['train'])}): {', '.join(plan['train'])}.",
        "- Test cells (never trained on; the last step's weights, no selection on them): "
        + ", ".join(f"{n} ({a} atoms{', test-only ‡' if n in external else ''})" for n, a in results["test_cells"].items())
        + ".",
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
    sizes_of = results["test_cells"]
    outside = {sizes_of[n] for n in external}
    if external:
        lines += ["‡ test-only cells from outside the training store, never trained or validated on: "
                  + ", ".join(f"{n} (`{origin}`)" for n, origin in external.items())
                  + "; HForge's models predicted every test cell through the Predictor (`hforge.load`).", ""]
    skipped = results.get("skipped", {})
    for size, reason in skipped.items():
        lines += [f"§ {size} atoms: full-S spectrum not computed ({reason}); its spectrum columns say `skipped`.", ""]

    def header(n: int) -> str:
        return f"{n} atoms" + ("†" if n < least else "") + ("‡" if n in outside else "") + ("§" if str(n) in skipped else "")

    for key, title in COLUMNS.items():
        lines += [f"### {title}" + (" (mean ± std over seeds)" if seeds > 1 else ""), "",
                  "| model | " + " | ".join(header(n) for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for kind, per_size in table.items():
            lines.append(f"| {kind} | " + " | ".join(
                _cell(per_size[str(n)][key], seeds, key in SPECTRUM_COLUMNS and str(n) in skipped) for n in sizes) + " |")
        lines.append("")
    lines += _transfer_lines(results)
    lines += _speed_lines(results.get("speed"), results["figures"].get("speed"))
    lines += ["## Figures", ""]
    for key, path in results["figures"].items():
        if key != "speed":
            lines += [f"- {FIGURES[key]}: `{path}`", "", f"![{key}]({path})", ""]
    return "\n".join(lines)


def _command(plan: Mapping[str, Any], *options: str, tests: bool = True) -> str:
    """The ``hforge study`` command line of a plan (its budget, and its test-only cells with ``tests``) with ``options``."""
    words = ["hforge study", "quick" if plan["source"] == "abn-small" else "full", f"--steps {plan['steps']}"]
    words += [f"--seed {s}" for s in plan["seeds"]] + [f"--test {p}" for p in plan.get("external", ()) if tests]
    return " ".join(words + list(options))


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4g} s"


def _speed_lines(speed: Mapping[str, Any] | None, figure: str | None) -> list[str]:
    """The section comparing SIESTA's cost of the largest test cell with HForge's prediction time."""
    if not speed:
        return []
    siesta, machine = speed["siesta"], speed["machine"]
    lines = [f"## SIESTA against HForge on the largest test cell: {speed['cell']} ({speed['n_atoms']} atoms, "
             f"{speed['n_orbitals']} orbitals)", "",
             f"- SIESTA ({siesta['siesta'] or 'version not recorded'}, {siesta['processes'] or '?'} MPI process(es)), "
             f"the whole run to SCF convergence: wall {_seconds(siesta['wall_s'])}, CPU {_seconds(siesta['cpu_s'])}"
             + (f" (`{siesta['source']}`)" if siesta["source"] else "") + (f"; {siesta['note']}" if siesta["note"] else "")
             + ".",
             f"- HForge: H and S of the same structure by `Predictor.predict` (default plan), on {machine['host']} "
             f"({machine['cpus']} CPUs), the fastest of {SPEED_REPEATS} timed predictions after a warm-up, in the "
             "study's process; SIESTA's time is its own run's (same machine only if it ran here).", "",
             "| model | HForge wall (s) | HForge CPU (s) | torch threads | mode (parts) | SIESTA wall / HForge wall |",
             "|---|---:|---:|---:|---|---:|"]
    for kind, timed in speed["hforge"].items():
        ratio = speed["speedup_wall"].get(kind)
        lines.append(f"| {kind} | {timed['wall_s']:.3g} | {timed['cpu_s']:.3g} | {timed['threads']} | {timed['mode']} "
                     f"({timed['parts']}) | {'–' if ratio is None else f'{ratio:.3g}x'} |")
    lines += ["", f"DOS: {speed['dos']}.", ""]
    if figure:
        lines += [f"![speed]({figure})", ""]
    return lines


def write_report(out: str | os.PathLike, docs: str | os.PathLike | None = None) -> Path:
    """Write ``docs/results.md`` (default ``out``) from ``out/results.json`` (:func:`run_study`) and
    ``out/curve.json`` (:func:`learning_curve`), whichever exist; returns its path.

    Raises:
        ConfigError: neither file exists in ``out``.
    """
    out = Path(out)
    docs = Path(docs) if docs is not None else out
    parts = []
    if (out / "results.json").is_file():
        parts.append(study_markdown(json.loads((out / "results.json").read_text())))
    if (out / "curve.json").is_file():
        parts.append(curve_markdown(json.loads((out / "curve.json").read_text()), heading=2 if parts else 1))
    if not parts:
        raise ConfigError(f"study: {out} holds neither results.json nor curve.json")
    path = docs / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------
# the learning curve
# ---------------------------------------------------------------------------------------
def nested_subsets(sizes: Mapping[str, int], fractions: Sequence[float], seed: int = 0) -> list[tuple[str, ...]]:
    """Nested subsets of the cells ``sizes`` (name -> atoms), one per fraction, each keeping the size mix.

    The cells are put in one order: within each size a permutation drawn from ``seed``; the sizes
    interleaved by largest deficit (the m-th cell comes from the size furthest below its share
    ``m n_size / n``, ties broken by an order drawn from ``seed``), so that every prefix holds each size in
    proportion to the prefix within one cell.  A fraction ``f`` takes the first ``round(f n)`` cells
    (at least one): smaller fractions give subsets of larger ones, and the same seed the same subsets.

    Raises:
        ConfigError: no cells, or a fraction outside (0, 1].
    """
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not sizes:
        raise ConfigError(f"study: fractions must lie in (0, 1] and there must be cells (got fractions {list(fractions)}, "
                          f"{len(sizes)} cells)")
    rng = np.random.default_rng(seed)
    groups = [sorted(n for n, a in sizes.items() if a == size) for size in sorted(set(sizes.values()))]
    groups = [[names[i] for i in rng.permutation(len(names))] for names in groups]
    ties = rng.permutation(len(groups))
    taken = [0] * len(groups)
    ordered: list[str] = []
    for m in range(1, len(sizes) + 1):
        deficit = [m * len(g) / len(sizes) - k if k < len(g) else -math.inf for g, k in zip(groups, taken)]
        g = max(range(len(groups)), key=lambda j: (round(deficit[j], 9), -ties[j]))
        ordered.append(groups[g][taken[g]])
        taken[g] += 1
    return [tuple(ordered[: max(1, math.floor(f * len(ordered) + 0.5))]) for f in fractions]


def _curve_folder(out: Path, kind: str, seed: int, subset: Sequence[str], train: Sequence[str], pick_seed: int) -> Path:
    """A curve training's folder: the study's own (``runs/<model>-s<seed>``) for the whole training set,
    ``runs/<model>-s<seed>-<k>of<n>-pick<pick_seed>`` for a subset of ``k`` of its ``n`` cells."""
    name = f"{kind}-s{seed}" if len(subset) == len(train) else f"{kind}-s{seed}-{len(subset)}of{len(train)}-pick{pick_seed}"
    return out / "runs" / name


def _curve_errors(summary: Mapping[str, float]) -> dict[str, float]:
    """The curve's errors (:data:`CURVE_METRICS`) of one evaluated cell."""
    errors = {key: summary.get(key, np.nan) for key in CURVE_METRICS if key != "ghosts"}
    errors["ghosts"] = summary.get("ghosts_low", np.nan) + summary.get("ghosts_high", np.nan)
    return errors


def _held_out_means(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The curve's errors, each the mean over the evaluated cells of its value, and ``per_cell`` (name -> errors)."""
    from hforge.train.evaluation import nan_mean

    per_cell = {e["name"]: _curve_errors(e["summary"]) for e in evaluation["structures"]}
    means: dict[str, Any] = {key: nan_mean(c[key] for c in per_cell.values()) for key in CURVE_METRICS}
    means["per_cell"] = per_cell
    return means


def _curve_fit(points: Sequence[Mapping[str, Any]], key: str, goal: float) -> dict[str, Any]:
    """The power-law fit of one model's ``key`` against the training atoms, and the atoms ``goal`` needs."""
    from hforge.errors import InputError
    from hforge.train.power_law import fit_power_law

    usable = [p for p in points if np.isfinite(p[key]) and p[key] > 0]
    try:
        fit = fit_power_law([p["atoms"] for p in usable], [p[key] for p in usable])
    except InputError as error:
        return {"determined": False, "note": error.message, "goal": {"goal": goal, "n": None, "low": None, "high": None,
                                                                       "note": f"no fit: {error.message}"}}
    return {**fit.to_dict(), "goal": fit.n_for(goal).to_dict()}


def learning_curve(
    plan: StudyPlan,
    out: str | os.PathLike,
    *,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    models: Sequence[str] = ("equivariant", "invariant"),
    pick_seed: int = 0,
    goal: float = GOAL_MEV,
    docs: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    load_predictor: PredictorLoader | None = None,
) -> dict[str, Any]:
    """Held-out error against the number of training atoms, and the atoms the goal would need.

    Every model and seed of ``plan`` is trained with the plan's budget on each subset
    :func:`nested_subsets` gives (subsets equal for two fractions are trained once), in the study's
    folder layout (:func:`_curve_folder`: the whole training set is the study's own training, reused;
    a killed curve resumes), and evaluated on the plan's test cells of at least
    ``plan.transfer_min_atoms`` atoms (all of them where none is that large).  Each point's errors
    (:data:`CURVE_METRICS`) are means over those cells; H MAE and the per-atom onsite RMSE get a
    power-law fit per model over all seeds' points (:func:`~hforge.train.power_law.fit_power_law`)
    with the atoms at which it reaches ``goal`` meV.

    Args:
        plan: the study's plan (its test-only cells are not used here).
        out: the study's working folder; ``curve.json`` is written there.
        fractions: fractions of ``plan.train``.
        models: a subset of :data:`MODELS`.
        pick_seed: the seed of the subsets.
        goal: the error (meV) the fits are asked about.
        docs, progress, log, load_predictor: as :func:`run_study`.

    Returns:
        The content of ``curve.json``: the settings, the subsets, one point per model, seed and
        distinct subset (cells, atoms, training time, errors), the fits and the figure path.

    Raises:
        ConfigError: unknown models, fractions outside (0, 1], or a folder holding a training of
            other cells.
    """
    from hforge.datasets import load

    log = log or logger.info
    out = Path(out)
    docs = Path(docs) if docs is not None else out
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ConfigError(f"study: learning-curve models {list(models)} (known: {list(MODELS)})")
    store = load(plan.source).store
    names = _store_names(plan.source)
    subsets = nested_subsets({n: names[n] for n in plan.train}, fractions, pick_seed)
    held_out = [n for n in plan.test if names[n] >= plan.transfer_min_atoms] or list(plan.test)
    references = [store.read(n) for n in held_out]
    start = time.perf_counter()
    points: list[dict[str, Any]] = []
    for seed in plan.seeds:
        for kind in models:
            done: dict[Path, dict[str, Any]] = {}
            for fraction, subset in zip(fractions, subsets):
                train = tuple(n for n in plan.train if n in subset)
                folder = _curve_folder(out, kind, seed, train, plan.train, pick_seed)
                if folder in done:
                    done[folder]["fractions"].append(fraction)
                    continue
                atoms = sum(names[n] for n in train)
                log(f"{kind}, seed {seed}, fraction {fraction:.3g}: {len(train)} cells, {atoms} atoms -> {folder}")
                checkpoint, train_s = _train(replace(plan, train=train), kind, seed, folder, progress)
                evaluation = _evaluate(kind, checkpoint, references, load_predictor, thresholds=(), threads=plan.threads)
                point = {"model": kind, "seed": seed, "fractions": [fraction], "cells": len(train), "atoms": atoms,
                         "train_s": train_s, "folder": str(folder), **_held_out_means(evaluation)}
                log(f"  held out: H MAE {point['h_mae_shifted_meV']:.2f} meV (c·S removed), onsite RMSE "
                    f"{point['onsite_atom_rmse_meV']:.1f} meV, ghost states {point['ghosts']:.3g}")
                done[folder] = point
                points.append(point)
    fits = {kind: {key: _curve_fit([p for p in points if p["model"] == kind], key, goal) for key in CURVE_FITTED}
            for kind in models}
    curve = {
        "plan": plan.to_dict(), "fractions": list(fractions), "models": list(models), "pick_seed": pick_seed,
        "goal_meV": goal, "held_out": {n: names[n] for n in held_out},
        "subsets": [{"fraction": f, "cells": list(s), "atoms": sum(names[n] for n in s)} for f, s in zip(fractions, subsets)],
        "points": points, "fits": fits, "wall_s": time.perf_counter() - start,
    }
    figure = _curve_figure(curve, docs / "figures" / "learning_curve_atoms.png")
    curve["figure"] = os.path.relpath(figure, docs)
    write_json(out / "curve.json", curve)
    report = write_report(out, docs)
    log(f"wrote {out / 'curve.json'} and {report}")
    return curve


def _curve_figure(curve: Mapping[str, Any], path: Path) -> Path:
    """One panel per :data:`CURVE_METRICS`, log-log against the training atoms: each point one seed, the
    line the mean over seeds, the fits (solid where they hold, dashed beyond the data) and the goal."""
    from hforge.analysis.plots import new_figure, save_figure

    fig, axes = new_figure(2, nrows=2, size=(4.4, 3.4), sharex=True)
    axes = axes.ravel()
    for colour, kind in enumerate(curve["models"]):
        points = [p for p in curve["points"] if p["model"] == kind]
        atoms = sorted({p["atoms"] for p in points})
        for ax, (key, label) in zip(axes, CURVE_METRICS.items()):
            ax.plot([p["atoms"] for p in points], [p[key] for p in points], "o", ms=3, color=f"C{colour}", alpha=0.6)
            mean = [np.nanmean([p[key] for p in points if p["atoms"] == n]) for n in atoms]
            ax.plot(atoms, mean, "-", color=f"C{colour}", lw=1, label=kind)
            fit = curve["fits"][kind].get(key)
            if fit and "a" in fit and atoms:
                reach = fit["goal"]["n"] if fit["determined"] and fit["goal"]["n"] else atoms[-1]
                grid = np.geomspace(atoms[0], max(atoms[-1], min(reach, 1e3 * atoms[-1])), 100)
                law = fit["a"] * grid ** -fit["b"] + fit["floor"]
                inside = grid <= atoms[-1]
                style = "-" if fit["determined"] else ":"
                ax.plot(grid[inside], law[inside], style, color=f"C{colour}", lw=2, alpha=0.4,
                        label=f"fit: b = {fit['b']:.2f} ± {_number(fit['sigma_b']):.2g}" + ("" if fit["determined"] else
                                                                                   " (not determined)"))
                ax.plot(grid[~inside], law[~inside], "--", color=f"C{colour}", lw=1, alpha=0.4)
            ax.set_ylabel(label)
    for ax, key in zip(axes, CURVE_METRICS):
        ax.set_xscale("log")
        if key != "ghosts":
            ax.set_yscale("log")
        if key in CURVE_FITTED:
            ax.axhline(curve["goal_meV"], color="0.4", ls=":", lw=1, label=f"goal {curve['goal_meV']:g} meV")
        ax.legend(fontsize=6)
    for ax in axes[len(axes) // 2:]:
        ax.set_xlabel("training atoms")
    plan = curve["plan"]
    fig.suptitle(f"held out: {', '.join(curve['held_out'])} (mean over cells); {plan['steps']} steps per training, "
                 f"seeds {plan['seeds']}, subsets nested (pick seed {curve['pick_seed']})", fontsize=9)
    return save_figure(fig, path)


def _goal_text(fit: Mapping[str, Any], goal: float) -> str:
    estimate = fit["goal"]
    if estimate["n"] is None:
        return f"{goal:g} meV: {estimate['note']}"
    interval = "" if estimate["low"] is None else f" (one sigma {estimate['low']:.3g}-{estimate['high']:.3g})"
    return f"{goal:g} meV at N ≈ {estimate['n']:.3g} training atoms{interval}; {estimate['note']}"


def curve_markdown(curve: Mapping[str, Any], *, heading: int = 1) -> str:
    """The learning curve's section of ``results.md``: settings, table, fits, figure."""
    plan, goal = curve["plan"], curve["goal_meV"]
    seeds = len(plan["seeds"])
    h = "#" * heading
    options = " ".join([f"--fraction {f:g}" for f in curve["fractions"]] + [f"--model {m}" for m in curve["models"]]
                       + [f"--pick-seed {curve['pick_seed']}"])
    lines = [
        f"{h} Learning curve: held-out error against the training atoms", "",
        f"Made by `{_command(plan, '--curve', options, tests=False)} --docs docs` (hforge/train/study.py, "
        "`learning_curve`).", "",
        "- Held out (never trained on; the mean over these cells of each cell's value): "
        + ", ".join(f"{n} ({a} atoms)" for n, a in curve["held_out"].items()) + ".",
        f"- Subsets: fractions {', '.join(f'{f:g}' for f in curve['fractions'])} of the {len(plan['train'])} training "
        f"cells, nested (each contains the smaller ones) and keeping the size mix, drawn with pick seed "
        f"{curve['pick_seed']}; the whole set is the transfer study's own training.",
        f"- Budget of every training: {plan['steps']} optimizer steps of {plan['batch_atoms']} atoms, peak lr "
        f"{plan['lr']:g}, seeds {plan['seeds']} (each seed a point), the last step's weights.",
        f"- Fits: err = a N^-b (+ a floor where an F-test and its standard error support one), least squares of "
        f"ln err over every seed's points; the training atoms at which the fit reaches the {goal:g} meV goal with its "
        "one-sigma interval, or why the fit does not say.", "",
        "| model | fractions | cells | training atoms | " + " | ".join(CURVE_METRICS.values())
        + " | training (s) |", "|---" * (len(CURVE_METRICS) + 5) + "|",
    ]
    for kind in curve["models"]:
        points = [p for p in curve["points"] if p["model"] == kind]
        for atoms in sorted({p["atoms"] for p in points}):
            group = [p for p in points if p["atoms"] == atoms]
            cells = []
            for key in CURVE_METRICS:
                values = np.array([p[key] for p in group], dtype=float)
                mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                std = float(np.nanstd(values)) if np.isfinite(values).sum() > 1 else 0.0
                cells.append("–" if not np.isfinite(mean) else (f"{mean:.3g} ± {std:.2g}" if seeds > 1 else f"{mean:.3g}"))
            fractions = ", ".join(f"{f:g}" for f in group[0]["fractions"])
            train_s = np.mean([p["train_s"] for p in group])
            lines.append(f"| {kind} | {fractions} | {group[0]['cells']} | {atoms} | " + " | ".join(cells)
                         + f" | {train_s:.0f} |")
    lines += [""]
    for kind in curve["models"]:
        for key in CURVE_FITTED:
            fit = curve["fits"][kind][key]
            label = CURVE_METRICS[key]
            if "a" not in fit:
                lines.append(f"- {kind}, {label}: no fit ({fit['note']}).")
                continue
            law = f"{fit['a']:.3g} N^-({fit['b']:.3g} ± {_number(fit['sigma_b']):.2g})"
            if fit["has_floor"]:
                law += f" + {fit['floor']:.3g} ± {_number(fit['sigma_floor']):.2g}"
            law = f"- {kind}, {label}: {law} over {fit['n_points']} points at {fit['n_sizes']} sizes"
            if not fit["determined"]:
                lines.append(f"{law}: **not determined**, no goal estimate ({fit['note']}).")
                continue
            lines.append(f"{law}; {_goal_text(fit, goal)}" + (f" ({fit['note']})" if fit["note"] else "") + ".")
    lines += ["", f"![learning curve]({curve['figure']})", "", f"- {CURVE_FIGURE}: `{curve['figure']}`", ""]
    return "\n".join(lines)

