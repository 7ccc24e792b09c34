"""H and S held in CSR buffers written to SIESTA files (``.TSHS``, sisl's ``.nc``), streamed.

sisl's writers copy the matrix several times before the first byte is written (transpose, sort,
float64 copy, Fortran-ordered scaled copies of H and S): a prediction of 4000 atoms with a 1.76 GB
CSR peaked at 7.9 GB writing its TSHS.  :func:`write_csr_hamiltonian` writes the same content from
the buffers themselves, a range of rows at a time (temporaries of :data:`CHUNK_VALUES` values).
A file holds the transpose of sisl's matrix with SIESTA's supercell order (``_supercell_order``),
columns sorted in each row: for a matrix whose hopping blocks are the exact transposes of their
partners' (``H(i, j, n) = H(j, i, -n)^T``, what :mod:`hforge.ops.assemble` writes), a file row is
the matrix row with its onsite block transposed and its columns renumbered, which is what the
kernels do.  The records and variables are sisl's writers' own (tests compare files byte for byte
and matrices read back), the values converted with sisl's constants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hforge._numba import numba
from hforge.errors import InputError
from hforge.io.siesta import _record_bytes, _supercell_order, write_tshs_header

__all__ = ["CHUNK_VALUES", "write_csr_hamiltonian"]

#: Matrix entries per step of the writers (their temporaries: about 16 bytes an entry).
CHUNK_VALUES = 1 << 22


@numba.njit(parallel=True, cache=True)
def _file_rows(
    indptr, indices, data, channel, row0, row1, n_orbitals, atom_first, atom_end, remap, n_s, scale, divisor, columns, out,
):  # pragma: no cover
    """Rows ``row0:row1`` of the file: per row its entries ordered by SIESTA's supercell index
    (``remap`` of sisl's; a counting sort: within one supercell the columns keep their order),
    the column ``remap[isc] * n_orbitals + orbital + 1`` into ``out`` when ``columns``, else the value
    of ``data[:, channel] * scale / divisor`` (sisl's TSHS writer multiplies, its NetCDF writer
    divides: the same rounding as theirs), an onsite block's entry taken from its transpose."""
    base = indptr[row0]
    for r in numba.prange(row0, row1):
        start = np.zeros(n_s + 1, dtype=np.int64)
        cell, end = 0, n_orbitals  # a row's columns are sorted: their supercell only grows (no division)
        for p in range(indptr[r], indptr[r + 1]):
            while indices[p] >= end:
                cell += 1
                end += n_orbitals
            start[remap[cell] + 1] += 1
        for s in range(n_s):
            start[s + 1] += start[s]
        cell, end = 0, n_orbitals
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            while c >= end:
                cell += 1
                end += n_orbitals
            s = remap[cell]
            q = indptr[r] - base + start[s]
            start[s] += 1
            if columns:
                out[q] = s * n_orbitals + c - (end - n_orbitals) + 1
                continue
            source = p
            if c < n_orbitals and atom_first[r] <= c < atom_end[r]:  # onsite block: the entry (c, r)
                lo, hi = indptr[c], indptr[c + 1]
                while lo < hi:
                    mid = (lo + hi) // 2
                    if indices[mid] < r:
                        lo = mid + 1
                    else:
                        hi = mid
                source = lo
            out[q] = data[source, channel] * scale / divisor


@numba.njit(parallel=True, cache=True)
def _frame_records(payload, row_bytes, out):  # pragma: no cover
    """Fortran sequential records (little-endian int32 length markers) of consecutive rows of
    ``payload`` bytes, ``row_bytes[r]`` each, into ``out`` (rows in parallel); the bytes written."""
    n_rows = row_bytes.shape[0]
    starts = np.zeros(n_rows + 1, dtype=np.int64)  # where each row's payload starts in ``payload``
    for r in range(n_rows):
        starts[r + 1] = starts[r] + row_bytes[r]
    for r in numba.prange(n_rows):
        n, p = row_bytes[r], starts[r]
        q = p + 8 * r  # its record in ``out``: the markers of the rows before it, then its own
        for side in range(2):  # the marker, the payload, the marker again
            out[q], out[q + 1], out[q + 2], out[q + 3] = n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >> 24) & 255
            q += 4
            if side == 0:
                out[q : q + n] = payload[p : p + n]
                q += n
    return starts[n_rows] + 8 * n_rows


