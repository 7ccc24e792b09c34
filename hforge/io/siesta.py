"""Read and write SIESTA H/S files (TSHS, HSX, CDF ``.nc``, through an ``.fdf``) as :class:`HSData`.

sisl reads every format; HForge adds what sisl leaves out: the species and basis of a bare
TSHS (from the ``fdf``/``XV`` beside it and a folder of ion files), integrity checks before a
corrupted Fortran file reaches sisl's readers, and bit-exact writing.  sisl converts eV to Ry
and Å to Bohr by multiplying with rounded constants, which loses the last bit of about one
value in eight; :func:`write_hs` stores instead, for every value, the float64 that sisl reads
back as exactly the value in memory (found by stepping ulps), so that file -> HSData -> file
is exact.  TSHS files are written record by record in the layout of sisl's Fortran writer
(``tshs_write.f90``), with E_F; ``.nc`` files are written by sisl and their values replaced with
the exact ones through netCDF4.  Only sisl's public API is used: the header checks of TSHS and
HSX files read the records themselves.  Γ-only files (nsc 1 1 1) are read and written folded
(:mod:`hforge.io.reach`).

Compressed files (``.TSHS.xz``, ``.HSX.gz``, ``.nc.bz2``: :data:`COMPRESSIONS`) are read
transparently: sisl cannot read them, so they are decompressed (streamed) into a private
temporary folder that is removed afterwards, also on errors (:func:`readable_copy`); the source
path is what :attr:`HSData.source` and every error message name.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import struct
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hforge.basis import BasisSet, SpeciesBasis
from hforge.basis.radial import RY_TO_EV
from hforge.basis.readers import BOHR_TO_ANG, ion_files, read_basis_folder
from hforge.errors import (
    BasisMismatchError,
    FileFormatError,
    FoldedMatrixError,
    HForgeError,
    MissingBasisError,
    OutputError,
    UnknownSpeciesError,
    UnsupportedSystemError,
)
from hforge.files import atomic_write
from hforge.io.hsdata import HSData
from hforge.io.reach import check_basis_reach, mark_folded
from hforge.io.reach import unfold as _unfold

__all__ = [
    "COMPRESSIONS",
    "HS_SUFFIXES",
    "RY_TO_EV",
    "check_basis_reach",
    "check_written_tshs",
    "create_fortran_output",
    "find_hs_file",
    "hs_label",
    "is_hs_file_name",
    "read_hs",
    "read_sisl_hamiltonian",
    "readable_copy",
    "split_compression",
    "write_hs",
]

#: Matrix files in the order an fdf's SystemLabel is resolved (sisl's order).
HS_SUFFIXES = (".nc", ".TSHS", ".HSX")

#: Compressed files read transparently: suffix -> opener of the decompressed stream.
COMPRESSIONS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}



_BASIS_ATTRIBUTE = "hforge_basis"

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def split_compression(name: str) -> tuple[str, str]:
    """``("abn.TSHS", ".xz")`` for ``"abn.TSHS.xz"``; ``(name, "")`` for a file that is not compressed."""
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def is_hs_file_name(name: str) -> bool:
    """Whether a file name is an H/S file's (``.TSHS``, ``.HSX``, ``.nc``, each maybe compressed), not a basis file's."""
    plain, _ = split_compression(name)
    return plain.endswith(HS_SUFFIXES) and not plain.endswith(".ion.nc")


def hs_label(path: str | os.PathLike) -> str:
    """The run label of an H/S file or fdf: ``abn_8_0`` for ``abn_8_0.TSHS``, ``abn_8_0.TSHS.xz``, ``abn_8_0.fdf``."""
    plain, _ = split_compression(Path(path).name)
    return plain.rsplit(".", 1)[0] if "." in plain else plain


def _kind(path: Path) -> str:
    name, compression = split_compression(path.name)
    if name.endswith(".ion.nc"):
        raise FileFormatError("a basis file, not an H/S file: use hforge.basis.read_ion", path=path)
    for suffix in (*HS_SUFFIXES, ".fdf"):
        if name.endswith(suffix) and not (compression and suffix == ".fdf"):
            return suffix
    raise FileFormatError(
        "unknown H/S file kind: expected .TSHS, .HSX or .nc (each also compressed: .xz, .gz, .bz2) or .fdf", path=path
    )


@contextmanager
def readable_copy(path: str | os.PathLike) -> Iterator[Path]:
    """A path sisl can read for ``path``: itself, or for a compressed file (:data:`COMPRESSIONS`)
    its decompressed copy in a private temporary folder, removed when the block ends (also on
    errors).  :class:`HForgeError` s raised in the block that name the copy name ``path`` instead.

    Raises:
        FileFormatError: a corrupted or truncated compressed file.
        OutputError: no room in the temporary folder (``TMPDIR``) for the decompressed file.
    """
    path = Path(path)
    plain, compression = split_compression(path.name)
    if not compression:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hforge-decompressed-") as folder:
        local = Path(folder) / plain
        _decompress(path, compression, local)
        try:
            yield local
        except HForgeError as exc:
            if exc.path is None or Path(exc.path) != local:
                raise
            message = exc.message.replace(str(local), str(path)).replace(folder, str(path.parent))
            raise type(exc)(message, path=path) from exc


def _decompress(path: Path, compression: str, local: Path) -> None:
    """Stream the decompressed ``path`` into ``local``, naming the file at fault."""
    with open(local, "wb") as target, COMPRESSIONS[compression](path, "rb") as source:
        while True:
            try:
                chunk = source.read(1 << 22)
            except (lzma.LZMAError, EOFError, OSError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
                raise FileFormatError(
                    f"cannot decompress it (corrupted or truncated {compression} file?): {exc}", path=path
                ) from exc
            if not chunk:
                return
            try:
                target.write(chunk)
            except OSError as exc:
                raise OutputError(
                    f"no room to decompress {path.name} into the temporary folder: {exc}", path=local.parent
                ) from exc


def find_hs_file(fdf: str | os.PathLike) -> Path:
    """The H/S file an fdf points at: ``<SystemLabel>.nc``, ``.TSHS`` or ``.HSX`` beside it, each
    also compressed (``<SystemLabel>.TSHS.xz``, :data:`COMPRESSIONS`).

    Raises:
        FileFormatError: none exists.
    """
    fdf = Path(fdf)
    label = _fdf_label(fdf)
    for suffix in HS_SUFFIXES:
        for compression in ("", *COMPRESSIONS):
            candidate = fdf.with_name(label + suffix + compression)
            if candidate.is_file():
                return candidate
    raise FileFormatError(
        f"no {label}.nc, {label}.TSHS or {label}.HSX (or a compressed one) beside it (SaveHS / TS.HS.Save / CDF.Save)",
        path=fdf,
    )


def _fdf_label(fdf: Path) -> str:
    import sisl

    try:
        return str(sisl.get_sile(str(fdf)).get("SystemLabel", default="siesta"))
    except Exception as exc:
        raise FileFormatError(f"cannot read the fdf: {exc}", path=fdf) from exc


def _fortran_records(path: Path) -> list[tuple[int, int]]:
    """(offset of data, length) of every record of a Fortran sequential unformatted file.

    Raises:
        FileFormatError: truncated file or corrupted record markers.
    """
    size = path.stat().st_size
    records = []
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            head = f.read(4)
            if len(head) < 4:
                raise FileFormatError(f"truncated: {size - pos} stray bytes at byte {pos}", path=path)
            (length,) = struct.unpack("<i", head)
            end = pos + 8 + length
            if length < 0 or end > size:
                raise FileFormatError(
                    f"truncated or corrupted: record {len(records)} at byte {pos} announces {length} bytes, "
                    f"the file has {size - pos - 8} left",
                    path=path,
                )
            f.seek(pos + 4 + length)
            (tail,) = struct.unpack("<i", f.read(4))
            if tail != length:
                raise FileFormatError(
                    f"corrupted: record {len(records)} at byte {pos} has markers {length} and {tail}", path=path
                )
            records.append((pos + 4, length))
            pos = end
    return records


def _record(path: Path, record: tuple[int, int], dtype: Any) -> np.ndarray:
    """The values of one Fortran record (``(offset, length)`` of :func:`_fortran_records`)."""
    offset, length = record
    with open(path, "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(length), dtype=dtype)


def _fortran_sizes(path: str | os.PathLike, kind: str, records: list[tuple[int, int]]) -> dict[str, int]:
    """``n_spin``, ``n_atoms`` (0 where an old HSX does not say), ``n_orbitals`` and ``nnz`` from the
    header records of a TSHS (version 0 or 1) or HSX (version 0, 1 or 2) file, as SIESTA writes them.

    Raises:
        FileFormatError: a header of another layout (corrupted, or a version HForge does not know).
    """
    path = Path(path)
    try:
        head = _record(path, records[0], "<i4")
        if kind == ".TSHS":  # [version 1,] (na_u, no_u, no_s, nspin, nnz)
            sizes = head if len(head) == 5 else _record(path, records[1], "<i4") if head.tolist() == [1] else None
            if sizes is not None and len(sizes) == 5:
                na_u, no_u, _, nspin, nnz = (int(x) for x in sizes)
                return {"n_spin": nspin, "n_atoms": na_u, "n_orbitals": no_u, "nnz": nnz}
        elif len(head) == 4:  # HSX version 0: (no_u, no_s, nspin, maxnh)
            no_u, _, nspin, nnz = (int(x) for x in head)
            return {"n_spin": nspin, "n_atoms": 0, "n_orbitals": no_u, "nnz": nnz}
        elif head.tolist() in ([1], [2]):  # version, is_dp, (na_u, no_u, nspin, nspecies, nsc), ..., numh
            na_u, no_u, nspin, nspecies = (int(x) for x in _record(path, records[2], "<i4")[:4])
            numh = 6 + nspecies + (1 if head[0] == 2 else 0)
            if 0 <= nspecies <= len(records) and numh < len(records):
                nnz = int(_record(path, records[numh], "<i4").astype(np.int64).sum())
                return {"n_spin": nspin, "n_atoms": na_u, "n_orbitals": no_u, "nnz": nnz}
    except (IndexError, ValueError) as exc:
        raise FileFormatError(f"corrupted {kind} header: {exc}", path=path) from exc
    raise FileFormatError(f"corrupted {kind} header, or a file version HForge does not know", path=path)


def _check_fortran_file(path: Path, kind: str) -> None:
    """Reject truncated/corrupted TSHS/HSX files before sisl's Fortran readers see them."""
    records = _fortran_records(path)
    sizes = _fortran_sizes(path, kind, records)
    nspin, na_u, no_u, nnz = sizes["n_spin"], sizes["n_atoms"], sizes["n_orbitals"], sizes["nnz"]
    plausible = (
        nspin in (1, 2, 4, 8)
        and 0 <= na_u <= no_u <= nnz
        and 0 < no_u
        and nnz * 4 <= path.stat().st_size
        and len(records) >= no_u
    )
    if not plausible:
        raise FileFormatError(
            f"corrupted header: spin {nspin}, {na_u} atoms, {no_u} orbitals, {nnz} non-zeros "
            f"do not fit a file of {path.stat().st_size} bytes",
            path=path,
        )


