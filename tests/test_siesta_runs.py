"""SIESTA run driver: inputs from a template reproduce the shared runs; runs with a fake `siesta`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.datasets.siesta_runs import find_siesta, run_siesta, run_status, write_siesta_inputs
from hforge.errors import BackendUnavailableError, BasisMismatchError, GeometryError, InputError, UnknownSpeciesError

# The settings of shared/abn/README.md, as sisl reads them from an fdf: (label, unit, value).
SETTINGS = [
    ("XC.functional", None, "GGA"),
    ("XC.authors", None, "PBEsol"),
    ("MeshCutoff", "Ry", 400.0),
    ("kgrid.Cutoff", "Ang", 7.0),
    ("ElectronicTemperature", "K", 50.0),
    ("SolutionMethod", None, "diagon"),
    ("SCF.Mixer.Weight", None, 0.2),
    ("SCF.Mixer.History", None, 8),
    ("DM.Tolerance", None, 1e-5),
    ("SCF.H.Tolerance", "eV", 1e-4),
    ("MaxSCFIterations", None, 300),
    ("User.Basis", None, True),
    ("SaveHS", None, True),
    ("TS.HS.Save", None, True),
    ("ForceAuxCell", None, True),
    ("MD.NumCGsteps", None, 0),
    ("SpinPolarized", None, False),
    ("ChemicalSpeciesLabel", None, ["1 5 B", "2 7 N"]),
]


def shared_structures(abn_dir: Path) -> list[Path]:
    return sorted((abn_dir / "structures").glob("*/*.xyz"))


def test_inputs_reproduce_every_shared_run_from_one_template(abn_dir, tmp_path):
    """From the abn_8_0 run as template, the fdf written for each shared structure is the shared run's fdf."""
    folders = write_siesta_inputs(shared_structures(abn_dir), abn_dir / "runs" / "abn_8_0", tmp_path)
    assert len(folders) == 22
    for folder in folders:
        name = folder.name
        assert (folder / f"{name}.fdf").read_bytes() == (abn_dir / "runs" / name / f"{name}.fdf").read_bytes()
        for ion in ("B.ion", "N.ion"):  # found in shared/abn/basis beside runs/
            assert (folder / ion).read_bytes() == (abn_dir / "basis" / ion).read_bytes()


def test_inputs_read_back_with_sisl_give_the_shared_settings_and_geometry(abn_dir, tmp_path):
    import sisl

    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    (folder,) = write_siesta_inputs([structure], abn_dir / "runs" / "abn_8_0", tmp_path)
    ours = sisl.get_sile(folder / "abn_8_0.fdf")
    shared = sisl.get_sile(abn_dir / "runs" / "abn_8_0" / "abn_8_0.fdf")
    for key, unit, value in SETTINGS:
        expected = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
        assert ours.get(key, unit=unit) == shared.get(key, unit=unit) == expected, key
    geometry, reference = ours.read_geometry(), shared.read_geometry()
    np.testing.assert_array_equal(geometry.xyz, reference.xyz)
    np.testing.assert_array_equal(geometry.cell, reference.cell)
    assert [a.Z for a in geometry.atoms] == [a.Z for a in reference.atoms]
    atoms = ase.io.read(structure)
    np.testing.assert_allclose(geometry.xyz, atoms.positions, atol=5e-11)
    # and the geometry SIESTA itself wrote (XV, Bohr): equal up to SIESTA's Bohr (0.529177 Å, 4e-7 relative)
    xv = sisl.get_sile(abn_dir / "runs" / "abn_8_0" / "abn_8_0.XV").read_geometry()
    np.testing.assert_allclose(geometry.xyz, xv.xyz, rtol=5e-7, atol=1e-8)


def test_inputs_for_another_structure_and_format(abn_dir, tmp_path):
    """A structure in another format and atom order gets its own geometry, species by atomic number."""
    atoms = ase.io.read(abn_dir / "structures" / "16" / "abn_16_3.xyz")[::-1]  # N first now
    atoms.positions += 0.25
    cif = tmp_path / "mine.cif"
    ase.io.write(cif, atoms)
    (folder,) = write_siesta_inputs([cif], abn_dir / "runs" / "abn_8_0", tmp_path / "out")
    import sisl

    geometry = sisl.get_sile(folder / "mine.fdf").read_geometry()
    reread = ase.io.read(cif)
    np.testing.assert_allclose(geometry.xyz, reread.positions, atol=1e-9)
    np.testing.assert_allclose(geometry.cell, reread.cell.array, atol=1e-9)
    assert [a.Z for a in geometry.atoms] == reread.numbers.tolist()
    text = (folder / "mine.fdf").read_text()
    assert "SystemLabel mine\n" in text and "NumberOfAtoms 16\n" in text


