"""Predicted H and S to SIESTA files (``.TSHS``, sisl's ``.nc``), checked early and written atomically:
any ``sisl.Hamiltonian`` through sisl's writers (:func:`write_hamiltonian`), a prediction's CSR
buffers streamed (:func:`write_prediction`, :mod:`hforge.io.csr_files`: the same file, without
sisl's copies of the matrix)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from hforge.errors import FileFormatError, InputError
from hforge.files import atomic_write
from hforge.io.csr_files import write_csr_hamiltonian
from hforge.io.siesta import check_written_tshs, create_fortran_output
from hforge.ops.assemble import AssembledCSR

__all__ = ["OUTPUT_SUFFIXES", "check_output_path", "write_hamiltonian", "write_prediction"]

#: Output formats: SIESTA's binary TSHS and sisl's NetCDF Hamiltonian.
OUTPUT_SUFFIXES = (".TSHS", ".nc")


def check_output_path(path: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """``path`` if a Hamiltonian can be written there; checked before any heavy work.

    Args:
        path: the output file.
        inputs: files the command reads (e.g. the structure): the output must not replace them.

    Raises:
        FileFormatError: a suffix other than ``.TSHS`` / ``.nc``.
        InputError: a missing or read-only folder, a path that is a folder, or one of ``inputs``.
    """
    path = Path(path)
    for source in map(Path, inputs):
        if path.resolve() == source.resolve() or (path.exists() and source.exists() and os.path.samefile(path, source)):
            raise InputError(f"the output would replace the input {source}: choose another output file", path=path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise FileFormatError(f"output must end in {' or '.join(OUTPUT_SUFFIXES)}", path=path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError("output path is a folder", path=path)
    if not folder.is_dir():
        raise InputError(f"output folder {str(folder)!r} does not exist", path=path)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError("output path is not writable", path=path)
    return path


def write_hamiltonian(hamiltonian: Any, path: str | os.PathLike) -> Path:
    """Write a ``sisl.Hamiltonian`` (with S) as ``.TSHS`` or ``.nc``, atomically
    (:func:`hforge.files.atomic_write`): a failed, interrupted (Ctrl-C, SIGTERM through the CLI) or
    killed write leaves no partial file under ``path``; temporary files that killed runs left beside
    it are removed.  A TSHS is checked complete after sisl's Fortran writer (:func:`~hforge.io.siesta.check_written_tshs`).
    Returns the path.

    Raises:
        FileFormatError, InputError: as :func:`check_output_path`.
        OutputError: the write failed (full disk, a folder like ``/proc``), naming the path.
    """
    import sisl

    path = check_output_path(path)
    with atomic_write(path, None) as tmp:
        if path.suffix == ".TSHS":
            create_fortran_output(tmp)
        sisl.get_sile(str(tmp), mode="w").write_hamiltonian(hamiltonian)
        if path.suffix == ".TSHS":
            check_written_tshs(tmp, path)  # sisl's Fortran writer can miss a failed write
    return path


def write_prediction(csr: AssembledCSR, geometry: Any, path: str | os.PathLike) -> Path:
    """Write a prediction's CSR buffers (host memory; ``data[:, -1]`` S, H before it) as ``.TSHS`` or
    ``.nc``, atomically, streamed a range of rows at a time (:func:`hforge.io.write_csr_hamiltonian`:
    the file sisl's writer makes of the same matrix, byte for byte for a TSHS, without its copies of
    the matrix).  ``geometry``: the prediction's ``sisl.Geometry`` (its ``nsc`` is the CSR's).
    Returns the path.

    Raises:
        FileFormatError, InputError: as :func:`check_output_path`.
        OutputError: the write failed (full disk, a folder like ``/proc``), naming the path.
    """
    path = check_output_path(path)
    geometry = geometry.copy()
    geometry.set_nsc(csr.nsc)
    with atomic_write(path, None) as tmp:
        write_csr_hamiltonian(tmp, geometry, csr.indptr, csr.indices, csr.data)
        if path.suffix == ".TSHS":
            check_written_tshs(tmp, path)
    return path