def _read_sisl(path: Path, kind: str) -> tuple[Any, Any, float]:
    """(sile, Hamiltonian, E_F in eV) through sisl, errors named."""
    import sisl

    if kind in (".TSHS", ".HSX"):
        _check_fortran_file(path, kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sile = sisl.get_sile(str(path))
            H = sile.read_hamiltonian()
            fermi = float(np.atleast_1d(sile.read_fermi_level())[0])
    except HForgeError:
        raise
    except Exception as exc:
        raise FileFormatError(f"sisl cannot read it: {type(exc).__name__}: {exc}", path=path) from exc
    if H.spin.kind not in (H.spin.UNPOLARIZED, H.spin.POLARIZED):
        raise UnsupportedSystemError(
            f"{H.spin!s} calculation: HForge handles unpolarized and collinear spin-polarized H only", path=path
        )
    return sile, H, fermi


def _file_species_labels(kind: str, H: Any) -> tuple[list[str], np.ndarray] | None:
    """(labels of the species, species index per atom) the H/S file records, None for a TSHS."""
    if kind == ".TSHS":
        return None
    atoms = H.geometry.atoms
    return [a.tag for a in atoms.atom], np.asarray(atoms.species, dtype=np.int64)


def _neighbour_species(path: Path, n_atoms: int) -> tuple[list[str], np.ndarray] | None:
    """Species labels and indices from the fdf (or XV) beside a file, None if there is none."""
    import sisl

    stem = hs_label(path)
    fdfs = [path.with_name(stem + ".fdf")] + sorted(path.parent.glob("*.fdf"))
    fdf = next((f for f in fdfs if f.is_file()), None)
    candidates: list[tuple[Path, Callable[[Any], Any]]] = []
    if fdf is not None:
        candidates.append((fdf, lambda sile: sile.read_geometry(order=["fdf"])))
    xv = path.with_name(stem + ".XV")
    if xv.is_file():
        candidates.append((xv, lambda sile: sile.read_geometry()))
    for source, read in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                geom = read(sisl.get_sile(str(source)))
        except Exception as exc:
            raise FileFormatError(f"cannot read the species: {exc}", path=source) from exc
        if geom is None:
            continue
        if geom.na != n_atoms:
            raise BasisMismatchError(f"{geom.na} atoms, the H/S file {path.name} has {n_atoms}", path=source)
        return [a.tag for a in geom.atoms.atom], np.asarray(geom.atoms.species, dtype=np.int64)
    return None


def _nc_basis(path: Path, H: Any) -> BasisSet | None:
    """The basis a CDF ``.nc`` file stores: HForge's own record if written by HForge, else the
    SIESTA BASIS group (sisl's shells with the stored radii, which sisl does not keep)."""
    import netCDF4

    with netCDF4.Dataset(str(path)) as nc:
        if _BASIS_ATTRIBUTE in nc.ncattrs():
            return BasisSet.from_json(nc.getncattr(_BASIS_ATTRIBUTE))
        if "BASIS" not in nc.groups:
            return None
        groups = nc.groups["BASIS"].groups
        species = []
        for atom in H.geometry.atoms.atom:
            group = groups.get(atom.tag)
            if group is None or "orbnl_l" not in group.variables:
                return None
            sp = SpeciesBasis.from_sisl(atom)
            radii = (group["cutoff"][:] * BOHR_TO_ANG).tolist()
            kb = list(zip(group["pjnl_l"][:].tolist(), (group["kbcutoff"][:] * BOHR_TO_ANG).tolist()))
            shells = tuple(replace(shell, cutoff=r) for shell, r in zip(sp.shells, radii))
            valence = float(group.getncattr("Valence_charge")) if "Valence_charge" in group.ncattrs() else None
            species.append(SpeciesBasis(sp.symbol, sp.Z, shells, kb, valence))
        return BasisSet(tuple(species))


def _basis_folders(path: Path) -> list[Path]:
    """Where ion files are looked for: the file's folder and up to two above, each itself and its ``basis/``."""
    ancestors = [path.parent, *list(path.parent.parents)[:2]]
    return [folder for ancestor in ancestors for folder in (ancestor, ancestor / "basis")]


def _resolve_basis(
    path: Path,
    kind: str,
    H: Any,
    basis: BasisSet | str | os.PathLike | None,
    atom_species: Sequence[str] | None = None,
    local: Path | None = None,
) -> tuple[BasisSet, np.ndarray]:
    """The basis and the species index of every atom, checked against the file (``path``, read
    from ``local``, its decompressed copy where it is compressed)."""
    if atom_species is not None:
        if len(atom_species) != H.geometry.na:
            raise BasisMismatchError(f"{len(atom_species)} species given for {H.geometry.na} atoms", path=path)
        labels = list(dict.fromkeys(atom_species))
        labelled = labels, np.array([labels.index(a) for a in atom_species], dtype=np.int64)
    else:
        labelled = _file_species_labels(kind, H) or _neighbour_species(path, H.geometry.na)
    file_basis: BasisSet | None = None
    if kind == ".nc":
        file_basis = _nc_basis(local or path, H)
    elif kind == ".HSX":
        try:
            file_basis = BasisSet.from_sisl(H.geometry.atoms)
        except BasisMismatchError:
            file_basis = None

    if isinstance(basis, (str, os.PathLike)):
        basis = read_basis_folder(basis)
    if basis is None and file_basis is not None and all(sp.cutoff is not None for sp in file_basis):
        basis = file_basis
    if basis is None and labelled is not None:
        for folder in _basis_folders(path):
            if folder.is_dir() and set(labelled[0]) <= set(ion_files(folder)):
                basis = read_basis_folder(folder, species_order=labelled[0])
                break
    if basis is None:
        basis = file_basis
    if basis is None:
        raise MissingBasisError(
            "the file carries no basis (a bare TSHS) and no folder of ion files was found beside it: give one with "
            "--basis (basis= in Python), a folder of .ion/.ion.nc/.ion.xml files, and keep the run's fdf beside the "
            "file for the species",
            path=path,
        )

    if labelled is None:
        if len(basis) != 1:
            raise BasisMismatchError(
                f"the file does not say which of the species {basis.symbols} each atom is: keep the run's "
                "fdf (or XV) beside it",
                path=path,
            )
        return basis, np.zeros(H.geometry.na, dtype=np.int64)
    labels, species = labelled
    try:
        lookup = np.array([basis.index(label) for label in labels], dtype=np.int64)
    except UnknownSpeciesError as exc:
        raise UnknownSpeciesError(exc.message, path=path) from None
    if file_basis is not None and file_basis is not basis:
        for label in set(labels) & set(file_basis.symbols):
            sp = file_basis[label]
            if not basis[label].same_orbitals(sp):
                raise BasisMismatchError(
                    f"species {label!r}: the file has shells {[s.name for s in sp.shells]}, the basis "
                    f"{[s.name for s in basis[label].shells]}",
                    path=path,
                )
    return basis, lookup[species]


def _matrix_file(path: str | os.PathLike) -> tuple[Path, str]:
    """``(the H/S file, its kind)`` of a path to one or to the run's fdf (:func:`find_hs_file`).

    Raises:
        FileFormatError: a missing file, or one of an unknown kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError("no such file", path=path)
    kind = _kind(path)
    if kind == ".fdf":
        path = find_hs_file(path)
        kind = _kind(path)
    return path, kind


def read_sisl_hamiltonian(path: str | os.PathLike) -> tuple[Any, float, Path]:
    """H and S of an H/S file as sisl reads them, without a basis: ``(sisl.Hamiltonian (H - E_F S,
    eV), E_F in eV, the file)``, checked as :func:`read_hs` checks it (truncation, corruption,
    spin).  For files nothing describes (a bare TSHS, as HForge writes them): species appear as
    sisl's placeholders, orbitals without quantum numbers.

    Raises:
        FileFormatError, UnsupportedSystemError: as :func:`read_hs`.
    """
    path, kind = _matrix_file(path)
    with readable_copy(path) as local:
        _, H, fermi = _read_sisl(local, kind)
    return H, fermi, path


def read_hs(
    path: str | os.PathLike,
    basis: BasisSet | str | os.PathLike | None = None,
    *,
    spin: int | str | None = None,
    species: Sequence[str] | None = None,
    validate: bool = True,
    unfold: bool | None = None,
) -> HSData:
    """Read H and S of one SIESTA calculation into :class:`HSData`.

    Args:
        path: a ``.TSHS``, ``.HSX`` or CDF ``.nc`` file, also compressed (``.xz``, ``.gz``,
            ``.bz2``; decompressed into a temporary folder), or the run's ``.fdf`` (its
            ``SystemLabel`` then names the file: ``.nc``, ``.TSHS``, ``.HSX`` in that order).
        basis: a :class:`BasisSet` or a folder of ion files.  Default: the basis stored in the
            file (``.nc``), else ion files found beside the file or in a ``basis/`` folder next
            to its folder or the one above, else the shells the HSX file stores (no radii).
            Atoms get their species from the file, or for a TSHS from the ``fdf``/``XV`` beside it.
        spin: None keeps every spin channel; 0/``"up"`` or 1/``"down"`` keeps one.
        species: the species label of every atom, for a bare TSHS without its fdf/XV.
        validate: run :meth:`HSData.validate` (finite values, S(Γ) positive definite, ...).
        unfold: what to do with a Γ-only file's matrices folded into the unit cell (nsc 1 1 1 in a
            cell where atom pairs couple through periodic images, :mod:`hforge.io.reach`): True
            unfolds them into the periodic pairs (every stored pair to its one image within H's
            reach) or raises :class:`~hforge.errors.FoldedMatrixError` where a pair couples through
            several images; False keeps them as stored (:attr:`HSData.folded`, Γ only); None (default)
            unfolds where every pair has one image and keeps them folded otherwise.  Either way the
            data records :attr:`HSData.gamma_only` and :func:`write_hs` writes it folded, as it came.

    Raises:
        FileFormatError: missing, unknown, truncated or corrupted file.
        MissingBasisError: a file without a basis (a bare TSHS) and none given or found beside it.
        UnsupportedSystemError: non-collinear or spin-orbit calculation.
        UnknownSpeciesError: a species of the file that the basis lacks.
        BasisMismatchError: orbital counts, shells or orbital radii that disagree with the basis
            (:func:`check_basis_reach`); ``unfold=True`` with a basis without KB radii.
        FoldedMatrixError: ``unfold=True`` and a folded pair that couples through several images.
        InvalidMatrixError: NaN/inf entries, S not positive definite.
    """
    path, kind = _matrix_file(path)
    with readable_copy(path) as local:
        _, H, fermi = _read_sisl(local, kind)
        basis_set, atom_index = _resolve_basis(path, kind, H, basis, species, local=local)
    data = mark_folded(HSData.from_sisl(H, basis_set, fermi_level=fermi, species=atom_index, source=str(path)))
    check_basis_reach(data)
    if data.folded and unfold is not False:
        try:
            data = _unfold(data)
            logger.info("%s: a Γ-only file (nsc 1 1 1), unfolded into its periodic pairs (nsc %s)", path, data.nsc.tolist())
        except FoldedMatrixError as exc:
            if unfold:
                raise
            logger.info("%s", exc)  # kept as stored: H and S at Γ only
    if spin is not None:
        channel = {"up": 0, "down": 1}.get(spin, spin) if isinstance(spin, str) else spin
        if channel not in range(data.n_spin):
            raise UnsupportedSystemError(f"spin channel {spin!r} of a {data.spin} calculation", path=path)
        data = data.select_spin(int(channel))
    return data.validate() if validate else data


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def _preimage(target: np.ndarray, forward: Callable[[np.ndarray], np.ndarray], guess: np.ndarray) -> np.ndarray:
    """``x`` with ``forward(x) == target`` bitwise, stepping ``guess`` by ulps (monotone ``forward``).

    Where no float64 maps exactly onto ``target`` the nearest candidate is kept.
    """
    x = np.array(guess, dtype=np.float64)
    for _ in range(16):
        got = forward(x)
        low, high = got < target, got > target
        if not (low.any() or high.any()):
            break
        x = np.where(low, np.nextafter(x, np.inf), np.where(high, np.nextafter(x, -np.inf), x))
    return x


def _to_stored(values: np.ndarray, factor: float) -> np.ndarray:
    """Values in file units whose product with ``factor`` (as sisl reads) gives ``values``."""
    values = np.asarray(values, dtype=np.float64)
    return _preimage(values, lambda x: x * factor, values / factor)


def _supercell_order(nsc: Sequence[int]) -> np.ndarray:
    """``(prod(nsc), 3)`` int64 the supercells in the order sisl's TSHS writer records them
    (``isc_off``, its ``siesta_sc_off``): x fastest, then y, then z, each running
    ``0, 1, ..., n // 2, -(n // 2), ..., -1``.  (SIESTA's own files may order them otherwise;
    readers take the order from the file.)"""
    axes = [np.where(np.arange(n) > n // 2, np.arange(n) - n, np.arange(n)) for n in (int(x) for x in nsc)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.int64)


def _siesta_layout(data: HSData) -> dict[str, np.ndarray]:
    """HSData in SIESTA's file layout (the transpose of sisl's in-memory matrix).

    The file holds, in row ``a`` and supercell column ``(s, b)``, sisl's element
    ``(b, (-s, a))``: for a value of pair (i, j, n) at (row orbital r, column orbital c), file
    row c and column ``isc(-n) * no + r``, with ``isc`` the supercell order written (:func:`_supercell_order`).
    """
    nsc = data.nsc
    isc = _supercell_order(nsc)
    half = nsc // 2
    code = lambda n: ((n[:, 0] + half[0]) * nsc[1] + n[:, 1] + half[1]) * nsc[2] + n[:, 2] + half[2]  # noqa: E731
    index_of = np.empty(int(np.prod(nsc)), dtype=np.int64)
    index_of[code(isc)] = np.arange(len(isc))
    flat, rows, cols = data._orbital_coords()
    shift = data.cell_shift[data.value_pair[flat]]
    if np.any(np.abs(shift) > half):
        raise BasisMismatchError(f"cell shifts beyond nsc = {data.nsc.tolist()}", path=data.source)
    file_row = cols
    file_col = index_of[code(-shift)] * data.n_orbitals + rows
    order = np.lexsort((file_col, file_row))
    return {
        "isc": isc,
        "ncol": np.bincount(file_row, minlength=data.n_orbitals).astype(np.int32),
        "list_col": (file_col[order] + 1).astype(np.int32),
        "flat": flat[order],
    }


def create_fortran_output(path: str | os.PathLike) -> Path:
    """Create ``path`` (empty) for sisl's Fortran TSHS writer to write into, and return it.

    When that writer cannot open its file (a read-only or special folder) it writes the whole file
    to ``fort.1000`` in the working folder instead, and reports nothing.  Creating the file first
    makes such a folder fail here, with the ``OSError`` that :func:`hforge.files.atomic_write` turns
    into an ``OutputError`` naming the target.
    """
    path = Path(path)
    with open(path, "wb"):
        pass
    return path


def check_written_tshs(path: str | os.PathLike, target: str | os.PathLike) -> list[tuple[int, int]]:
    """The Fortran records of a TSHS file just written to ``path`` by sisl's Fortran writer, checked
    to be complete.

    That writer does not always report a failed write: a write cut short by a full disk or a file
    size limit can return without an error and leave a truncated file.  A complete TSHS (the format
    sisl writes) has ``11 + n_orbitals (2 + n_spin)`` records that tile the file.

    Raises:
        OutputError: a truncated or incomplete file, naming ``target`` (the path the user asked for).
    """
    path = Path(path)
    try:
        records = _fortran_records(path)
        sizes = _fortran_sizes(path, ".TSHS", records)
    except (HForgeError, OSError) as exc:
        detail = exc.message if isinstance(exc, HForgeError) else str(exc)
        raise OutputError(f"the written file is truncated (full disk or file size limit?): {detail}", path=target) from exc
    expected = 11 + sizes["n_orbitals"] * (2 + sizes["n_spin"])
    if len(records) != expected:
        raise OutputError(
            f"the written file is incomplete ({len(records)} of {expected} records; full disk or file size limit?)",
            path=target,
        )
    return records


def _geometry_bohr(data: HSData) -> tuple[np.ndarray, np.ndarray]:
    return _to_stored(data.cell, BOHR_TO_ANG), _to_stored(data.positions, BOHR_TO_ANG)


def _record_bytes(*parts: np.ndarray) -> bytes:
    """One Fortran sequential unformatted record (little-endian int32 length markers) of ``parts``."""
    payload = b"".join(np.ascontiguousarray(part).tobytes() for part in parts)
    marker = struct.pack("<i", len(payload))
    return marker + payload + marker


def _write_rows(f: Any, values: np.ndarray, ncol: np.ndarray) -> None:
    """``values`` (flat, row after row) as one record per row of ``ncol`` values."""
    values = np.ascontiguousarray(values)
    ends = np.cumsum(ncol)
    for start, end in zip((ends - ncol).tolist(), ends.tolist()):
        f.write(_record_bytes(values[start:end]))


def write_tshs_header(
    f: Any, nsc: Sequence[int], cell_bohr: np.ndarray, xyz_bohr: np.ndarray, orbital_offsets: np.ndarray, n_spin: int,
    nnz: int, fermi_ry: float,
) -> None:
    """The records of a TSHS file (version 1, the layout of sisl's Fortran writer and SIESTA's) up to
    the matrix: sizes, ``nsc``, cell and positions (Bohr), flags, k-grid, E_F (Ry) with sisl's Qtot
    and temperature, and ``lasto`` (``orbital_offsets``, ``(n_atoms + 1,)``)."""
    nsc = np.asarray(nsc, dtype=np.int32)
    n_orbitals = int(orbital_offsets[-1])
    i4 = lambda *values: np.asarray(values, dtype="<i4")  # noqa: E731
    f8 = lambda *values: np.asarray(values, dtype="<f8")  # noqa: E731
    f.write(_record_bytes(i4(1)))  # version
    f.write(_record_bytes(i4(len(orbital_offsets) - 1, n_orbitals, n_orbitals * int(np.prod(nsc)), n_spin, nnz)))
    f.write(_record_bytes(nsc.astype("<i4")))
    f.write(_record_bytes(np.asarray(cell_bohr).astype("<f8"), np.asarray(xyz_bohr).astype("<f8")))  # cell, xa: Fortran order
    f.write(_record_bytes(i4(0, 0, 0)))  # Gamma, TSGamma, onlyS: .false.
    f.write(_record_bytes(i4(2, 0, 0, 0, 2, 0, 0, 0, 2), f8(0, 0, 0)))  # k-grid, its displacement
    f.write(_record_bytes(f8(fermi_ry, 1.0, 0.001)))  # E_F (Ry), Qtot, Temp
    f.write(_record_bytes(i4(0, 0)))  # istep, ia1
    f.write(_record_bytes(np.asarray(orbital_offsets).astype("<i4")))  # lasto(0:na_u)


def _write_tshs(data: HSData, path: Path) -> None:
    """The TSHS layout of version 1, record by record as sisl's writer (``tshs_write.f90``) and SIESTA
    write it, with the stored values chosen to read back exactly and the E_F record set."""
    layout = _siesta_layout(data)
    flat, ncol = layout["flat"], layout["ncol"]
    s = data.s[flat].astype(np.float64)
    # sisl reads H_eV = (H_Ry - E_F,Ry S) * Ry: store the unshifted H_Ry that reads back exactly.
    ef = _to_stored(np.array([data.fermi_level]), RY_TO_EV)[0]
    shift = ef * s
    h = data.h[:, flat].T.astype(np.float64)
    h_ry = _preimage(h, lambda x: (x - shift[:, None]) * RY_TO_EV, h / RY_TO_EV + shift[:, None])
    cell, xyz = _geometry_bohr(data)
    with open(path, "wb") as f:
        write_tshs_header(f, data.nsc, cell, xyz, data.orbital_offsets, data.n_spin, len(flat), ef)
        f.write(_record_bytes(ncol.astype("<i4")))
        _write_rows(f, layout["list_col"].astype("<i4"), ncol)
        _write_rows(f, s.astype("<f8"), ncol)
        for spin in range(data.n_spin):
            _write_rows(f, h_ry[:, spin].astype("<f8"), ncol)
        f.write(_record_bytes(layout["isc"].astype("<i4")))  # isc_off(3, n_s)


def _write_nc(data: HSData, path: Path) -> None:
    import netCDF4
    import sisl

    H = data.to_sisl()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sisl.get_sile(str(path), mode="w").write_hamiltonian(H, Ef=data.fermi_level)
    layout = _siesta_layout(data)
    flat = layout["flat"]
    with netCDF4.Dataset(str(path), "r+") as nc:
        sparse = nc.groups["SPARSE"]
        if len(sparse.dimensions["nnzs"]) != len(flat):
            raise FileFormatError(
                f"sisl wrote {len(sparse.dimensions['nnzs'])} non-zeros, expected {len(flat)}", path=path
            )
        ef = float(_to_stored(np.array([data.fermi_level]), RY_TO_EV)[0])
        ef_read = ef * RY_TO_EV
        s = data.s[flat].astype(np.float64)
        sparse["n_col"][:] = layout["ncol"]
        sparse["list_col"][:] = layout["list_col"]
        sparse["isc_off"][:] = layout["isc"].astype(np.int32)
        sparse["S"][:] = s
        # sisl reads H_eV = H_Ry * Ry + S * (-E_F): store the H_Ry that reads back exactly.
        shift = s * -np.array(ef_read) if ef_read != 0 else np.zeros_like(s)
        for d in range(data.n_spin):
            h = data.h[d, flat].astype(np.float64)
            sparse["H"][d, :] = _preimage(h, lambda x: x * RY_TO_EV + shift, (h - shift) / RY_TO_EV)
        nc["Ef"][:] = ef
        cell, xyz = _geometry_bohr(data)
        nc["cell"][:] = cell
        nc["xa"][:] = xyz
        nc.setncattr(_BASIS_ATTRIBUTE, data.basis.to_json(radials=False))


def write_hs(data: HSData, path: str | os.PathLike) -> Path:
    """Write H and S as a SIESTA ``.TSHS`` or CDF ``.nc`` file, atomically (:func:`hforge.files.atomic_write`).

    Reading the result back (with the same basis) gives the same H, S, E_F, geometry and
    supercell bit for bit.  A ``.nc`` file also records the basis; a TSHS cannot.  Matrices of a
    Γ-only file (:attr:`HSData.gamma_only`) are written folded into the unit cell (nsc 1 1 1), as
    the file stored them; ``replace(data, gamma_only=False)`` writes unfolded ones periodic.

    Returns:
        The path written.

    Raises:
        FileFormatError: an extension other than ``.TSHS``/``.nc``.
        OutputError: the file cannot be written (full disk, read-only or special folder); no
            partial or temporary file is left.
    """
    path = Path(path)
    writers = {".TSHS": _write_tshs, ".nc": _write_nc}
    writer = writers.get(path.suffix)
    if writer is None:
        raise FileFormatError("HForge writes .TSHS and .nc files", path=path)
    if data.gamma_only and not data.folded:
        data = data.fold()
    with atomic_write(path, None) as tmp:
        writer(data, tmp)
    return path

