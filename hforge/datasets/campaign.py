"""Campaigns: many SIESTA reference runs from one YAML file, resumable at any moment.

A campaign file names the cells to make and how to run SIESTA on them::

    template: ../shared/abn/runs/abn_8_0   # SIESTA settings (default: $HFORGE_SHARED or ../shared, abn/runs/abn_8_0)
    settings: {MeshCutoff: 400 Ry}         # fdf lines replacing the template's (optional)
    workers: auto                          # SIESTA runs at once: the free cores // threads
    threads: 1                             # OpenMP threads of each SIESTA run
    max_attempts: 3                        # a run that fails this often is given up
    store: abn-more.h5                     # optional: a compact store of the converged runs
    cells:
      - sizes: [16, 32]                    # melt-quenched aBN (hforge structure abn)
        seeds: [0, 1, 2]
        densities: [2.2]
        protocol: full
        split: train                       # train, val or test (default: by size, SplitRule)
        snapshots:                         # thermal snapshots of each quenched cell (Langevin MD)
          temperatures: [300, 1000]
          count: 4
          interval_ps: 0.5
          equilibration_ps: 1.0
          dm_from_parent: true             # start their SCF from the quenched cell's density matrix
      - sizes: [216, 512]
        seeds: [100]
        protocol: fast
        split: test                        # test-only: never in a training split
      - files: [cells/special.xyz]         # structures made elsewhere (any format ASE reads)

Relative paths are relative to the campaign file.  Run names: ``abn_<atoms>_<seed>_d<density in
cg/cm3>`` (``_fast`` appended for the fast protocol), a snapshot ``<parent>_T<kelvin>_<k>``, a
file its stem.  Everything goes into the campaign folder (``OUT``)::

    OUT/structures/<name>.xyz     every structure (extended XYZ with the generator's info)
    OUT/runs/<name>/              SIESTA run folders (siesta_pool); <name>.record.json when finished
    OUT/records.jsonl             one record per finished run, in campaign order
    OUT/<store>                   the compact store, when the file names one

:func:`run_campaign` makes the missing structures, writes the missing inputs (the template's fdf
with the geometry, the ``settings`` and ``DM.UseSaveDM T``), runs SIESTA on every run that has
not finished (:class:`~hforge.datasets.siesta_pool.SiestaPool`) and writes one record per run
(:func:`~hforge.datasets.run_records.run_record`, plus the campaign's fields and how the run
went).  Killed at any moment, the same call resumes.  Only converged runs enter the store;
unconverged and failed ones are in the records and the report.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from hforge.datasets.run_records import run_record
from hforge.datasets.siesta_pool import Job, RunState, SiestaPool, free_cores, settle
from hforge.datasets.siesta_runs import fdf_key, find_siesta, read_structures, write_siesta_inputs
from hforge.errors import ConfigError, InputError
from hforge.files import atomic_write, to_json, write_json
from hforge.io.store import ConversionReport, SplitRule, convert
from hforge.ops.two_centre import overlap_blocks
from hforge.structures import DENSITY_RANGE, PROTOCOLS, amorphous_bn, thermal_snapshots

__all__ = [
    "Campaign",
    "CampaignReport",
    "CellGroup",
    "PlannedRun",
    "Snapshots",
    "PROCESS_FIELDS",
    "compare_records",
    "default_template",
    "load_campaign",
    "make_structures",
    "run_campaign",
]

logger = logging.getLogger(__name__)

#: fdf settings every campaign run gets: restart from the density matrix SIESTA saves each SCF step.
CAMPAIGN_SETTINGS = {"DM.UseSaveDM": "T"}
_REFUSED_SETTINGS = ("DM.UseSaveDM", "Write.DM", "Write.DM.End.Of.Cycle", "SystemLabel", "SystemName")

#: Record fields that say how a run went (time, SCF path, restarts), not what it gave: they differ
#: between an interrupted and an uninterrupted campaign; every other field is the same.
PROCESS_FIELDS = (
    "wall_s", "siesta_elapsed_s", "scf_iterations", "final_dDmax", "final_dHmax_eV", "dm_from_file", "dm_parent",
    "attempts", "failures", "interrupted", "interrupted_scf_steps",
)

#: Relative SIESTA cost of a cell of N atoms (N^1.5: 8 atoms ~70 s, 32 ~6 min, 128 ~83 min on one core), for the ETA.
COST_EXPONENT = 1.5


def default_template() -> Path:
    """The shared runs' template, ``abn/runs/abn_8_0`` of ``$HFORGE_SHARED`` (else ``../shared``)."""
    return Path(os.environ.get("HFORGE_SHARED", Path.cwd().parent / "shared")) / "abn" / "runs" / "abn_8_0"


