"""Readers of SIESTA basis files: ``.ion`` (text), ``.ion.nc`` and ``.ion.xml``.

``.ion.nc`` and ``.ion.xml`` are read through sisl's siles (shells, radii); sisl does not
expose the Kleinman-Bylander projectors or the neutral-atom potential, which are taken from the
same file here.  sisl cannot read the plain-text ``.ion`` file; it is parsed here.  Every reader
keeps the radial tables (:class:`~hforge.basis.radial.SpeciesRadials`: orbitals, KB projectors
with their energies, V_NA) exactly as the file stores them (Bohr, Ry).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hforge.basis.basis_set import BasisSet, Shell, SpeciesBasis
from hforge.basis.radial import BOHR_TO_ANG, KBProjector, RadialFunction, SpeciesRadials
from hforge.errors import BasisMismatchError, FileFormatError, HForgeError, UnknownSpeciesError

__all__ = ["read_ion", "read_basis_folder", "ion_files", "BOHR_TO_ANG", "ION_SUFFIXES"]

#: Preference order when a species has several ion files (all hold the same basis).
ION_SUFFIXES = (".ion.nc", ".ion.xml", ".ion")


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
        radials, valence = _nc_radials(path)
    else:
        radials, valence = _xml_radials(path)
    kb = [(p.l, p.radial.cutoff * BOHR_TO_ANG) for p in radials.projectors]
    return SpeciesBasis.from_sisl(atom, kb_projectors=kb, valence_charge=valence, radials=radials)


def _nc_radials(path: Path) -> tuple[SpeciesRadials, float | None]:
    import netCDF4

    with netCDF4.Dataset(str(path)) as nc:
        def tables(name: str, deltas: str, cutoffs: str) -> list[RadialFunction]:
            values = np.asarray(nc[name][:], dtype=np.float64)
            return [RadialFunction(d, v, c) for d, v, c in zip(nc[deltas][:], values, nc[cutoffs][:])]

        orbitals = tables("orb", "delta", "cutoff")
        projectors = [
            KBProjector(int(l), float(e), t)
            for l, e, t in zip(nc["pjnl_l"][:], nc["pjnl_ekb"][:], tables("proj", "kbdelta", "kbcutoff"))
        ]
        vna = None
        if "vna" in nc.variables:
            var = nc["vna"]
            vna = RadialFunction(var.getncattr("Vna_delta"), np.asarray(var[:], dtype=np.float64), var.getncattr("Vna_cutoff"))
        valence = float(nc.getncattr("Valence_charge")) if "Valence_charge" in nc.ncattrs() else None
    return SpeciesRadials(tuple(orbitals), tuple(projectors), vna), valence


def _xml_table(element: Any, path: Path) -> RadialFunction:
    radfunc = element.find("radfunc")
    if radfunc is None:
        raise FileFormatError(f"<{element.tag}> holds no <radfunc> table", path=path)
    data = np.array(radfunc.findtext("data", "").split(), dtype=np.float64).reshape(-1, 2)
    if len(data) != int(radfunc.findtext("npts")):
        raise FileFormatError(f"<{element.tag}> table: {len(data)} rows for npts={radfunc.findtext('npts')}", path=path)
    return RadialFunction(float(radfunc.findtext("delta")), data[:, 1], float(radfunc.findtext("cutoff")))


def _xml_radials(path: Path) -> tuple[SpeciesRadials, float | None]:
    import xml.etree.ElementTree as ET

    root = ET.parse(str(path)).getroot()
    orbitals = [_xml_table(o, path) for o in root.iterfind("paos/orbital")]
    projectors = [
        KBProjector(int(p.get("l")), float(p.get("ref_energy")), _xml_table(p, path)) for p in root.iterfind("kbs/projector")
    ]
    vna = root.find("vna")
    valence = float(root.findtext("valence")) if root.find("valence") is not None else None
    return SpeciesRadials(tuple(orbitals), tuple(projectors), None if vna is None else _xml_table(vna, path)), valence


def _read_ion_text(path: Path) -> SpeciesBasis:
    """Parse SIESTA's text ``.ion`` file (format written by ``atm_write`` / ``dump_ion``)."""
    lines = path.read_text(errors="replace").splitlines()
    header: dict[str, str] = {}
    shells: list[Shell] = []
    orbitals: list[RadialFunction] = []
    projectors: list[KBProjector] = []
    vna = None
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
            orbitals.append(_text_table(lines, k + 1, path))
            shells.append(Shell(n, l, z, bool(pol), orbitals[-1].cutoff * BOHR_TO_ANG))
        elif comment.startswith("kb l, "):
            fields = value.split()  # "l n E" or, with lj projectors, "l j n E"
            projectors.append(KBProjector(int(fields[0]), float(fields[-1]), _text_table(lines, k + 1, path)))
        elif line.startswith("# Vna:"):
            vna = _text_table(lines, k + 1, path)
    missing = [key for key in ("Label", "Atomic number") if key not in header]
    if missing or n_shells is None or n_kb is None:
        raise FileFormatError(f"not a SIESTA .ion file: no {missing or 'orbital counts'} header line", path=path)
    if len(shells) != n_shells or len(projectors) != n_kb:
        raise FileFormatError(
            f"truncated .ion file: header announces {n_shells} orbital shells and {n_kb} KB projectors, "
            f"found {len(shells)} and {len(projectors)}",
            path=path,
        )
    valence = float(header["Valence charge"]) if "Valence charge" in header else None
    kb = tuple((p.l, p.radial.cutoff * BOHR_TO_ANG) for p in projectors)
    radials = SpeciesRadials(tuple(orbitals), tuple(projectors), vna)
    return SpeciesBasis(header["Label"], int(header["Atomic number"]), tuple(shells), kb, valence, radials)


def _text_table(lines: list[str], k: int, path: Path) -> RadialFunction:
    """The table that starts with the ``npts, delta, cutoff`` line ``k`` (0-based) of an ``.ion`` file."""
    try:
        fields = lines[k].partition("#")[0].split()
        npts, delta, cutoff = int(fields[0]), float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise FileFormatError(f"line {k + 1}: expected 'npts delta cutoff'", path=path) from None
    rows = lines[k + 1 : k + 1 + npts]
    try:
        values = [float(row.split()[1]) for row in rows]
    except (IndexError, ValueError):
        values = []
    if len(values) != npts:
        raise FileFormatError(f"line {k + 2}: radial table of {npts} points is truncated or malformed", path=path)
    return RadialFunction(delta, np.array(values), cutoff)


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
