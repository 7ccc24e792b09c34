"""hforge.files: the atomic writer (text, binary, path modes; failures, kills, stale temporary files) and strict JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hforge.errors import OutputError
from hforge.files import atomic_write, json_ready, remove_stale_temps, temp_path, to_json, write_json


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(("mode", "content"), [("w", "H in eV\n"), ("wb", b"\x00\x01binary")])
def test_writes_and_replaces(tmp_path, mode, content):
    target = tmp_path / "out.dat"
    target.write_text("old")
    with atomic_write(target, mode) as f:
        f.write(content)
        assert target.read_text() == "old"  # the target changes only at the end
        assert Path(f.name).parent == tmp_path and Path(f.name).suffix == ".dat"
    assert (target.read_bytes() if mode == "wb" else target.read_text()) == content
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])  # passed on unchanged; OSError: below
@pytest.mark.parametrize("mode", ["w", "wb", None])
def test_a_failure_leaves_the_target_and_no_temporary(tmp_path, mode, error):
    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    with pytest.raises(error), atomic_write(target, mode) as f:
        if mode is None:
            f.write_text("half")
        else:
            f.write("half" if mode == "w" else b"half")
        raise error
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_path_mode_keeps_the_extension_for_format_choosing_writers(tmp_path):
    target = tmp_path / "rank0.atoms.npy"
    with atomic_write(target, None) as tmp:
        assert tmp == temp_path(target) == tmp_path / f".rank0.atoms.{os.getpid()}.tmp.npy"
        assert not tmp.exists()
        np.save(tmp, np.arange(3))  # numpy appends .npy to names without it: the extension is kept for such writers
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert leftovers(tmp_path) == []


def test_write_errors_name_the_target(tmp_path):
    with pytest.raises(OutputError, match="No such file or directory") as caught:
        with atomic_write(tmp_path / "missing" / "x.json") as f:
            f.write("{}")
    assert caught.value.path == str(tmp_path / "missing" / "x.json")
    with pytest.raises(OutputError, match="cannot write it"), atomic_write(tmp_path / "x.h5", None):
        pass  # a path-mode body that wrote nothing
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.h5").exists()


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "store.h5"
    code = (
        "import os; from hforge.files import atomic_write\n"
        f"with atomic_write({str(target)!r}) as f:\n    f.write('x'); f.flush(); os._exit(9)"
    )
    killed = subprocess.Popen([sys.executable, "-c", code])
    assert killed.wait() == 9 and not target.exists()
    assert leftovers(tmp_path) == [temp_path(target, killed.pid).name]  # what SIGKILL leaves
    running = temp_path(target, os.getppid())
    running.write_text("a write of a process that still runs")
    assert remove_stale_temps(tmp_path / "other.h5") == []
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == [running.name]  # the dead process's file is gone, the running one's kept


def test_json_is_strict_and_takes_numpy():
    value = {1: np.float32(0.5), "nan": float("nan"), "arr": np.array([[1, 2], [3, 4]]), "inf": np.float64("inf"),
             "nested": [(np.int64(3), Path("/a/b")), {"x": [math.nan]}], "none": None}
    ready = json_ready(value)
    assert ready == {"1": 0.5, "nan": None, "arr": [[1, 2], [3, 4]], "inf": None, "nested": [[3, "/a/b"], {"x": [None]}],
                     "none": None}
    assert type(ready["nested"][0][0]) is int

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(to_json(value), parse_constant=refuse) == ready


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "results.json", {"mae": np.float64(1.5)})
    assert json.loads(path.read_text()) == {"mae": 1.5}
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"mae": 1.5} and leftovers(tmp_path) == []