def _fail(where: str, why: str, value: Any) -> None:
    raise ConfigError(f"campaign: {where}={value!r}: {why}")


def _build(cls: type, where: str, data: Any) -> Any:
    """``cls(**data)`` refusing unknown fields, naming ``where`` in every error."""
    if not isinstance(data, Mapping):
        _fail(where, "must be a mapping", data)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"campaign: unknown fields {unknown} in {where}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"campaign: {where}: {exc}") from None


def _numbers(where: str, value: Any, kind: type) -> tuple:
    """``value`` (a number or a list of them) as a tuple of ``kind`` (int, or float accepting ints too)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    accepted = (int, float) if kind is float else (int,)
    if not all(isinstance(v, accepted) and not isinstance(v, bool) for v in values):
        _fail(where, f"must be a list of {kind.__name__}s", value)
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class Snapshots:
    """Thermal snapshots of each cell of a group (:func:`~hforge.structures.thermal_snapshots`).

    Attributes:
        temperatures: K; one MD trajectory per temperature.
        count: snapshots per temperature.
        interval_ps: ps between snapshots.  equilibration_ps: ps before the first.
        dm_from_parent: start each snapshot's SCF from its cell's converged density matrix.
    """

    temperatures: tuple[float, ...]
    count: int = 1
    interval_ps: float = 0.5
    equilibration_ps: float = 1.0
    dm_from_parent: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", _numbers("snapshots.temperatures", self.temperatures, float))
        if not self.temperatures or not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            _fail("snapshots.temperatures", "positive temperatures in K", self.temperatures)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            _fail("snapshots.count", "a positive integer", self.count)
        for name, zero_ok in (("interval_ps", False), ("equilibration_ps", True)):
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not (number and (value > 0 or (zero_ok and value == 0))):
                _fail(f"snapshots.{name}", "a number of ps >= 0" if zero_ok else "a positive number of ps", value)
        if not isinstance(self.dm_from_parent, bool):
            _fail("snapshots.dm_from_parent", "true or false", self.dm_from_parent)


@dataclass(frozen=True)
class CellGroup:
    """One entry of ``cells``: generated aBN cells (``sizes`` x ``seeds`` x ``densities``) or ``files``.

    Attributes:
        sizes: atoms per cell (even).  seeds: generator seeds.  densities: g/cm³.
        protocol: melt-quench protocol (``full`` or ``fast``, :data:`~hforge.structures.PROTOCOLS`).
        files: structure files (instead of generated cells).
        split: ``train``, ``val`` or ``test`` for every run of the group (snapshots included);
            None: by size (:class:`~hforge.io.SplitRule`).
        snapshots: thermal snapshots of every cell, or None.
    """

    sizes: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    densities: tuple[float, ...] = (2.2,)
    protocol: str = "full"
    files: tuple[Path, ...] = ()
    split: str | None = None
    snapshots: Snapshots | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", _numbers("cells.sizes", self.sizes, int) if self.sizes != () else ())
        object.__setattr__(self, "seeds", _numbers("cells.seeds", self.seeds, int))
        object.__setattr__(self, "densities", _numbers("cells.densities", self.densities, float))
        files = self.files if isinstance(self.files, (list, tuple)) else [self.files]
        object.__setattr__(self, "files", tuple(Path(f) for f in files))
        if bool(self.sizes) == bool(self.files):
            _fail("cells", "give either sizes (generated cells) or files", {"sizes": self.sizes, "files": self.files})
        for n in self.sizes:
            if n < 2 or n % 2:
                _fail("cells.sizes", "even numbers of atoms (equal B and N), at least 2", self.sizes)
        low, high = DENSITY_RANGE
        if not all(low <= d <= high for d in self.densities):
            _fail("cells.densities", f"densities in [{low}, {high}] g/cm3", self.densities)
        if self.protocol not in PROTOCOLS:
            _fail("cells.protocol", f"one of {sorted(PROTOCOLS)}", self.protocol)
        if self.split not in (None, "train", "val", "test"):
            _fail("cells.split", "train, val, test or null", self.split)
        if self.snapshots is not None and not isinstance(self.snapshots, Snapshots):
            object.__setattr__(self, "snapshots", _build(Snapshots, "cells.snapshots", self.snapshots))


@dataclass(frozen=True)
class Campaign:
    """A campaign file (module docstring); paths resolved against the file's folder.

    Attributes:
        cells: the groups of cells.
        template: SIESTA run folder or fdf whose settings every run copies (:func:`default_template`).
        basis: folder of the ``.ion`` files, when not beside the template.
        settings: fdf label -> value replacing the template's lines.
        siesta: SIESTA command (default ``$SIESTA``, else ``siesta`` on ``PATH``).
        workers: SIESTA runs at once (None: :func:`~hforge.datasets.siesta_pool.free_cores` // threads).
        threads: OpenMP threads of each SIESTA run.
        max_attempts: failed attempts after which a run is given up.
        store: compact store written from the converged runs (relative to the campaign folder), or None.
    """

    cells: tuple[CellGroup, ...]
    template: Path | None = None
    basis: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    siesta: str | None = None
    workers: int | None = None
    threads: int = 1
    max_attempts: int = 3
    store: Path | None = None

    def __post_init__(self) -> None:
        cells = self.cells if isinstance(self.cells, (list, tuple)) else _fail("cells", "a list of groups", self.cells)
        object.__setattr__(self, "cells", tuple(c if isinstance(c, CellGroup) else _build(CellGroup, "cells", c) for c in cells))
        if not self.cells:
            _fail("cells", "at least one group", self.cells)
        if not isinstance(self.settings, Mapping):
            _fail("settings", "a mapping of fdf labels to values", self.settings)
        object.__setattr__(self, "settings", {str(k): str(v) for k, v in self.settings.items()})
        refused = sorted(k for k in self.settings if fdf_key(k) in {fdf_key(r) for r in _REFUSED_SETTINGS})
        if refused:
            _fail("settings", f"the campaign sets {', '.join(_REFUSED_SETTINGS)} itself", refused)
        if self.workers == "auto":
            object.__setattr__(self, "workers", None)
        for name, value in (("workers", self.workers), ("threads", self.threads), ("max_attempts", self.max_attempts)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                _fail(name, "a positive integer" + (" or auto" if name == "workers" else ""), value)
        for name in ("template", "basis", "store"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    def resolved(self, base: Path) -> Campaign:
        """The campaign with relative paths taken relative to ``base`` (the campaign file's folder)."""
        def at(path: Path | None) -> Path | None:
            return None if path is None else (path if path.is_absolute() else base / path)

        cells = tuple(CellGroup(**{**{f.name: getattr(c, f.name) for f in fields(c)}, "files": tuple(at(f) for f in c.files)})
                      for c in self.cells)
        return Campaign(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "cells": cells,
                           "template": at(self.template), "basis": at(self.basis)})

    def plan(self) -> list[PlannedRun]:
        """Every run of the campaign, in file order (a cell before its snapshots).

        Raises:
            ConfigError: two runs with the same name.
            FileFormatError, GeometryError: an unreadable or unphysical structure file.
        """
        runs: list[PlannedRun] = []
        for group in self.cells:
            cells: list[PlannedRun] = []
            for n in group.sizes:
                for seed in group.seeds:
                    for density in group.densities:
                        suffix = "" if group.protocol == "full" else f"_{group.protocol}"
                        cells.append(PlannedRun(
                            f"abn_{n}_{seed}_d{round(density * 100)}{suffix}", "quenched", n, group.split,
                            seed=seed, density=density, protocol=group.protocol,
                        ))
            for name, atoms, path in read_structures(group.files) if group.files else ():
                cells.append(PlannedRun(name, "file", len(atoms), group.split, source=path))
            for cell in cells:
                runs.append(cell)
                for temperature in group.snapshots.temperatures if group.snapshots else ():
                    for k in range(group.snapshots.count):
                        runs.append(PlannedRun(
                            f"{cell.name}_T{temperature:g}_{k}", "snapshot", cell.n_atoms, group.split, seed=cell.seed,
                            parent=cell.name, temperature=temperature, index=k, interval_ps=group.snapshots.interval_ps,
                            equilibration_ps=group.snapshots.equilibration_ps, dm_from_parent=group.snapshots.dm_from_parent,
                        ))
        names = [r.name for r in runs]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"campaign: these runs are listed more than once: {', '.join(duplicated)}")
        return runs