class _Rows:
    """The file rows of a CSR matrix in steps of about :data:`CHUNK_VALUES` entries."""

    def __init__(self, geometry: Any, nsc: Any, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        import sisl

        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices)
        self.data = data
        self.n_orbitals = int(geometry.no)
        lattice = sisl.Lattice(geometry.cell, nsc=nsc)
        siesta = _supercell_order(nsc)
        self.remap = np.empty(len(siesta), dtype=np.int64)
        self.remap[lattice.sc_index(siesta)] = np.arange(len(siesta))
        self.isc = siesta
        offsets = np.asarray(geometry.firsto, dtype=np.int64)
        atom = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        self.atom_first, self.atom_end = offsets[atom], offsets[atom + 1]
        ends = np.searchsorted(self.indptr, np.arange(0, int(self.indptr[-1]), CHUNK_VALUES)[1:], side="right") - 1
        bounds = np.unique(np.concatenate([[0], np.maximum(ends, 1), [self.n_orbitals]]))
        self.steps = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        #: entries and rows of the largest step: the size of the writers' reused step buffers
        self.step_entries = max((int(self.indptr[b] - self.indptr[a]) for a, b in self.steps), default=0)
        self.step_rows = max((b - a for a, b in self.steps), default=0)
        # one buffer for a step's values (8 bytes each, or its int32 columns), reused by every step:
        # a fresh one per step (tens of MB) would fault its pages again each time
        self._step = np.empty(self.step_entries * 8, dtype=np.uint8)

    def values(self, row0: int, row1: int, *, channel: int = -1, scale: float = 1.0, divisor: float = 1.0) -> np.ndarray:
        """Rows ``row0:row1`` of the file: columns (int32, 1-based) for ``channel=-1``, else values
        (float64, ``* scale / divisor``); a view of the step buffer, valid until the next call."""
        n = int(self.indptr[row1] - self.indptr[row0])
        dtype = np.dtype(np.int32 if channel < 0 else np.float64)
        out = self._step[: n * dtype.itemsize].view(dtype)
        _file_rows(
            self.indptr, self.indices, self.data, max(channel, 0), row0, row1, self.n_orbitals, self.atom_first,
            self.atom_end, self.remap, len(self.remap), scale, divisor, channel < 0, out,
        )
        return out


def _write_tshs(path: Path, geometry: Any, rows: _Rows, n_spin: int, ev_to_ry: float, bohr_to_ang: float) -> None:
    ncol = np.diff(rows.indptr).astype("<i4")
    with open(path, "wb") as f:
        write_tshs_header(  # geometry in Bohr as sisl converts it
            f, geometry.nsc, np.asarray(geometry.cell) * (1 / bohr_to_ang), np.asarray(geometry.xyz) * (1 / bohr_to_ang),
            np.asarray(geometry.firsto), n_spin, int(rows.indptr[-1]), 0.0,
        )
        f.write(_record_bytes(ncol))
        framed = np.empty(rows.step_entries * 8 + 8 * rows.step_rows, dtype=np.uint8)  # reused by every step
        for channel, scale in [(-1, 1.0), (n_spin, 1.0)] + [(k, ev_to_ry) for k in range(n_spin)]:
            for row0, row1 in rows.steps:
                payload = rows.values(row0, row1, channel=channel, scale=scale).view(np.uint8)
                row_bytes = ncol[row0:row1].astype(np.int64) * (4 if channel < 0 else 8)
                f.write(memoryview(framed)[: _frame_records(payload, row_bytes, framed)])
        f.write(_record_bytes(rows.isc.astype("<i4")))


