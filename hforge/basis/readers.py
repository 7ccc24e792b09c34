"""Readers of SIESTA basis files: ``.ion`` (text), ``.ion.nc`` and ``.ion.xml``.

``.ion.nc`` and ``.ion.xml`` are read through sisl's siles (shells, radii); sisl does not
expose the Kleinman-Bylander projector radii, which are taken from the same file here.
sisl cannot read the plain-text ``.ion`` file; it is parsed here (header and the
``npts, delta, cutoff`` line of each PAO and KB table; the radial tables are skipped).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from hforge.basis.basis_set import BasisSet, Shell, SpeciesBasis
from hforge.errors import BasisMismatchError, FileFormatError, HForgeError, UnknownSpeciesError

__all__ = ["read_ion", "read_basis_folder", "ion_files", "BOHR_TO_ANG", "ION_SUFFIXES"]

#: Preference order when a species has several ion files (all hold the same basis).
ION_SUFFIXES = (".ion.nc", ".ion.xml", ".ion")


def _bohr() -> float:
    from sisl.unit.siesta import unit_convert

    return float(unit_convert("Bohr", "Ang"))


#: Å per Bohr, the constant sisl uses for SIESTA files.
BOHR_TO_ANG = _bohr()


def _suffix(path: Path) -> str | None:
    name = path.name
    return next((s for s in ION_SUFFIXES if name.endswith(s)), None)


def read_ion(path: str | os.PathLike) -> SpeciesBasis:
    """Read the basis of one species from ``<label>.ion``, ``.ion.nc`` or ``.ion.xml``.

    Results are cached per file (path, size, modification time): converting hundreds of runs
    that share one basis folder reads it once.

    Raises:
        FileFormatError: unknown extension, missing, truncated or malformed file.
    """
    path = Path(path).resolve()
    suffix = _suffix(path)
    if suffix is None:
        raise FileFormatError("not a SIESTA ion file (.ion, .ion.nc, .ion.xml)", path=path)
    if not path.is_file():
        raise FileFormatError("no such file", path=path)
    stat = path.stat()
    return _read_ion_cached(path, suffix, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _read_ion_cached(path: Path, suffix: str, size: int, mtime_ns: int) -> SpeciesBasis:
    try:
        if suffix == ".ion":
            return _read_ion_text(path)
        return _read_ion_sisl(path, suffix)
    except HForgeError:
        raise
    except Exception as exc:  # sisl, netCDF4 and the XML parser raise many kinds
        raise FileFormatError(f"cannot read the basis: {type(exc).__name__}: {exc}", path=path) from exc


def _read_ion_sisl(path: Path, suffix: str) -> SpeciesBasis:
    import sisl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atom = sisl.get_sile(str(path)).read_basis()
    if suffix == ".ion.nc":
        import netCDF4

        with netCDF4.Dataset(str(path)) as nc:
            kb = list(zip(nc["pjnl_l"][:].tolist(), (nc["kbcutoff"][:] * BOHR_TO_ANG).tolist()))
            valence = float(nc.getncattr("Valence_charge")) if "Valence_charge" in nc.ncattrs() else None
    else:
        import xml.etree.ElementTree as ET

        root = ET.parse(str(path)).getroot()
        kb = [
            (int(p.get("l")), float(p.find("radfunc/cutoff").text) * BOHR_TO_ANG)
            for p in root.iterfind("kbs/projector")
        ]
        valence = float(root.findtext("valence")) if root.find("valence") is not None else None
    return SpeciesBasis.from_sisl(atom, kb_projectors=kb, valence_charge=valence)


def _read_ion_text(path: Path) -> SpeciesBasis:
    """Parse SIESTA's text ``.ion`` file (format written by ``atm_write`` / ``dump_ion``)."""
    lines = path.read_text(errors="replace").splitlines()
    header: dict[str, str] = {}
    shells: list[Shell] = []
    kb: list[tuple[int, float]] = []
    n_shells = n_kb = None
    for k, line in enumerate(lines):
        value, _, comment = line.partition("#")
        comment = comment.strip()
        if comment in ("Symbol", "Label", "Atomic number", "Valence charge"):
            header[comment] = value.strip()
        elif comment.startswith("Lmax for basis"):
            n_shells = int(value.split()[1])
        elif comment.startswith("Lmax for projectors"):
            n_kb = int(value.split()[1])
        elif comment.startswith("orbital l, n, z, is_polarized"):
            l, n, z, pol = (int(x) for x in value.split()[:4])
            shells.append(Shell(n, l, z, bool(pol), _cutoff_line(lines, k + 1, path)))
        elif comment.startswith("kb l, n"):
            kb.append((int(value.split()[0]), _cutoff_line(lines, k + 1, path)))
    missing = [key for key in ("Label", "Atomic number") if key not in header]
    if missing or n_shells is None or n_kb is None:
        raise FileFormatError(f"not a SIESTA .ion file: no {missing or 'orbital counts'} header line", path=path)
    if len(shells) != n_shells or len(kb) != n_kb:
        raise FileFormatError(
            f"truncated .ion file: header announces {n_shells} orbital shells and {n_kb} KB projectors, "
            f"found {len(shells)} and {len(kb)}",
            path=path,
        )
    valence = float(header["Valence charge"]) if "Valence charge" in header else None
    return SpeciesBasis(header["Label"], int(header["Atomic number"]), tuple(shells), tuple(kb), valence)


def _cutoff_line(lines: list[str], k: int, path: Path) -> float:
    """Radius (Å) from the ``npts, delta, cutoff`` line that follows a table header."""
    try:
        fields = lines[k].partition("#")[0].split()
        return float(fields[2]) * BOHR_TO_ANG
    except (IndexError, ValueError):
        raise FileFormatError(f"line {k + 1}: expected 'npts delta cutoff'", path=path) from None


def ion_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{label: path}`` of the ion files in ``folder``, one per label (``.ion.nc`` first)."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for suffix in ION_SUFFIXES:
        for path in sorted(folder.glob(f"*{suffix}")):
            label = path.name[: -len(suffix)]
            if _suffix(path) == suffix:
                found.setdefault(label, path)
    return found


def read_basis_folder(folder: str | os.PathLike, species_order: Sequence[str] | None = None) -> BasisSet:
    """:meth:`BasisSet.from_folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileFormatError("basis folder not found", path=folder)
    files = ion_files(folder)
    if not files:
        raise FileFormatError("no .ion, .ion.nc or .ion.xml file in the basis folder", path=folder)
    labels = list(files) if species_order is None else list(species_order)
    missing = [s for s in labels if s not in files]
    if missing:
        raise UnknownSpeciesError(f"no ion file for species {missing} (found {sorted(files)})", path=folder)
    species = []
    for label in labels:
        sp = read_ion(files[label])
        if sp.symbol != label:
            raise BasisMismatchError(f"holds species {sp.symbol!r}, not {label!r} as its name says", path=files[label])
        species.append(sp)
    if species_order is None:
        species.sort(key=lambda sp: (abs(sp.Z), sp.symbol))
    return BasisSet(tuple(species))
