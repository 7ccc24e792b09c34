"""Which CUDA kernel file the CuPy loader takes: nvcc's fatbin or the source through NVRTC.

:func:`choose_kernel` is pure (files and numbers in, a choice out), so its rules are tested here
on any machine; the ``gpu`` tests load and run both kinds on a real device.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hforge.errors import BackendUnavailableError
from hforge.ops import _cuda
from hforge.ops._cuda import FatbinArchitectures, choose_kernel

# What CMakeLists.txt builds by default: SASS for sm_80 and sm_90, PTX for compute_90.
DEFAULT = FatbinArchitectures(sass=(80, 90), ptx=(90,))


def _file(path: Path, mtime: float, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize(
    "capability, fits",
    [(80, True), (86, True), (89, True), (90, True), (100, True), (120, True), (75, False), (70, False)],
)
def test_default_fatbins_fit_ampere_and_newer_through_ptx(capability, fits):
    """SASS runs within its major version (sm_80 on 8.x); the compute_90 PTX on 9.0 and anything newer."""
    assert DEFAULT.fits(capability) is fits


def test_sass_only_fatbins_leave_newer_gpus_without_code():
    assert not FatbinArchitectures(sass=(80, 90), ptx=()).fits(100)


def test_architectures_read_from_cmakes_json(tmp_path):
    path = _file(tmp_path / "fatbins.json", 0, '{"sass": [80, 90], "ptx": [90]}\n')
    assert FatbinArchitectures.read(path) == DEFAULT
    assert FatbinArchitectures.read(tmp_path / "missing.json") is None
    assert FatbinArchitectures.read(_file(tmp_path / "bad.json", 0, "{")) is None


def test_installed_fatbin_fits(tmp_path):
    fatbin = _file(tmp_path / "_kernels" / "k.fatbin", 100)
    source = _file(tmp_path / "_kernels" / "src" / "k.cu", 101)  # installed just after: same version
    choice = choose_kernel(fatbin, source, architectures=DEFAULT, capability=90)
    assert (choice.kind, choice.path) == ("fatbin", fatbin)


def test_a_fatbin_older_than_the_edited_source_or_its_headers_is_stale(tmp_path):
    fatbin = _file(tmp_path / "_kernels" / "k.fatbin", 100)
    edited = _file(tmp_path / "kernels" / "k.cu", 50)
    header = _file(tmp_path / "kernels" / "hforge_cuda.h", 50)
    assert choose_kernel(fatbin, None, edited_source=edited, capability=90).kind == "fatbin"
    os.utime(edited, (200, 200))
    choice = choose_kernel(fatbin, None, edited_source=edited, capability=90)
    assert (choice.kind, choice.path) == ("source", edited) and "older than" in choice.reason
    os.utime(edited, (50, 50))
    os.utime(header, (200, 200))
    assert choose_kernel(fatbin, None, edited_source=edited, capability=90).kind == "source"


def test_no_fitting_fatbin_compiles_the_source(tmp_path):
    fatbin = _file(tmp_path / "_kernels" / "k.fatbin", 100)
    source = _file(tmp_path / "_kernels" / "src" / "k.cu", 100)
    choice = choose_kernel(fatbin, source, architectures=DEFAULT, capability=75)
    assert (choice.kind, choice.path) == ("source", source) and "compute capability 75" in choice.reason
    assert choose_kernel(None, source, capability=90).reason == "no fatbin built"
    unknown = choose_kernel(fatbin, source, architectures=None, capability=75)
    assert unknown.kind == "fatbin"  # unknown contents: tried, and load_module falls back if it does not load


def test_neither_fatbin_nor_source(tmp_path):
    with pytest.raises(BackendUnavailableError, match="no kernel source"):
        choose_kernel(None, None, capability=90)


def test_the_checkout_sources_are_what_edits_are_compared_with():
    assert (_cuda._REPO_KERNELS / "assemble.cu").is_file()


def _assemble_runs() -> None:
    """The CuPy assembly kernel (kernels/assemble.cu) on a small periodic problem equals the reference."""
    import cupy

    from hforge.ops.assemble import assemble_csr

    edge_index = np.array([[0, 0, 1, 0], [0, 1, 1, 0]])  # onsite 0, pair (0, 1), onsite 1, 0 with its image
    cell_shift = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    orbitals = np.array([2, 3])
    block_ptr = np.array([0, 4, 10, 19, 23])
    blocks = np.random.default_rng(0).normal(size=block_ptr[-1])
    want = assemble_csr(edge_index, cell_shift, block_ptr, [blocks], orbitals, backend="torch")
    on_gpu = [cupy.asarray(a) for a in (edge_index, cell_shift, block_ptr)]
    got = assemble_csr(*on_gpu, [cupy.asarray(blocks)], cupy.asarray(orbitals), backend="cupy")
    np.testing.assert_array_equal(got.indptr.get(), want.indptr)
    np.testing.assert_array_equal(got.indices.get(), want.indices)
    np.testing.assert_array_equal(got.data.get(), want.data)


@pytest.mark.gpu
def test_nvrtc_compiles_the_kernels_for_a_gpu_no_fatbin_fits(monkeypatch):
    """Pretend the GPU is older than every fatbin: the source is compiled by NVRTC and runs."""
    monkeypatch.setattr(_cuda, "_capability", lambda cupy: 75)
    chosen, compile_source = [], _cuda._compile_source

    def spy(cupy, source, reason):
        chosen.append(source)
        return compile_source(cupy, source, reason)

    monkeypatch.setattr(_cuda, "_compile_source", spy)
    _cuda.load_module.cache_clear()
    try:
        _assemble_runs()
    finally:
        _cuda.load_module.cache_clear()
    assert chosen and chosen[0].name == "assemble.cu"


@pytest.mark.gpu
def test_kernels_load_and_run_on_this_gpu():
    _cuda.load_module.cache_clear()
    _assemble_runs()