def test_existing_runs_are_kept_and_differing_ones_refused(abn_dir, tmp_path):
    template = abn_dir / "runs" / "abn_8_0"
    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    (folder,) = write_siesta_inputs([structure], template, tmp_path)
    (folder / "abn_8_0.out").write_text("kept")
    write_siesta_inputs([structure], template, tmp_path)  # same input: nothing touched
    assert (folder / "abn_8_0.out").read_text() == "kept"
    atoms = ase.io.read(structure)
    atoms.positions[0] += 0.1
    moved = tmp_path / "moved" / "abn_8_0.xyz"
    moved.parent.mkdir()
    ase.io.write(moved, atoms)
    with pytest.raises(InputError, match="different input"):
        write_siesta_inputs([moved], template, tmp_path)
    write_siesta_inputs([moved], template, tmp_path, overwrite=True)
    assert not (folder / "abn_8_0.out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_templates_and_structures_are_refused(abn_dir, tmp_path):
    template = abn_dir / "runs" / "abn_8_0"
    with pytest.raises(BasisMismatchError, match="B.ion"):
        write_siesta_inputs([abn_dir / "structures" / "8" / "abn_8_0.xyz"], template, tmp_path, basis=tmp_path)
    carbon = tmp_path / "c.xyz"
    ase.io.write(carbon, ase.Atoms("BC", positions=[[0, 0, 0], [1.4, 0, 0]], cell=[4, 4, 4], pbc=True))
    with pytest.raises(UnknownSpeciesError, match="C"):
        write_siesta_inputs([carbon], template, tmp_path / "out")
    overlapping = tmp_path / "overlap.xyz"
    ase.io.write(overlapping, ase.Atoms("BN", positions=[[0, 0, 0], [0.2, 0, 0]], cell=[4, 4, 4], pbc=True))
    with pytest.raises(GeometryError, match="overlapping"):
        write_siesta_inputs([overlapping], template, tmp_path / "out")


# ---- running with a fake siesta -----------------------------------------------------------------

FAKE_SIESTA = """#!/bin/sh
# Fake SIESTA: reads the fdf on stdin, writes the log of a converged or unconverged run.
label=$(sed -n 's/^SystemLabel //p')
echo "fake siesta in $(pwd)"
echo "$label" >> "{calls}"
case "$label" in
  *_bad) echo "SCF_NOT_CONV: SCF did not converge in maximum number of steps."; echo "Job completed";;
  *_crash) echo "segfault"; exit 139;;
  *) touch "$label.TSHS"; echo "SCF cycle converged after 11 iterations"; echo "Job completed";;
esac
"""


@pytest.fixture
def fake_siesta(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "siesta"
    script.write_text(FAKE_SIESTA.format(calls=calls))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("SIESTA", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture
def run_folders(abn_dir, tmp_path):
    atoms = ase.io.read(abn_dir / "structures" / "8" / "abn_8_0.xyz")
    files = []
    for name in ("abn_good", "abn_bad", "abn_crash"):
        files.append(tmp_path / "structures" / f"{name}.xyz")
        files[-1].parent.mkdir(exist_ok=True)
        ase.io.write(files[-1], atoms)
    out = tmp_path / "runs"
    write_siesta_inputs(files, abn_dir / "runs" / "abn_8_0", out)
    return out


def test_run_reports_converged_unconverged_failed_and_resumes(fake_siesta, run_folders):
    statuses = {s.name: s for s in run_siesta(run_folders, progress=False)}
    assert statuses["abn_good"].state == "converged" and statuses["abn_good"].scf_iterations == 11
    assert statuses["abn_bad"].state == "unconverged"
    assert statuses["abn_crash"].state == "failed"
    assert "fake siesta in " + str(run_folders / "abn_good") in (run_folders / "abn_good" / "abn_good.out").read_text()
    assert fake_siesta.read_text().split() == ["abn_bad", "abn_crash", "abn_good"]
    # Second call: finished runs (converged or not) are skipped, the failed one is retried.
    again = {s.name: s.state for s in run_siesta(run_folders, progress=False)}
    assert again == {"abn_good": "converged", "abn_bad": "unconverged", "abn_crash": "failed"}
    assert fake_siesta.read_text().split() == ["abn_bad", "abn_crash", "abn_good", "abn_crash"]


def test_killed_run_is_pending_and_missing_tshs_is_a_failure(run_folders):
    folder = run_folders / "abn_good"
    (folder / ".abn_good.4242.tmp.out").write_text("scf: 1\n")  # SIESTA was killed: its log never appeared
    assert run_status(folder).state == "pending"
    (folder / "abn_good.out").write_text("SCF cycle converged after 9 iterations\nJob completed\n")
    status = run_status(folder)
    assert status.state == "failed" and "TSHS" in status.detail
    (folder / "abn_good.out").write_text("scf: 1\nABNORMAL_TERMINATION\nJob completed\n")  # io.runs reads logs the same way
    status = run_status(folder)
    assert status.state == "failed" and "ABNORMAL_TERMINATION" in status.detail


def test_cli_run_and_missing_siesta(fake_siesta, run_folders, monkeypatch):
    result = CliRunner().invoke(app, ["data", "run", str(run_folders)])
    assert result.exit_code == 1
    assert "abn_bad" in result.output and "not converged" in result.output
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BackendUnavailableError, match="no SIESTA executable"):
        find_siesta()
    monkeypatch.setenv("SIESTA", "/nonexistent/siesta -x")
    with pytest.raises(BackendUnavailableError, match=r"\$SIESTA"):
        find_siesta()
    result = CliRunner().invoke(app, ["data", "run", str(run_folders)])
    assert result.exit_code == 1 and "not an executable" in result.output


def test_cli_siesta_inputs(abn_dir, tmp_path):
    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    args = ["data", "siesta-inputs", str(structure), "--template", str(abn_dir / "runs" / "abn_8_0")]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "abn_8_0" / "abn_8_0.fdf").read_bytes() == (
        abn_dir / "runs" / "abn_8_0" / "abn_8_0.fdf"
    ).read_bytes()


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda t: t.replace("%endblock ChemicalSpeciesLabel\n", ""), "FileFormatError", "no %endblock"),
        (lambda t: t.replace("  2 7 N\n", "  2 N\n"), "FileFormatError", "bad ChemicalSpeciesLabel"),
        (lambda t: t.replace("ChemicalSpeciesLabel", "ChemicalSpecies"), "FileFormatError", "no %block Chem"),
        (lambda t: t + "%block Zmatrix\n%endblock Zmatrix\n", "InputError", "Zmatrix"),
        (lambda t: t + "%include missing.fdf\n", "FileFormatError", "missing.fdf"),
    ],
)
def test_malformed_templates_are_refused(abn_dir, tmp_path, edit, error, message):
    import hforge.errors

    template = tmp_path / "template" / "t.fdf"
    template.parent.mkdir()
    template.write_text(edit((abn_dir / "runs" / "abn_8_0" / "abn_8_0.fdf").read_text()))
    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    with pytest.raises(getattr(hforge.errors, error), match=message):
        write_siesta_inputs([structure], template, tmp_path / "out", basis=abn_dir / "basis")