@dataclass(frozen=True)
class PlannedRun:
    """One run of a campaign.

    Attributes:
        name: run name (module docstring).  kind: ``quenched``, ``file`` or ``snapshot``.
        n_atoms: atoms.  split: ``train``, ``val``, ``test`` or None (by size).
        seed, density, protocol: of a generated cell (a snapshot keeps its cell's seed).
        source: the structure file of a ``file`` run.
        parent, temperature, index: of a snapshot: its cell's run, the MD temperature (K), its number.
        interval_ps, equilibration_ps: of a snapshot: its trajectory's times (:class:`Snapshots`).
        dm_from_parent: a snapshot whose SCF starts from its cell's density matrix.
    """

    name: str
    kind: str
    n_atoms: int
    split: str | None
    seed: int | None = None
    density: float | None = None
    protocol: str | None = None
    source: Path | None = None
    parent: str | None = None
    temperature: float | None = None
    index: int | None = None
    interval_ps: float | None = None
    equilibration_ps: float | None = None
    dm_from_parent: bool = False

    def fields(self) -> dict[str, Any]:
        """The campaign's fields of the run's record."""
        out = {k: v for k, v in asdict(self).items() if k not in ("dm_from_parent", "n_atoms")}
        out["source"] = None if self.source is None else str(self.source)
        return out


