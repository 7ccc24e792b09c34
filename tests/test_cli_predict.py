"""``hforge predict``: output read back by sisl, summary, bad input before any work, 2-rank distributed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_infer import TINY, small_radii, tiled_64_atoms
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.errors import InputError
from hforge.infer import Predictor
from hforge.infer.plan import memory_budget
from hforge.models import build_model, save_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(checkpoint, 64-atom structure file, its Predictor)."""
    from hforge.datasets import load

    bundled = load("abn-small")
    torch.manual_seed(0)
    model = build_model(TINY, small_radii(bundled.basis))
    folder = tmp_path_factory.mktemp("predict")
    checkpoint = save_model(model, folder / "tiny.pt")
    structure = folder / "cell.traj"
    tiled_64_atoms(bundled).write(structure)
    return checkpoint, structure, Predictor(model)


def read(path):
    import sisl

    return sisl.get_sile(path).read_hamiltonian()


def test_predict_writes_what_the_predictor_gives(files, tmp_path):
    checkpoint, structure, predictor = files
    out = tmp_path / "out.TSHS"
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(structure), "-o", str(out), "--mode", "chunked", "--parts", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "64 atoms" in result.output and "nnz" in result.output and "peak memory" in result.output
    assert "chunked (2 chunks)" in result.output and "on cpu" in result.output
    expected = predictor.predict(structure)
    np.testing.assert_allclose(read(out).tocsr(0).toarray(), expected.tocsr(0).toarray(), atol=1e-12)
    np.testing.assert_allclose(read(out).tocsr(1).toarray(), expected.tocsr(1).toarray(), atol=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["out.TSHS"]


@pytest.mark.parametrize(
    "change, words",
    [
        ("species", r"species \['C'\] are not in the basis"),  # the name as the user wrote it, not np.str_('C')
        ("overlap", "overlapping atoms"),
        ("output", "does not exist"),
        ("suffix", "must end in .TSHS or .nc"),
        ("memory", "at least"),
        ("model", "no bundled model"),
    ],
)
def test_bad_input_fails_cleanly_without_output(files, tmp_path, change, words):
    import ase.io

    checkpoint, structure, _ = files
    atoms = ase.io.read(structure)
    if change == "species":
        atoms[0].symbol = "C"
    if change == "overlap":
        atoms.positions[1] = atoms.positions[0] + 0.2
    bad = tmp_path / "bad.traj"
    atoms.write(bad)
    out = tmp_path / {"output": "missing/out.TSHS", "suffix": "out.hdf"}.get(change, "out.TSHS")
    args = ["predict", {"model": "no-such-model"}.get(change, str(checkpoint)), str(bad), "-o", str(out)]
    if change == "memory":
        args += ["--max-memory", "1MB"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output
    import re

    assert re.search(words, result.output)
    assert sorted(os.listdir(tmp_path)) == ["bad.traj"]


def test_every_frame_of_a_multi_frame_file_is_predicted(files, tmp_path):
    import ase.io

    checkpoint, structure, predictor = files
    first = ase.io.read(structure)
    second = first.copy()
    second.positions += 0.05
    frames = tmp_path / "frames.traj"
    ase.io.write(frames, [first, second])
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(frames), "-o", str(tmp_path / "out.TSHS")])
    assert result.exit_code == 0, result.output
    assert "out_0.TSHS (frame 0 of 2)" in result.output and "out_1.TSHS (frame 1 of 2)" in result.output
    assert sorted(os.listdir(tmp_path)) == ["frames.traj", "out_0.TSHS", "out_1.TSHS"]
    for k, atoms in enumerate((first, second)):
        expected = predictor.predict(atoms)
        got = read(tmp_path / f"out_{k}.TSHS")
        np.testing.assert_allclose(got.tocsr(0).toarray(), expected.tocsr(0).toarray(), atol=1e-12)
        np.testing.assert_allclose(got.tocsr(1).toarray(), expected.tocsr(1).toarray(), atol=1e-12)


