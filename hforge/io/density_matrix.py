"""SIESTA's density-matrix file (``<label>.DM``): is it complete enough to restart a run from?

SIESTA writes ``<label>.DM`` in place after every SCF step (``Write.DM``, on by default) and reads
it at the start of a run with ``DM.UseSaveDM``.  A run killed while the file was being written
leaves it truncated, and SIESTA then stops with a Fortran runtime error instead of starting from
scratch; :func:`check_dm_file` tells the two apart before SIESTA sees the file.

Layout (Fortran sequential unformatted, SIESTA's ``m_iodm.write_dm``): one record
``no_u, nspin, nsc(3)`` (int32; older files ``no_u, nspin``), one record ``numd(no_u)`` (int32:
nonzeros of each row), ``no_u`` records of column indices (``numd(i)`` int32 each), then for each
spin ``no_u`` records of values (``numd(i)`` float64 each).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hforge.errors import FileFormatError
from hforge.io.siesta import _fortran_records

__all__ = ["check_dm_file"]


def check_dm_file(path: str | os.PathLike, n_orbitals: int | None = None) -> tuple[int, int]:
    """Check that a SIESTA ``.DM`` file is complete: every record present with the length its header implies.

    Args:
        path: the ``.DM`` file.
        n_orbitals: the orbitals of the unit cell the run has, when known (a DM of another
            system is refused too).

    Returns:
        ``(no_u, nspin)`` of the file.

    Raises:
        FileFormatError: a missing, truncated or corrupted file, or one of another number of orbitals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError("no such density-matrix file", path=path)
    records = _fortran_records(path)
    if len(records) < 2 or records[0][1] not in (8, 20):
        first = records[0][1] if records else 0
        raise FileFormatError(f"not a SIESTA density matrix: {len(records)} records, the first of {first} bytes", path=path)
    with open(path, "rb") as f:
        f.seek(records[0][0])
        no_u, nspin = (int(x) for x in np.fromfile(f, dtype="<i4", count=2))
        if no_u <= 0 or nspin not in (1, 2, 4, 8) or records[1][1] != 4 * no_u:
            raise FileFormatError(f"corrupted header: {no_u} orbitals, {nspin} spin components", path=path)
        f.seek(records[1][0])
        numd = np.fromfile(f, dtype="<i4", count=no_u).astype(np.int64)
    if n_orbitals is not None and no_u != n_orbitals:
        raise FileFormatError(f"a density matrix of {no_u} orbitals, the run has {n_orbitals}", path=path)
    expected = 2 + no_u * (1 + nspin)
    if len(records) != expected:
        raise FileFormatError(f"incomplete: {len(records)} of {expected} records (written while SIESTA was killed?)", path=path)
    lengths = np.array([length for _, length in records[2:]], dtype=np.int64)
    wanted = np.concatenate([4 * numd, np.tile(8 * numd, nspin)])
    if not np.array_equal(lengths, wanted):
        bad = int(np.flatnonzero(lengths != wanted)[0]) + 2
        raise FileFormatError(f"record {bad} has {records[bad][1]} bytes, the row sizes imply {int(wanted[bad - 2])}", path=path)
    return no_u, nspin
