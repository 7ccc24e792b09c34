"""The set-up the README's commands rely on: scripts/setup.sh (extras and its stamp) and the CMake
configuration (C++ only for the host test build, nvcc only where present, PTX for newer GPUs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    """A copy of what setup.sh reads, with a stub ``.venv/bin/python`` that logs its pip calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    for name in ("pyproject.toml", "CMakeLists.txt"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "kernels", tmp_path / "kernels")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/usr/bin/env bash\necho "$*" >> "$PIP_LOG"\n')
    python.chmod(0o755)
    return tmp_path


def _setup(checkout: Path, extras: str | None) -> list[str]:
    """Run setup.sh with HFORGE_EXTRAS=extras (None: unset); the pip installs it ran."""
    log = checkout / "pip.log"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "HFORGE_EXTRAS"}
    env.update(PIP_LOG=str(log), HFORGE_TORCH_SPEC="torch==2.13.0", VENV=".venv")
    if extras is not None:
        env["HFORGE_EXTRAS"] = extras
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=checkout, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split("-q ", 1)[1] for line in log.read_text().splitlines()]


def _age_stamp(checkout: Path) -> None:
    """Make every input older than the stamp (mtimes can tie within a test)."""
    stamp = checkout / ".venv" / ".hforge-installed"
    os.utime(stamp, (stamp.stat().st_mtime + 10,) * 2)


def test_each_command_installs_its_extras_and_the_stamp_keeps_the_union(checkout):
    assert _setup(checkout, "") == ["torch==2.13.0", "-e ."]  # make demo: HForge alone
    _age_stamp(checkout)
    assert _setup(checkout, "") == []
    assert _setup(checkout, "dev,dft") == ["torch==2.13.0", "-e .[dev,dft]"]  # make test
    _age_stamp(checkout)
    assert _setup(checkout, None) == []  # the default is the tests' dev,dft
    assert _setup(checkout, "dev") == []
    assert _setup(checkout, "bench,dev") == ["torch==2.13.0", "-e .[bench,dev,dft]"]  # make bench
    assert (checkout / ".venv" / ".hforge-installed").read_text().strip() == "bench,dev,dft"


@pytest.mark.parametrize(
    "edited",
    ["kernels/assemble.cu", "kernels/hforge_cuda.h", "kernels/cpu/conv_messages_isa.cpp", "pyproject.toml", "scripts/setup.sh"],
)
def test_an_edited_input_reinstalls(checkout, edited):
    _setup(checkout, "dev")
    _age_stamp(checkout)
    assert _setup(checkout, "dev") == []
    stamp_time = (checkout / ".venv" / ".hforge-installed").stat().st_mtime
    os.utime(checkout / edited, (stamp_time + 5,) * 2)
    assert _setup(checkout, "dev") == ["torch==2.13.0", "-e .[dev]"]


def _configure(tmp_path: Path, *options: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CXX")}
    env["CXX"] = "/nonexistent/c++"  # any probe of a C++ compiler fails
    if path is not None:
        env["PATH"] = path
    command = [shutil.which("cmake") or "cmake", "-S", str(REPO), "-B", str(tmp_path / "build"), *options]
    return subprocess.run(command, env=env, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_a_wheel_build_needs_no_compiler(tmp_path):
    """pip's build (HFORGE_BUILD_TESTS=OFF) configures without C++ (then without the compiled CPU kernels)
    and, without nvcc, without CUDA."""
    no_nvcc = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "nvcc").exists())
    done = _configure(tmp_path, "-DHFORGE_BUILD_TESTS=OFF", path=no_nvcc)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nvcc not found, CUDA fatbins skipped" in done.stdout
    assert "no C++ compiler, libhforge_cpu skipped" in done.stdout  # the numba kernels run instead
    assert not (tmp_path / "build" / "kernels" / "fatbins.json").exists()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_the_host_test_build_is_what_needs_cpp(tmp_path):
    done = _configure(tmp_path, "-DHFORGE_BUILD_TESTS=ON")
    assert done.returncode != 0 and "CMAKE_CXX_COMPILER" in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None, reason="needs cmake and nvcc")
def test_fatbins_carry_ptx_of_the_newest_architecture(tmp_path):
    done = _configure(tmp_path, "-DHFORGE_BUILD_TESTS=OFF", "-DHFORGE_CUDA_ARCHITECTURES=90;80")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "build" / "kernels" / "fatbins.json").read_text().strip() == '{"sass": [90, 80], "ptx": [90]}'
    rules = "".join(p.read_text(errors="replace") for p in (tmp_path / "build").rglob("*") if p.is_file()
                    and p.suffix in ("", ".make", ".ninja"))
    for code in ("arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"):
        assert code in rules
    assert "code=compute_80" not in rules


def test_importing_hforge_changes_no_global_state_and_prints_nothing():
    """hforge/_compat.py allowed `slice` in torch's safe unpickling globals and added a warning filter for the whole
    process on `import hforge`, and printed mace's import lines; now both are scoped to e3nn's and mace's imports."""
    import sys

    code = """
import warnings, torch
filters, safe = list(warnings.filters), list(torch.serialization.get_safe_globals())
import hforge
assert warnings.filters == filters and torch.serialization.get_safe_globals() == safe, "import hforge changed them"
import hforge.models, hforge.ops.cg_blocks
from hforge.ops.cg_blocks.descriptor import wigner_3j
assert wigner_3j(1, 1, 2).shape == (3, 3, 5)  # e3nn imported and working
assert slice not in torch.serialization.get_safe_globals(), "slice left in torch's safe globals"
assert not [f for f in warnings.filters if f[1] is not None and "WEIGHTS_ONLY" in f[1].pattern], "a filter left"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "cuequivariance" not in done.stderr and "TORCH_FORCE" not in done.stderr