def _write_nc(path: Path, geometry: Any, rows: _Rows, n_spin: int, ry_to_ev: float) -> None:
    import netCDF4
    import sisl

    with sisl.get_sile(str(path), mode="w") as sile:
        sile.write_geometry(geometry)  # sisl's own geometry and basis records
    nnz = int(rows.indptr[-1])
    with netCDF4.Dataset(str(path), "r+") as nc:
        nc.createDimension("spin", n_spin)
        for name, info, value in (("Ef", "Fermi level", 0.0), ("Qtot", "Total charge", geometry.q0)):
            variable = nc.createVariable(name, "f8", ("one",))
            variable.info = info
            if name == "Ef":
                variable.unit = "Ry"
            variable[:] = value
        sparse = nc.createGroup("SPARSE")
        sparse.createDimension("nnzs", nnz)
        variable = sparse.createVariable("n_col", "i4", ("no_u",))
        variable.info = "Number of non-zero elements per row"
        variable[:] = np.diff(rows.indptr)
        columns = sparse.createVariable("list_col", "i4", ("nnzs",), chunksizes=(nnz,))
        columns.info = "Supercell column indices in the sparse format"
        isc = sparse.createVariable("isc_off", "i4", ("n_s", "xyz"))
        isc.info = "Index of supercell coordinates"
        isc[:, :] = rows.isc
        overlap = sparse.createVariable("S", "f8", ("nnzs",), chunksizes=(nnz,))
        overlap.info = "Overlap matrix"
        hamiltonian = sparse.createVariable("H", "f8", ("spin", "nnzs"), chunksizes=(1, nnz))
        hamiltonian.info = "Hamiltonian"
        hamiltonian.unit = "Ry"
        for row0, row1 in rows.steps:
            window = slice(int(rows.indptr[row0]), int(rows.indptr[row1]))
            columns[window] = rows.values(row0, row1)
            overlap[window] = rows.values(row0, row1, channel=n_spin)
            for k in range(n_spin):
                hamiltonian[k, window] = rows.values(row0, row1, channel=k, divisor=ry_to_ev)
        settings = nc.createGroup("SETTINGS")
        for name, kind, dims, info, unit, value in (
            ("ElectronicTemperature", "f8", ("one",), "Electronic temperature used for smearing DOS", "Ry", 0.025 / ry_to_ev),
            ("BZ", "i4", ("xyz", "xyz"), "Grid used for the Brillouin zone integration", None, np.identity(3) * 2),
            ("BZ_displ", "f8", ("xyz",), "Monkhorst-Pack k-grid displacements", "b**-1", 0.0),
        ):
            variable = settings.createVariable(name, kind, dims)
            variable.info = info
            if unit is not None:
                variable.unit = unit
            variable[:] = value


def write_csr_hamiltonian(
    path: str | os.PathLike, geometry: Any, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
) -> Path:
    """Write a non-orthogonal H (eV, E_F = 0; ``n_spin`` channels) and S held as sisl's CSR to
    ``path`` (``.TSHS`` or ``.nc``; the caller makes it atomic), streamed from the buffers.

    Args:
        path: the file to write (its suffix names the format).
        geometry: ``sisl.Geometry`` of the matrix (atoms, orbitals, cell, ``nsc``).
        indptr, indices: ``(no + 1,)`` and ``(nnz,)``: rows are orbitals, columns ``orbital +
            no * isc`` with ``isc`` sisl's supercell index, sorted in each row.
        data: ``(nnz, n_spin + 1)`` H channels then S, float32 or float64.

    The hopping blocks must be the exact transposes of their partners' (the CSR assembly's
    layout); onsite blocks are written transposed, as sisl's writers do.

    Raises:
        InputError: a suffix other than ``.TSHS`` / ``.nc``, or buffers that do not fit the geometry.
    """
    from sisl.unit.siesta import unit_convert

    path = Path(path)
    if path.suffix not in (".TSHS", ".nc"):
        raise InputError("the streamed writer writes .TSHS and .nc files", path=path)
    if len(indptr) != geometry.no + 1 or data.ndim != 2 or data.shape[1] < 2 or len(indices) != data.shape[0]:
        raise InputError(
            f"CSR buffers (indptr {len(indptr)}, indices {len(indices)}, data {data.shape}) do not fit "
            f"{geometry.no} orbitals with H and S", path=path,
        )
    rows = _Rows(geometry, geometry.nsc, indptr, indices, data)
    n_spin = data.shape[1] - 1
    if path.suffix == ".TSHS":
        _write_tshs(path, geometry, rows, n_spin, unit_convert("eV", "Ry"), unit_convert("Bohr", "Ang"))
    else:
        _write_nc(path, geometry, rows, n_spin, unit_convert("Ry", "eV"))
    return path