def test_a_bad_frame_is_named_before_any_frame_is_predicted(files, tmp_path):
    import ase.io

    checkpoint, structure, _ = files
    good = ase.io.read(structure)
    bad = good.copy()
    bad.positions[1] = bad.positions[0] + 0.2
    frames = tmp_path / "frames.traj"
    ase.io.write(frames, [good, bad])
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(frames), "-o", str(tmp_path / "out.TSHS")])
    assert result.exit_code == 1
    assert "frames.traj: frame 1: " in result.output and "overlapping atoms" in result.output
    assert sorted(os.listdir(tmp_path)) == ["frames.traj"]


def test_frame_outputs_sort_in_frame_order():
    from pathlib import Path

    from hforge.cli.predict import frame_outputs

    assert frame_outputs(Path("d/cell.nc"), 1) == [Path("d/cell.nc")]
    names = [p.name for p in frame_outputs(Path("d/cell.TSHS"), 11)]
    assert names[0] == "cell_00.TSHS" and names[-1] == "cell_10.TSHS" and names == sorted(names)


#: ``hforge predict`` whose TSHS write hangs after its first bytes (the temp file exists), for a SIGTERM to hit it.
HANGING_WRITE = """
import sys, time
import hforge.io.csr_files as writers

def hang(path, *args, **kwargs):
    with open(path, "wb") as handle:
        handle.write(b"partial")
    time.sleep(300)

writers._write_tshs = hang
from hforge.cli.main import app
sys.argv = ["hforge", *sys.argv[1:]]
app()
"""


def test_sigterm_during_the_write_leaves_no_temporary_file(files, tmp_path):
    checkpoint, structure, _ = files
    out = tmp_path / "out.TSHS"
    command = [sys.executable, "-c", HANGING_WRITE, "predict", str(checkpoint), str(structure), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".out.*.tmp.TSHS")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-2000:]
        process.send_signal(signal.SIGTERM)  # as `timeout` or a batch scheduler does
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "terminated by SIGTERM" in stderr and "Traceback" not in stderr
    assert os.listdir(tmp_path) == []


def test_a_learned_overlap_is_reported_by_the_cli(abn_dir, tmp_path):
    from test_infer import as_atoms

    from hforge.datasets import load
    from hforge.io import read_hs
    from hforge.models import ModelConfig, build_model, save_model

    data = read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")
    structure = tmp_path / "abn_8_0.xyz"
    as_atoms(data, data.basis).write(structure)
    torch.manual_seed(0)  # a learned S (random weights): indefinite on this dense cell, as trained ones were
    bundled = load("abn-small")
    model = build_model(ModelConfig(overlap="learned"), bundled.basis, bundled.statistics)
    checkpoint = save_model(model, tmp_path / "learned.pt")
    out = tmp_path / "out.TSHS"
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"warning: {structure}: the model learns S" in result.output.replace("\n", "")
    assert "not positive definite" in result.output and out.is_file()


def test_a_folder_as_structure_and_other_files_as_checkpoint(files, tmp_path):
    from fractions import Fraction

    checkpoint, structure, _ = files
    out = tmp_path / "out.TSHS"
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(tmp_path), "-o", str(out)])
    assert result.exit_code == 1 and f"{tmp_path}: a folder, not a structure file" in result.output.replace("\n", "")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": torch.zeros(2), "scale": Fraction(1, 3)}, pickled)  # a torch file, not HForge's
    refused = r"torch refuses to load it safely: it holds Python objects (fractions.Fraction)"
    for path, words in ((junk, "torch cannot read it"), (pickled, refused)):
        result = CliRunner().invoke(app, ["predict", str(path), str(structure), "-o", str(out)])
        text = result.output.replace("\n", "")
        assert result.exit_code == 1 and f"{path}: not an HForge model checkpoint: {words}" in text, text
        assert "weights_only=False" not in text and "weights_only` set to `False" not in text  # no unsafe advice
    assert sorted(os.listdir(tmp_path)) == ["junk.pt", "pickled.pt"]


