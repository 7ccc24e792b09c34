"""Shared fixtures: where the project's shared data lives, and test-wide settings.

Shared data (real SIESTA runs) is read from :func:`hforge.datasets.shared_data_dir`
(``$HFORGE_SHARED``, or ``../shared`` beside the repository).  When it is missing, tests that need
it are skipped on a developer machine but **fail** under CI (``CI=true``), so that a CI run never
passes without its real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from hforge._compat import import_e3nn

import_e3nn()  # tests import e3nn directly: in the context its import needs, before any of them does

settings.register_profile(
    "hforge", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("hforge")


def _shared_root() -> Path:
    from hforge.datasets import shared_data_dir

    return shared_data_dir().resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"shared data not found at {path} (set HFORGE_SHARED)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``$HFORGE_SHARED`` or ``../shared``)."""
    return _require(_shared_root())


@pytest.fixture(scope="session")
def siesta_fixtures(shared_dir: Path) -> Path:
    """``shared/fixtures/siesta``: real SIESTA outputs (hBN, Si, SrTiO3, H2O, Pt2)."""
    return _require(shared_dir / "fixtures" / "siesta")


@pytest.fixture(scope="session")
def abn_dir(shared_dir: Path) -> Path:
    """``shared/abn``: real SIESTA calculations of amorphous BN cells."""
    return _require(shared_dir / "abn")


@pytest.fixture
def one_torch_thread():
    """Dense eigensolvers and small tensors on a loaded 2-core machine: threads only fight each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def abn8(abn_dir: Path):
    """The 8-atom SIESTA aBN cell ``abn_8_0`` as ``HSData``."""
    from hforge.io import read_hs

    return read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")


@pytest.fixture()
def compressed_runs(shared_dir, tmp_path, monkeypatch):
    """(abn-extra run folder with its .TSHS.xz, a copy of it with a plain .TSHS, one with a .TSHS.gz, its basis);
    temporary files go to tmp_path/tmp, checked empty afterwards."""
    import gzip
    import lzma
    import shutil
    import tempfile

    run = _require(shared_dir / "abn-extra") / "runs" / "abn_32_10"
    with lzma.open(run / "abn_32_10.TSHS.xz") as f:
        content = f.read()
    folders = {}
    for kind in ("plain", "gz"):
        folder = folders[kind] = tmp_path / kind / "abn_32_10"
        folder.mkdir(parents=True)
        for suffix in (".fdf", ".XV", ".out.gz"):
            shutil.copy(run / f"abn_32_10{suffix}", folder)
    (folders["plain"] / "abn_32_10.TSHS").write_bytes(content)
    with gzip.open(folders["gz"] / "abn_32_10.TSHS.gz", "wb") as f:
        f.write(content)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield run, folders["plain"], folders["gz"], shared_dir / "abn-extra" / "basis"
    assert list(temp.iterdir()) == []  # decompressed copies removed, also after errors


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests where torch sees no CUDA device, and ``slow`` ones unless ``-m`` names them
    (``-m slow``, or ``-m "slow or not slow"`` for everything: ``make test-all``)."""
    import torch

    skips = []
    if not torch.cuda.is_available():
        skips.append(("gpu", pytest.mark.skip(reason="needs a CUDA GPU")))
    if "slow" not in (config.getoption("markexpr") or ""):
        skips.append(("slow", pytest.mark.skip(reason="slow: run with -m slow, or make test-all")))
    for item in items:
        for keyword, mark in skips:
            if keyword in item.keywords:
                item.add_marker(mark)
