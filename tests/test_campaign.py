"""SIESTA campaigns: the campaign file, run records against shared/abn/summary.jsonl, density-matrix files, the
resumable pool, and campaigns killed at any moment ending like uninterrupted ones.

SIESTA is mocked by ``tests/fake_siesta.py`` (CI has no SIESTA): it writes density matrices in SIESTA's
Fortran layout step by step, restarts from them, fails or does not converge on request, and ends with a real
TSHS (shared abn_8_0's), so records and stores are computed from real matrices.  The test with the real
SIESTA runs where one is found (``$SIESTA`` or ``siesta`` on PATH; ``-m slow``).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.datasets import open_store
from hforge.datasets.campaign import PROCESS_FIELDS, compare_records, load_campaign, run_campaign
from hforge.datasets.run_records import run_record
from hforge.datasets.siesta_pool import Job, SiestaPool, settle
from hforge.datasets.siesta_runs import write_siesta_inputs
from hforge.errors import ConfigError, FileFormatError
from hforge.io.density_matrix import check_dm_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fake_siesta  # noqa: E402

FAKE = f"{sys.executable} {HERE / 'fake_siesta.py'}"


@pytest.fixture
def fake(abn_dir, tmp_path, monkeypatch):
    """The fake SIESTA's environment; returns the file its calls are listed in."""
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_SIESTA_TSHS", str(abn_dir / "runs" / "abn_8_0" / "abn_8_0.TSHS"))
    monkeypatch.setenv("FAKE_SIESTA_DELAY", "0.01")
    monkeypatch.setenv("FAKE_SIESTA_CALLS", str(calls))
    for name in ("FAKE_SIESTA_FAIL", "FAKE_SIESTA_UNCONVERGED", "FAKE_SIESTA_STEPS"):
        monkeypatch.delenv(name, raising=False)
    return calls