def test_included_files_are_copied(abn_dir, tmp_path):
    template = tmp_path / "template" / "t.fdf"
    template.parent.mkdir()
    template.write_text((abn_dir / "runs" / "abn_8_0" / "abn_8_0.fdf").read_text() + "%include extra.fdf\n")
    (template.parent / "extra.fdf").write_text("SCF.DM.Tolerance 1.e-6\n")
    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    (folder,) = write_siesta_inputs([structure], template, tmp_path / "out", basis=abn_dir / "basis")
    assert (folder / "extra.fdf").read_text() == "SCF.DM.Tolerance 1.e-6\n"
    assert (folder / "abn_8_0.fdf").read_text().endswith("%include extra.fdf\n")


def test_settings_replace_the_templates_lines_in_place_or_are_added(abn_dir, tmp_path):
    structure = abn_dir / "structures" / "8" / "abn_8_0.xyz"
    settings = {"meshcutoff": "100 Ry", "DM.UseSaveDM": "T"}
    (folder,) = write_siesta_inputs([structure], abn_dir / "runs" / "abn_8_0", tmp_path, settings=settings)
    ours = (folder / "abn_8_0.fdf").read_text().splitlines()
    shared = (abn_dir / "runs" / "abn_8_0" / "abn_8_0.fdf").read_text().splitlines()
    assert ours[: len(shared)] == [("meshcutoff 100 Ry" if line == "MeshCutoff 400 Ry" else line) for line in shared]
    assert ours[len(shared):] == ["DM.UseSaveDM T"]
    for refused in ({"SystemLabel": "x"}, {"LatticeVectors": "1"}, {"ChemicalSpeciesLabel": "1 5 B"}):
        with pytest.raises(InputError, match="cannot replace the geometry"):
            write_siesta_inputs([structure], abn_dir / "runs" / "abn_8_0", tmp_path / "other", settings=refused)


def test_log_cost_matches_every_shared_runs_summary(shared_dir):
    """The wall time, CPU time and processes of every shared aBN log (``*.out.gz``); summary.jsonl's ``wall_s``
    was timed around each SIESTA call by another script (rounded to 0.1 s): the oracle of the elapsed time."""
    import gzip
    import json

    from hforge.io.siesta_log import read_siesta_log

    checked = 0
    for group in ("abn", "abn-extra"):
        folder = shared_dir / group
        if not folder.is_dir():
            continue
        for line in (folder / "summary.jsonl").read_text().splitlines():
            expected = json.loads(line)
            with gzip.open(folder / "runs" / expected["name"] / f"{expected['name']}.out.gz", "rt") as fh:
                log = read_siesta_log(fh.read())
            assert log.elapsed == pytest.approx(expected["wall_s"], abs=0.2), expected["name"]
            assert 0 < log.cpu_time <= log.elapsed * expected["threads"], expected["name"]
            assert log.processes == 1, expected["name"]  # SERIAL builds: "* Running in serial mode"
            checked += 1
    assert checked >= 22
    log = read_siesta_log("* Running on    4 nodes in parallel\n")
    assert (log.processes, log.elapsed, log.cpu_time) == (4, None, None)
