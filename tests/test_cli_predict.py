"""``hforge predict``: output read back by sisl, summary, bad input before any work, 2-rank distributed run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.cli.predict import parse_bytes
from hforge.errors import ConfigError
from hforge.infer import Predictor
from hforge.models import build_model, save_model
from test_infer import TINY, small_radii, tiled_64_atoms


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


def assert_equal(a, b):
    assert a.no == b.no and list(a.nsc) == list(b.nsc)
    for k in (0, 1):
        assert (a.tocsr(k) != b.tocsr(k)).nnz == 0


def test_predict_writes_what_the_predictor_gives(files, tmp_path):
    checkpoint, structure, predictor = files
    out = tmp_path / "out.TSHS"
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(out), "--mode", "chunked", "--parts", "2"])
    assert result.exit_code == 0, result.output
    assert "64 atoms" in result.output and "nnz" in result.output and "peak memory" in result.output
    assert "chunked (2 part(s))" in result.output and "on cpu" in result.output
    expected = predictor.predict(structure)
    np.testing.assert_allclose(read(out).tocsr(0).toarray(), expected.tocsr(0).toarray(), atol=1e-12)
    np.testing.assert_allclose(read(out).tocsr(1).toarray(), expected.tocsr(1).toarray(), atol=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["out.TSHS"]


@pytest.mark.parametrize(
    "change, words",
    [
        ("species", "UnknownSpecies|not in the basis"),
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


def test_parse_bytes():
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("2 GiB") == 2 * 2**30 and parse_bytes("1e6") == 10**6
    with pytest.raises(ConfigError):
        parse_bytes("lots")


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

    write_hamiltonian(predictor.predict(structure, mode="chunked", parts=2), single)
    assert_equal(read(out), read(single))
    assert sorted(os.listdir(tmp_path)) == ["out.TSHS", "single.TSHS"]  # parts merged and removed


def test_predict_refuses_a_device_it_cannot_use(files, tmp_path):
    checkpoint, structure, _ = files
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(tmp_path / "o.TSHS"), "--device", "tpu"])
    assert result.exit_code != 0 and "tpu" in result.output and "cuda" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["predict", str(checkpoint), str(structure), "-o", str(tmp_path / "o.TSHS"), "--device", "cuda"])
        assert result.exit_code != 0 and "no usable CUDA GPU" in result.output
    assert not (tmp_path / "o.TSHS").exists()