def load_campaign(path: str | os.PathLike) -> Campaign:
    """A :class:`Campaign` from a YAML file, relative paths resolved against its folder.

    Raises:
        ConfigError: a missing or unparsable file, or an invalid campaign (naming the file).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such campaign file", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    try:
        return _build(Campaign, "the file", data if data is not None else {}).resolved(path.parent.resolve())
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path) from None


# ---- structures ---------------------------------------------------------------------------------


def _write_structure(path: Path, atoms: Any) -> None:
    import ase.io

    with atomic_write(path, None) as tmp:
        ase.io.write(tmp, atoms, format="extxyz")


def _snapshot_seed(seed: int | None, temperature: float) -> int:
    """The MD seed of a cell's snapshots at one temperature: a function of the cell's seed and the temperature."""
    return int(np.random.SeedSequence([seed or 0, round(temperature * 1000)]).generate_state(1)[0])


def make_structures(plan: Sequence[PlannedRun], folder: Path, *, progress: bool = True) -> dict[str, Path]:
    """Write ``folder/<name>.xyz`` for every run of ``plan`` that lacks it; the paths by name.

    Snapshots are taken from their cell's file as written (so a resumed campaign takes the same ones).
    """
    import ase.io
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    paths = {run.name: folder / f"{run.name}.xyz" for run in plan}
    missing = [run for run in plan if not paths[run.name].is_file()]
    for run in tqdm(missing, desc="structures", unit="cell", disable=not progress or not missing):
        if paths[run.name].is_file():  # written with its trajectory's other snapshots
            continue
        if run.kind == "quenched":
            atoms = amorphous_bn(run.n_atoms, density=run.density, seed=run.seed, protocol=run.protocol, progress=progress)
            _write_structure(paths[run.name], atoms)
        elif run.kind == "file":
            (atoms,) = [a for name, a, _ in read_structures([run.source]) if name == run.name]
            _write_structure(paths[run.name], atoms)
        else:
            siblings = [r for r in plan if r.parent == run.parent and r.temperature == run.temperature]
            snapshots = thermal_snapshots(
                ase.io.read(paths[run.parent]), temperature=run.temperature, count=max(r.index for r in siblings) + 1,
                interval=run.interval_ps, equilibration=run.equilibration_ps,
                seed=_snapshot_seed(run.seed, run.temperature), progress=progress,
            )
            for sibling in siblings:
                if not paths[sibling.name].is_file():
                    _write_structure(paths[sibling.name], snapshots[sibling.index])
    return paths


# ---- running ------------------------------------------------------------------------------------


@dataclass
class CampaignReport:
    """What :func:`run_campaign` left.

    Attributes:
        folder: the campaign folder.
        records: the record of every finished run, in campaign order.
        store: the compact store written, or None (none asked for, or no run converged).
        conversion: the store conversion's report (runs it skipped, e.g. an S that is not the basis'), or None.
    """

    folder: Path
    records: list[dict[str, Any]]
    store: Path | None = None
    conversion: ConversionReport | None = None

    def names(self, state: str) -> list[str]:
        """Runs in a state: ``converged``, ``unconverged`` or ``failed``."""
        return [r["name"] for r in self.records if r["state"] == state]


class _CampaignLock:
    """An exclusive lock on ``folder/.campaign.lock`` for as long as the campaign runs (released when its process dies)."""

    def __init__(self, folder: Path) -> None:
        self.handle = open(folder / ".campaign.lock", "ab")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise InputError("another campaign runs in this folder", path=folder) from None

    def __enter__(self) -> _CampaignLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _record(run: PlannedRun, folder: Path, state: RunState) -> dict[str, Any]:
    """The record of a finished run (module docstring of :mod:`hforge.datasets.run_records` + the campaign's fields)."""
    if (folder / f"{run.name}.out").is_file():
        record = run_record(folder)
    else:  # given up: the last failed attempt's log says why
        failed = sorted(folder.glob(f"{run.name}.failed*.log"), key=lambda p: p.stat().st_mtime)
        detail = failed[-1].name if failed else ""
        record = {"name": run.name, "state": "failed", "detail": f"{state.failures} attempts failed (last log {detail})",
                  "converged": False}
    record.update(run.fields())
    record.update(
        natoms=record.get("natoms", run.n_atoms),
        wall_s=record.get("siesta_elapsed_s"),
        attempts=state.failures + state.interrupted + (state.state != "failed"),
        failures=state.failures,
        interrupted=state.interrupted,
        interrupted_scf_steps=state.interrupted_scf_steps,
        dm_parent=state.dm_parent,
    )
    return record


def run_campaign(
    campaign: Campaign | str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    siesta: str | None = None,
    progress: bool = True,
) -> CampaignReport:
    """Make every run of a campaign that is not finished, and its records (and store).

    Args:
        campaign: a :class:`Campaign` or the path of a campaign file.
        out: the campaign folder (the same folder resumes the campaign).
        workers: SIESTA runs at once (default: the campaign's, else free cores // threads).
        siesta: the SIESTA command (default: the campaign's, else ``$SIESTA`` / ``siesta`` on PATH).
        progress: show progress bars (structures; SIESTA runs with an ETA).

    Returns:
        A :class:`CampaignReport`.  Unconverged and failed runs are in its records, never in the store.

    Raises:
        ConfigError: an invalid campaign.  InputError: another campaign runs in ``out``, or a run
        folder there holds another input.  BackendUnavailableError: runs to do and no SIESTA.
    """
    campaign = campaign if isinstance(campaign, Campaign) else load_campaign(campaign)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = campaign.plan()
    with _CampaignLock(out):
        structures = make_structures(plan, out / "structures", progress=progress)
        template = campaign.template or default_template()
        settings = {**campaign.settings, **CAMPAIGN_SETTINGS}
        folders = write_siesta_inputs([structures[r.name] for r in plan], template, out / "runs",
                                      basis=campaign.basis, settings=settings)
        folder_of = {f.name: f for f in folders}
        jobs = [
            Job(folder_of[r.name], after=folder_of[r.parent] if r.dm_from_parent else None, weight=r.n_atoms**COST_EXPONENT)
            for r in plan
        ]
        by_name = {r.name: r for r in plan}
        records: dict[str, dict[str, Any]] = {}

        def finished(job: Job, state: RunState) -> None:
            path = job.folder / f"{job.name}.record.json"
            old = json.loads(path.read_text()) if path.is_file() else None
            if old is not None and (old["state"], old["failures"]) == (state.state, state.failures):
                record = {**old, **by_name[job.name].fields()}  # the run's numbers are kept: a large cell's cost minutes
            else:
                record = _record(by_name[job.name], job.folder, state)
            if record != old:
                write_json(path, record)
            records[job.name] = record
            with atomic_write(out / "records.jsonl", "w") as f:
                f.writelines(to_json(records[r.name], indent=None) + "\n" for r in plan if r.name in records)

        todo = [job for job in jobs if not settle(job.folder, campaign.max_attempts).finished]
        command = find_siesta(siesta or campaign.siesta) if todo else []
        n_workers = workers or campaign.workers or max(1, free_cores() // campaign.threads)
        pool = SiestaPool(command, workers=n_workers, threads=campaign.threads, max_attempts=campaign.max_attempts)
        logger.info("campaign %s: %d runs, %d to do, %d workers", out, len(plan), len(todo), n_workers)
        pool.run(jobs, on_finish=finished, progress=progress)
        report = CampaignReport(out, [records[r.name] for r in plan])
        converged = [folder_of[name] for name in report.names("converged")]
        if campaign.store is not None and converged:
            report.store = campaign.store if campaign.store.is_absolute() else out / campaign.store
            splits = {r.name: r.split for r in plan if r.split is not None}
            # the store is the campaign's product, rebuilt from its converged runs on every pass (parts reused)
            report.conversion = convert(converged, report.store, basis=campaign.basis, overlap=overlap_blocks,
                                        splits=splits, split_rule=SplitRule(), progress=progress, overwrite=True)
    return report


def compare_records(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], *, energy_tolerance: float = 1e-3
) -> list[str]:
    """Differences between two campaigns' records beyond :data:`PROCESS_FIELDS` (empty: the same runs and results).

    Energies and eigenvalues (eV) may differ by ``energy_tolerance``, other numbers by 1e-6
    relative (two SCF paths to the same tolerance end within it); strings, integers and lists exactly.
    """
    problems = []
    if [r["name"] for r in a] != [r["name"] for r in b]:
        return [f"runs differ: {[r['name'] for r in a]} != {[r['name'] for r in b]}"]
    for x, y in zip(a, b):
        for key in sorted(set(x) | set(y)):
            if key in PROCESS_FIELDS:
                continue
            u, v = x.get(key), y.get(key)
            if isinstance(u, float) and isinstance(v, float):
                tolerance = energy_tolerance if key.endswith("_eV") else 1e-6 * max(abs(u), abs(v))
                if not abs(u - v) <= tolerance:
                    problems.append(f"{x['name']}.{key}: {u} != {v}")
            elif u != v:
                problems.append(f"{x['name']}.{key}: {u!r} != {v!r}")
    return problems