def test_bad_prediction_options_are_refused_by_name_before_any_work(files, tmp_path):
    """New-user probe: --max-memory 1e999GB ended in an OverflowError traceback, --parts -3 in a numpy traceback
    (streamed) or was ignored (auto), parts=0 was ignored, dtype=np.float16 ended in a bare numba
    NotImplementedError and max_memory="8GB" in the API in a raw TypeError."""
    checkpoint, structure, predictor = files
    assert memory_budget("8GB") == 8 * 10**9 and memory_budget("2 GiB") == 2 * 2**30 and memory_budget("1e6") == 10**6
    assert memory_budget(3e9) == 3 * 10**9 and memory_budget(None) is None
    for bad in ("lots", "1e999GB", "-3GB", "0", float("nan"), float("inf"), True, [1]):
        with pytest.raises(InputError, match="max memory"):
            memory_budget(bad)
    for options, message in (
        ({"dtype": np.float16}, r"dtype .*float16.*: the output is float64 or float32"),
        ({"dtype": "int32"}, "dtype 'int32'"),
        ({"mode": "streamed", "parts": 0}, r"parts=0: give a whole number >= 1"),
        ({"parts": -3}, r"parts=-3: give a whole number >= 1"),
        ({"parts": 2.5, "mode": "chunked"}, r"parts=2.5"),
        ({"mode": "whole", "parts": 3}, "mode 'whole' is one part"),
        ({"max_memory": "1e999GB"}, "max memory '1e999GB': give a finite, positive size"),
    ):
        with pytest.raises(InputError, match=message):
            predictor.predict(structure, **options)
    predictor.predict(structure, max_memory="8GB")  # a size, as the CLI takes it
    assert predictor.last_report.mode == "whole" and predictor.last_report.estimated_bytes < 8 * 10**9

    out = tmp_path / "o.TSHS"
    for options, message in (
        (["--max-memory", "1e999GB"], "max memory '1e999GB': give a finite, positive size"),
        (["--parts", "-3", "--mode", "streamed"], "parts=-3: give a whole number >= 1"),
        (["--parts", "-3"], "parts=-3: give a whole number >= 1"),
    ):
        result = CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(out), *options])
        assert result.exit_code == 1 and message in result.output.replace("\n", ""), result.output
        assert "Traceback" not in result.output and not out.exists()


def test_two_gloo_ranks_give_the_single_process_result(files, tmp_path):
    checkpoint, structure, predictor = files
    out = tmp_path / "out.TSHS"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hforge.cli.main", "predict", str(checkpoint), str(structure), "-o", str(out), "--parts", "2",
        "--distributed",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    single = tmp_path / "single.TSHS"
    from hforge.infer import write_hamiltonian

    # one torch thread as the ranks (OMP_NUM_THREADS=1); the float32 model may still round
    # differently in another process (a clean CI clone measured 15,638 of 83,824 H entries apart)
    write_hamiltonian(predictor.predict(structure, mode="chunked", parts=2, threads=1), single)
    ranks, alone = read(out), read(single)
    assert ranks.no == alone.no and list(ranks.nsc) == list(alone.nsc)
    for k in (0, 1):
        a, b = ranks.tocsr(k), alone.tocsr(k)
        assert (a != 0).nnz == (b != 0).nnz and ((a != 0) != (b != 0)).nnz == 0  # the same pattern
        assert abs(a - b).max() <= 1e-5 * abs(b).max()  # float32 rounding of eV-scale entries
    assert sorted(os.listdir(tmp_path)) == ["out.TSHS", "single.TSHS"]  # parts merged and removed


def test_predict_refuses_a_device_it_cannot_use(files, tmp_path):
    checkpoint, structure, _ = files
    command = ["predict", str(checkpoint), str(structure), "-o", str(tmp_path / "o.TSHS"), "--device"]
    result = CliRunner().invoke(app, [*command, "tpu"])
    assert result.exit_code != 0 and "tpu" in result.output and "cuda" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, [*command, "cuda"])
        assert result.exit_code != 0 and "no usable CUDA GPU" in result.output
    assert not (tmp_path / "o.TSHS").exists()