def write_campaign(path: Path, abn_dir: Path, **extra) -> Path:
    """The abn_8_0 structure with two thermal snapshots started from its density matrix, and one generated
    8-atom test cell (fast protocol)."""
    campaign = {
        "template": str(abn_dir / "runs" / "abn_8_0"),
        "workers": 2,
        "max_attempts": 2,
        "store": "store.h5",
        "cells": [
            {"files": [str(abn_dir / "structures" / "8" / "abn_8_0.xyz")], "split": "train",
             "snapshots": {"temperatures": [300], "count": 2, "interval_ps": 0.2, "equilibration_ps": 0.2}},
            {"sizes": [8], "seeds": [1], "protocol": "fast", "split": "test"},
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(campaign))
    return path


# ---- the campaign file ----------------------------------------------------------------------------


def test_campaign_file_plans_cells_snapshots_and_files(abn_dir, tmp_path):
    (tmp_path / "cells").mkdir()
    shutil.copy(abn_dir / "structures" / "8" / "abn_8_0.xyz", tmp_path / "cells" / "mine.xyz")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "settings": {"MeshCutoff": "300 Ry"},
        "workers": "auto",
        "cells": [
            {"sizes": [16, 32], "seeds": [0, 1], "densities": [2.1, 2.3],
             "snapshots": {"temperatures": [300, 1000], "count": 2}},
            {"sizes": [216, 512], "seeds": [100], "protocol": "fast", "split": "test"},
            {"files": ["cells/mine.xyz"]},
        ],
    }))
    campaign = load_campaign(path)
    assert campaign.workers is None and campaign.settings == {"MeshCutoff": "300 Ry"} and campaign.template is None
    plan = campaign.plan()
    names = [r.name for r in plan]
    assert names[:5] == ["abn_16_0_d210", "abn_16_0_d210_T300_0", "abn_16_0_d210_T300_1", "abn_16_0_d210_T1000_0",
                         "abn_16_0_d210_T1000_1"]
    assert len(plan) == 8 * 5 + 2 + 1
    assert names[-3:] == ["abn_216_100_d220_fast", "abn_512_100_d220_fast", "mine"]
    snapshot = plan[3]
    assert (snapshot.kind, snapshot.parent, snapshot.temperature, snapshot.index, snapshot.seed, snapshot.dm_from_parent) == (
        "snapshot", "abn_16_0_d210", 1000.0, 0, 0, True)
    assert [r.split for r in plan[-3:]] == ["test", "test", None] and plan[-1].source == tmp_path / "cells" / "mine.xyz"
    assert plan[-1].n_atoms == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cells": [{"sizes": [9]}]}, "even numbers"),
        ({"cells": [{"sizes": [8], "split": "training"}]}, "train, val, test"),
        ({"cells": [{"sizes": [8], "densities": [5.0]}]}, "densities in"),
        ({"cells": [{"sizes": [8], "protocol": "slow"}]}, "protocol"),
        ({"cells": [{"sizes": [8], "snapshots": {"temperatures": [-1]}}]}, "positive temperatures"),
        ({"cells": [{"sizes": [8], "snapshots": {"temperatures": [300], "count": 0}}]}, "count"),
        ({"cells": [{"sizes": [8], "snapshots": [300]}]}, "snapshots=.*must be a mapping"),
        ({"cells": [{"sizes": [8], "colour": "red"}]}, r"unknown fields \['colour'\]"),
        ({"cells": [{"sizes": [8]}, {"sizes": [8]}]}, "listed more than once: abn_8_0_d220"),
        ({"cells": [{"sizes": [8], "files": ["x.xyz"]}]}, "either sizes"),
        ({"cells": [{"sizes": [8]}], "settings": {"dm.use-save-dm": "F"}}, "sets DM.UseSaveDM"),
        ({"cells": [{"sizes": [8]}], "workers": 0}, "workers"),
        ({"cells": []}, "at least one group"),
        ({"cell": [{"sizes": [8]}]}, r"unknown fields \['cell'\]"),
    ],
)
def test_bad_campaign_files_name_the_file_and_the_field(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(ConfigError, match=message) as info:
        load_campaign(path).plan()
    assert info.value.path == str(path) or "listed more than once" in message


# ---- records and density matrices ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["abn_8_0", "abn_16_1", "abn_24_1"])
def test_run_record_reproduces_the_shared_summary(abn_dir, tmp_path, name):
    """shared/abn/summary.jsonl was written by another script from the same runs: the oracle."""
    shutil.copytree(abn_dir / "basis", tmp_path / "basis")
    shutil.copytree(abn_dir / "runs" / name, tmp_path / "runs" / name)
    record = run_record(tmp_path / "runs" / name)
    summary = {json.loads(line)["name"]: json.loads(line) for line in (abn_dir / "summary.jsonl").read_text().splitlines()}
    expected = summary[name]
    for key in ("natoms", "formula", "scf_iterations", "converged", "n_kpoints", "job_completed", "tshs_bytes", "no", "nnz",
                "nsc", "E_total_eV", "E_fermi_eV", "final_dDmax", "final_dHmax_eV", "density_g_cm3"):
        assert record[key] == expected[key], key
    for key in ("S_min_eig_gamma", "homo_gamma_eV", "lumo_gamma_eV", "gap_gamma_eV"):
        assert record[key] == pytest.approx(expected[key], rel=1e-8, abs=1e-10), key
    np.testing.assert_allclose(record["cell_A"], expected["cell_A"], rtol=1e-6)  # TSHS (Bohr) vs fdf (Å)
    assert record["state"] == "converged" and record["siesta_version"] == "master-post-4.1-268"


def test_dm_file_check_refuses_every_truncation(tmp_path):
    path = tmp_path / "x.DM"
    fake_siesta.write_dm(path, 3)
    assert check_dm_file(path) == (2, 1) and check_dm_file(path, n_orbitals=2) == (2, 1)
    with pytest.raises(FileFormatError, match="of 2 orbitals, the run has 104"):
        check_dm_file(path, n_orbitals=104)
    whole = path.read_bytes()
    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        with pytest.raises(FileFormatError):
            check_dm_file(path)


# ---- the pool and the campaign, with a mocked SIESTA -------------------------------------------------


def test_campaign_runs_retries_records_and_keeps_unconverged_runs_out_of_the_store(abn_dir, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SIESTA_FAIL", "abn_8_1_d220_fast:1,abn_8_0_T300_1:9")
    monkeypatch.setenv("FAKE_SIESTA_UNCONVERGED", "abn_8_0_T300_0")
    path = write_campaign(tmp_path / "camp.yaml", abn_dir, siesta=FAKE)
    out = tmp_path / "camp"
    result = CliRunner().invoke(app, ["data", "campaign", str(path), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "2 run(s) not converged, kept out of any store: abn_8_0_T300_0, abn_8_0_T300_1" in result.output.replace("\n", "")
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    by_name = {r["name"]: r for r in records}
    assert list(by_name) == ["abn_8_0", "abn_8_0_T300_0", "abn_8_0_T300_1", "abn_8_1_d220_fast"]
    assert [r["state"] for r in records] == ["converged", "unconverged", "failed", "converged"]
    retried = by_name["abn_8_1_d220_fast"]
    assert (retried["failures"], retried["attempts"], retried["split"], retried["kind"]) == (1, 2, "test", "quenched")
    assert (out / "runs" / "abn_8_1_d220_fast" / "abn_8_1_d220_fast.failed1.log").is_file()
    assert by_name["abn_8_0_T300_1"]["failures"] == 2 and "2 attempts failed" in by_name["abn_8_0_T300_1"]["detail"]
    snapshot = by_name["abn_8_0_T300_0"]
    assert (snapshot["parent"], snapshot["temperature"], snapshot["dm_parent"], snapshot["dm_from_file"]) == (
        "abn_8_0", 300.0, "abn_8_0", True)
    assert by_name["abn_8_0"]["gap_gamma_eV"] == pytest.approx(1.9014608662422807, abs=1e-9)  # summary.jsonl
    for record in records:
        assert json.loads((out / "runs" / record["name"] / f"{record['name']}.record.json").read_text()) == record
    store = open_store(out / "store.h5")
    assert store.names == ["abn_8_0", "abn_8_1_d220_fast"] and [e["split"] for e in store.manifest] == ["train", "test"]
    assert store.provenance("abn_8_0")["record"]["name"] == "abn_8_0"
    # a second call finds everything finished: no SIESTA call, the same records
    calls = fake.read_text().split()
    again = run_campaign(path, out, progress=False)
    assert fake.read_text().split() == calls and again.records == records
    # more attempts allowed: only the given-up run runs again
    write_campaign(path, abn_dir, siesta=FAKE, max_attempts=3)
    monkeypatch.setenv("FAKE_SIESTA_FAIL", "")
    again = run_campaign(path, out, progress=False)
    assert fake.read_text().split() == calls + ["abn_8_0_T300_1"]
    assert again.names("converged") == ["abn_8_0", "abn_8_0_T300_1", "abn_8_1_d220_fast"]


def test_a_campaign_without_converged_runs_writes_records_and_no_store(abn_dir, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SIESTA_UNCONVERGED", "abn_8_0")
    path = write_campaign(tmp_path / "camp.yaml", abn_dir, siesta=FAKE,
                          cells=[{"files": [str(abn_dir / "structures" / "8" / "abn_8_0.xyz")]}])
    report = run_campaign(path, tmp_path / "camp", progress=False)
    assert report.names("unconverged") == ["abn_8_0"] and report.store is None and report.conversion is None
    assert not (tmp_path / "camp" / "store.h5").exists()
    assert json.loads((tmp_path / "camp" / "records.jsonl").read_text())["state"] == "unconverged"


@pytest.fixture
def run_folder(abn_dir, tmp_path):
    """One input folder as a campaign writes it, and a helper that writes a log of the fake SIESTA."""
    (folder,) = write_siesta_inputs([abn_dir / "structures" / "8" / "abn_8_0.xyz"], abn_dir / "runs" / "abn_8_0",
                                    tmp_path / "runs", settings={"DM.UseSaveDM": "T"})
    return folder


def fake_log(folder: Path, name: str, *, steps: int, finished: bool) -> None:
    lines = ["Siesta Version  : fake-1.0"] + [f"   scf: {k:4d}  -1447.8" for k in range(1, steps + 1)]
    if finished:
        shutil.copy(os.environ["FAKE_SIESTA_TSHS"], folder / "abn_8_0.TSHS")
        lines += [f"SCF cycle converged after {steps} iterations", "Job completed"]
    (folder / name).write_text("\n".join(lines) + "\n")


def test_a_killed_campaigns_leftovers_are_filed_and_resumed(run_folder, fake, monkeypatch):
    folder, pool = run_folder, SiestaPool(FAKE.split(), max_attempts=2, poll=0.05)
    job = Job(folder)
    # SIESTA finished after its campaign died: the attempt's log is adopted, nothing runs
    fake_log(folder, "abn_8_0.attempt1.log", steps=8, finished=True)
    assert settle(folder, 2).state == "converged" and (folder / "abn_8_0.out").is_file()
    assert pool.run([job], progress=False)["abn_8_0"].state == "converged" and not fake.exists()
    # killed mid-SCF while writing its density matrix: interrupted, the truncated DM removed, a fresh start
    for f in ("abn_8_0.out", "abn_8_0.TSHS"):
        (folder / f).unlink()
    fake_log(folder, "abn_8_0.attempt2.log", steps=3, finished=False)
    fake_siesta.write_dm(folder / "abn_8_0.DM", 3)
    (folder / "abn_8_0.DM").write_bytes((folder / "abn_8_0.DM").read_bytes()[:-5])
    state = settle(folder, 2)
    assert (state.state, state.interrupted, state.interrupted_scf_steps, state.failures) == ("pending", 1, 3, 0)
    state = pool.run([job], progress=False)["abn_8_0"]  # the fake stops on a truncated DM, as SIESTA does
    assert (state.state, state.interrupted, state.failures) == ("converged", 1, 0)
    assert run_record(folder)["scf_iterations"] == 8 and not run_record(folder)["dm_from_file"]
    # killed with a complete density matrix of step 5: the next attempt goes on from it
    for f in ("abn_8_0.out", "abn_8_0.TSHS"):
        (folder / f).unlink()
    fake_siesta.write_dm(folder / "abn_8_0.DM", 5)
    assert pool.run([job], progress=False)["abn_8_0"].state == "converged"
    assert run_record(folder)["scf_iterations"] == 3 and run_record(folder)["dm_from_file"]
    # an .out of a run that stopped abnormally is a failed attempt
    (folder / "abn_8_0.out").write_text("scf: 1\nABNORMAL_TERMINATION\n")
    state = settle(folder, 2)
    assert (state.state, state.failures) == ("pending", 1) and len(list(folder.glob("abn_8_0.failed*.log"))) == 1


def test_a_folder_locked_by_a_siesta_of_an_earlier_campaign_is_waited_for(run_folder, fake):
    """A SIESTA that outlived its campaign holds the folder's lock: the next campaign starts none beside it."""
    folder = run_folder
    lock = open(folder / ".abn_8_0.lock", "ab")
    fcntl.flock(lock, fcntl.LOCK_EX)
    assert settle(folder, 2).state == "busy"

    def orphan_finishes() -> None:
        fake_log(folder, "abn_8_0.attempt1.log", steps=8, finished=True)
        lock.close()

    timer = threading.Timer(0.5, orphan_finishes)
    timer.start()
    began = time.monotonic()
    states = SiestaPool(FAKE.split(), poll=0.05).run([Job(folder)], progress=False)
    timer.join()
    assert states["abn_8_0"].state == "converged" and time.monotonic() - began >= 0.5
    assert not fake.exists()  # the orphan's result was taken, no SIESTA started


def _running_in(folder: Path, wait: float = 5.0) -> list[int]:
    """Processes whose working directory is inside ``folder`` (a SIESTA outliving its campaign) after up to
    ``wait`` s (the kernel delivers a dead parent's PR_SET_PDEATHSIG signal asynchronously)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _kill_campaign_when(command: list[str], condition, delay: float, rng: random.Random) -> None:
    """Start the campaign, wait for ``condition()``, then SIGKILL it within ``delay`` s (if it is still running)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while process.poll() is None and not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, delay))
    process.send_signal(signal.SIGKILL)
    process.wait()


def _attempt_logs(out: Path, pattern: str) -> set[Path]:
    """The attempt logs of runs ``pattern`` now (empty while a folder the glob walks is being renamed away)."""
    try:
        return set(out.glob(f"runs/{pattern}/*.attempt*.log"))
    except FileNotFoundError:  # the campaign renamed a temporary folder while the glob listed it
        return set()


def _new_scf(out: Path, pattern: str = "*", steps: int = 2):
    """A condition: an attempt log of runs ``pattern`` that did not exist yet has ``steps`` SCF steps."""
    before = _attempt_logs(out, pattern)

    def reached() -> bool:
        try:
            return any(log.read_text().count("scf:") >= steps for log in _attempt_logs(out, pattern) - before)
        except FileNotFoundError:  # a log moved between the listing and the read: look again
            return False

    return reached


def test_a_campaign_killed_at_any_moment_ends_like_an_uninterrupted_one(abn_dir, tmp_path, fake, monkeypatch):
    """SIGKILL while the structures are made, mid-SCF (three times) and while the store is written; the
    campaign run again ends with the same runs, records (beyond PROCESS_FIELDS) and store as one never killed."""
    monkeypatch.setenv("FAKE_SIESTA_DELAY", "0.15")
    monkeypatch.setenv("FAKE_SIESTA_STEPS", "12")
    path = write_campaign(tmp_path / "camp.yaml", abn_dir, siesta=FAKE)
    whole = run_campaign(path, tmp_path / "whole", progress=False)
    assert whole.names("converged") == ["abn_8_0", "abn_8_0_T300_0", "abn_8_0_T300_1", "abn_8_1_d220_fast"]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "hforge.cli.main", "data", "campaign", str(path), "-o", str(out)]
    rng = random.Random(25)
    _kill_campaign_when(command, lambda: any(out.glob("structures/*.xyz")), 0.3, rng)
    for _ in range(3):
        _kill_campaign_when(command, _new_scf(out), 0.3, rng)
    _kill_campaign_when(command, lambda: (out / "store.h5.parts").exists(), 0.5, rng)
    assert _running_in(out) == []  # no SIESTA outlives its campaign
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert compare_records(whole.records, killed, energy_tolerance=0) == []
    assert sum(r["interrupted"] for r in killed) >= 2  # SCFs were killed, and resumed
    a, b = open_store(tmp_path / "whole" / "store.h5"), open_store(out / "store.h5")
    assert [{**e, "source": None} for e in a.manifest] == [{**e, "source": None} for e in b.manifest]
    for name in a.names:
        np.testing.assert_array_equal(a.read(name).h, b.read(name).h)
    assert not [p for p in out.rglob(".*tmp*")]


# ---- the real SIESTA ----------------------------------------------------------------------------------


def _real_siesta() -> str | None:
    return os.environ.get("SIESTA") or shutil.which("siesta")


@pytest.mark.slow
@pytest.mark.skipif(_real_siesta() is None, reason="no SIESTA ($SIESTA or siesta on PATH)")
def test_real_siesta_campaign_killed_mid_scf_ends_like_an_uninterrupted_one(abn_dir, tmp_path, monkeypatch):
    """abn_8_0 and a 300 K snapshot started from its density matrix, with light settings (100 Ry mesh, 4
    k-points: ~15 s each on one core); SIGKILLed twice mid-SCF (once in the cell's run, once in the
    snapshot's), resumed from SIESTA's own .DM, it ends within SIESTA's SCF tolerance of the uninterrupted one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write_campaign(
        tmp_path / "camp.yaml", abn_dir, siesta=_real_siesta(), workers=1,
        settings={"MeshCutoff": "100 Ry", "kgrid.Cutoff": "3.0 Ang"},
        cells=[{"files": [str(abn_dir / "structures" / "8" / "abn_8_0.xyz")], "split": "train",
                "snapshots": {"temperatures": [300], "count": 1, "interval_ps": 0.2, "equilibration_ps": 0.2}}],
    )
    began = time.monotonic()
    whole = run_campaign(path, tmp_path / "whole", progress=False)
    whole_seconds = time.monotonic() - began
    assert whole.names("converged") == ["abn_8_0", "abn_8_0_T300_0"]
    assert whole.records[1]["dm_parent"] == "abn_8_0" and whole.records[1]["dm_from_file"]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "hforge.cli.main", "data", "campaign", str(path), "-o", str(out)]
    rng = random.Random(1)
    began = time.monotonic()
    for name in ("abn_8_0", "abn_8_0_T300_0"):
        _kill_campaign_when(command, _new_scf(out, name, steps=3), 1.0, rng)
    assert _running_in(out) == []
    result = subprocess.run(command, capture_output=True, text=True)
    killed_seconds = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    killed = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert compare_records(whole.records, killed, energy_tolerance=2e-3) == []
    assert [r["interrupted"] for r in killed] == [1, 1] and all(r["dm_from_file"] for r in killed)
    for a, b in zip(whole.records, killed):
        assert abs(a["E_total_eV"] - b["E_total_eV"]) < 1e-3
    steps = [(r["interrupted_scf_steps"], r["scf_iterations"]) for r in killed]
    print(f"\nreal SIESTA: uninterrupted {whole_seconds:.0f} s, killed twice and resumed {killed_seconds:.0f} s; "
          f"SCF steps {[r['scf_iterations'] for r in whole.records]} vs (before the kill, after) {steps}")
    assert set(PROCESS_FIELDS) <= set(killed[0])


def test_the_shipped_example_campaign_plans(tmp_path):
    campaign = load_campaign(HERE.parent / "configs" / "campaign-abn.yaml")
    plan = campaign.plan()
    assert len(plan) == 2 * 4 * (1 + 2 * 3) + 2
    assert {r.split for r in plan if r.n_atoms >= 216} == {"test"} and {r.split for r in plan if r.n_atoms <= 32} == {"train"}
    assert campaign.store == Path("abn-campaign.h5") and campaign.template is None