def test_the_output_may_not_replace_the_input(files, tmp_path):
    """New-user probe: `hforge predict MODEL cell.nc -o cell.nc` (ASE reads NetCDF trajectories) replaced the input."""
    import ase.io

    checkpoint, structure, _ = files
    trajectory = tmp_path / "cell.nc"
    ase.io.write(trajectory, ase.io.read(structure), format="netcdftrajectory")
    before = trajectory.read_bytes()
    for out in (trajectory, tmp_path / "." / "cell.nc"):
        result = CliRunner().invoke(app, ["predict", str(checkpoint), str(trajectory), "-o", str(out)])
        assert result.exit_code == 1 and "the output would replace the input" in result.output.replace("\n", "")
    assert trajectory.read_bytes() == before


def test_verbose_says_what_hforge_does_and_a_file_without_a_cell_is_named(files, tmp_path):
    """No logging in the library before, and a plain .xyz without a cell was predicted as a cluster without a word."""
    from ase import Atoms

    checkpoint, structure, _ = files
    molecule = tmp_path / "bn.xyz"
    Atoms("BN", positions=[[0, 0, 0], [1.45, 0, 0]]).write(molecule, format="xyz")
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(molecule), "-o", str(tmp_path / "bn.TSHS")])
    assert result.exit_code == 0, result.output
    assert f"warning: {molecule}: it gives no cell: predicted as an isolated cluster" in result.stderr.replace("\n", " ")
    assert "info:" not in result.stderr
    result = CliRunner().invoke(app, ["--verbose", "predict", str(checkpoint), str(structure), "-o", str(tmp_path / "c.TSHS")])
    assert result.exit_code == 0, result.output
    assert f"info: {structure}: 64 atoms, nnz" in result.stderr and "no cell" not in result.stderr


def test_evaluate_on_an_empty_split_fails_and_predict_many_names_the_structure(files, tmp_path):
    """New-user probe: `hforge evaluate --split test` of a store without test structures exited 0 with empty tables;
    predict_many did not say which structure it refused."""
    from ase import Atoms

    from hforge.errors import GeometryError

    checkpoint, structure, predictor = files
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "abn-small", "--split", "test", "--no-eigenvalues"])
    assert result.exit_code == 1, result.output
    assert "--split test: abn-small holds no structure of that split (its splits: {'train': 3, 'val': 1, 'test': 0})" in (
        result.output.replace("\n", ""))
    good = Atoms("BN", positions=[[0, 0, 0], [1.45, 0, 0]])
    overlapping = Atoms("BN", positions=[[0, 0, 0], [0.2, 0, 0]])
    with pytest.raises(GeometryError, match=r"^structure 2: overlapping atoms: .* atoms 0 and 1 .* at 0.2000 Å"):
        predictor.predict_many([good, good, overlapping, good])


def test_data_inspect_reads_hforges_own_tshs_without_a_basis(files, tmp_path):
    """New-user probe: `hforge data inspect` of the TSHS `hforge predict` wrote refused to run without --basis (a TSHS
    carries no species); now it reports what needs no basis, and says the species are unknown."""
    import json

    import scipy.linalg

    checkpoint, structure, _ = files
    out = tmp_path / "cell.TSHS"
    assert CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(out)]).exit_code == 0
    result = CliRunner().invoke(app, ["data", "inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    H = read(out)
    assert info["atoms"] == 64 == H.na and info["orbitals"] == H.no and info["nnz"] == H.nnz
    assert info["species"].startswith("unknown: the file carries no basis") and info["orbitals_per_atom"] == [13]
    s = H.Sk(format="array")
    assert info["S_min_eigenvalue_gamma"] == pytest.approx(scipy.linalg.eigvalsh(s)[0], rel=1e-10)
    assert info["hermiticity_error_H_eV"] < 1e-12  # the predictor writes each block and its transpose
    lowest, highest = scipy.linalg.eigh(H.Hk(format="array"), s, eigvals_only=True)[[0, -1]]
    assert info["eigenvalues_gamma_eV"] == pytest.approx([lowest, highest], rel=1e-9)
