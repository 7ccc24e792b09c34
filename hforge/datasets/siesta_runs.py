"""SIESTA run driver: input folders from a template run, and resumable runs of a folder of them.

:func:`write_siesta_inputs` writes one folder per structure with exactly the settings of a template
run: the template's ``fdf`` is copied line by line (functional, mesh cut-off, k-grid cut-off, SCF
tolerances, ``User.Basis``, ``SaveHS``, ``TS.HS.Save``, ``ForceAuxCell``, comments, everything) and
only the geometry is replaced in place (``SystemName``, ``SystemLabel``, ``NumberOfAtoms``,
``LatticeConstant``, the ``LatticeVectors``/``LatticeParameters`` block, ``AtomicCoordinatesFormat``
and the ``AtomicCoordinatesAndAtomicSpecies`` block; ``AtomicCoordinatesOrigin`` is dropped), and
``settings`` given by the caller replace the template's line of the same label in place (or are
appended). The basis files the template uses (``<label>.ion`` with ``User.Basis``, else ``<label>.psf``/``.psml``)
and files it includes are copied next to each input.

:func:`run_siesta` runs every folder that has not finished, one by one (``siesta < label.fdf >
label.out`` in the folder); the log is written through :func:`hforge.files.atomic_write` and
appears as ``label.out`` when SIESTA exits, so a killed run is simply run again. Finished runs (converged or not) are skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from hforge.errors import (
    BackendUnavailableError,
    BasisMismatchError,
    FileFormatError,
    GeometryError,
    InputError,
    UnknownSpeciesError,
)
from hforge.files import atomic_write
from hforge.io.runs import log_failure
from hforge.structures.validate import validate_structure

__all__ = [
    "RunStatus",
    "SiestaTemplate",
    "fdf_key",
    "find_runs",
    "find_siesta",
    "read_structures",
    "run_siesta",
    "run_status",
    "write_siesta_inputs",
]

# fdf labels ignore case and the characters "-", "_", "."
_GEOMETRY_KEYS = ("systemname", "systemlabel", "numberofatoms", "latticeconstant", "atomiccoordinatesformat")
_GEOMETRY_BLOCKS = {
    "latticevectors": "lattice",
    "latticeparameters": "lattice",
    "atomiccoordinatesandatomicspecies": "coordinates",
}
_DROPPED = ("atomiccoordinatesorigin",)
_UNSUPPORTED = ("zmatrix",)
_TRUE = {"t", "true", "yes", "y", "1"}


def fdf_key(label: str) -> str:
    """An fdf label as SIESTA compares them: case and the characters ``-``, ``_``, ``.`` ignored."""
    return re.sub(r"[-_.]", "", label).lower()


def _is_true(value: str) -> bool:
    return value.strip().strip(".").lower() in _TRUE if value.strip() else True


@dataclass(frozen=True)
class _Item:
    """One fdf item: a comment/blank line, a ``label value`` line, or a block (``%block`` ... ``%endblock``)."""

    kind: str  # "text", "key" or "block"
    key: str  # normalised label ("" for text)
    words: tuple[str, ...]  # words of the first line, comments removed
    lines: tuple[str, ...]  # the original lines

    @property
    def value(self) -> str:
        return " ".join(self.words[1:])

    @property
    def included(self) -> str | None:
        """The file named by ``%include FILE``, ``label < FILE`` or ``%block label < FILE``."""
        if self.words[:1] == ("%include",) and len(self.words) > 1:
            return self.words[1]
        if "<" in self.words[:-1]:
            return self.words[self.words.index("<") + 1]
        return None


def _parse_fdf(path: Path) -> list[_Item]:
    """The fdf as a list of items, every line kept."""
    items: list[_Item] = []
    lines = path.read_text().splitlines()
    k = 0
    while k < len(lines):
        words = tuple(lines[k].split("#")[0].split())
        if not words or words[0].startswith(("!", ";")):
            items.append(_Item("text", "", words, (lines[k],)))
        elif words[0].lower() == "%block" and len(words) > 1:
            end = k
            if "<" not in words:  # `%block label < FILE` is a single line
                end = next((e for e in range(k + 1, len(lines)) if lines[e].lower().split()[:1] == ["%endblock"]), None)
                if end is None:
                    raise FileFormatError(f"%block {words[1]} has no %endblock", path=path)
                closing = lines[end].split()[1:2]
                if closing and fdf_key(closing[0]) != fdf_key(words[1]):
                    raise FileFormatError(f"%block {words[1]} has no %endblock (next: {lines[end].strip()})", path=path)
            items.append(_Item("block", fdf_key(words[1]), words, tuple(lines[k : end + 1])))
            k = end
        else:
            items.append(_Item("key", fdf_key(words[0]), words, (lines[k],)))
        k += 1
    return items


@dataclass(frozen=True)
class SiestaTemplate:
    """A template SIESTA run: its fdf, species and the files each new run needs.

    Attributes:
        fdf: path of the template's fdf.
        species: ``(index, atomic number, label)`` of each ``ChemicalSpeciesLabel`` entry.
        files: files copied into every run folder (basis/pseudopotentials, included files).
    """

    fdf: Path
    species: tuple[tuple[int, int, str], ...]
    files: tuple[Path, ...]

    @classmethod
    def from_run(cls, template: str | os.PathLike, basis: str | os.PathLike | None = None) -> SiestaTemplate:
        """Read a template run folder (exactly one ``*.fdf``) or fdf file.

        Basis files are looked up in ``basis`` when given, else in the template's folder, then in
        ``basis/`` beside it or one level up (the layout of ``shared/abn``: ``runs/<run>/``, ``basis/``).

        Raises:
            FileFormatError: no fdf, several, or a malformed one (no ``ChemicalSpeciesLabel``).
            BasisMismatchError: a basis or pseudopotential file the template needs is missing.
            InputError: a template with a ``Zmatrix`` geometry.
        """
        path = Path(template)
        if path.is_dir():
            candidates = sorted(path.glob("*.fdf"))
            if len(candidates) != 1:
                raise FileFormatError(f"expected one .fdf in the template folder, found {len(candidates)}", path=path)
            path = candidates[0]
        if not path.is_file():
            raise FileFormatError("template fdf not found", path=path)
        items = _parse_fdf(path)
        blocks = {item.key: item for item in items if item.kind == "block"}
        keys = {item.key: item for item in items if item.kind == "key"}
        for name in _UNSUPPORTED:
            if name in blocks or name in keys:
                raise InputError("templates with a Zmatrix geometry are not supported", path=path)
        if "chemicalspecieslabel" not in blocks:
            raise FileFormatError("no %block ChemicalSpeciesLabel", path=path)
        species = []
        for line in blocks["chemicalspecieslabel"].lines[1:-1]:
            words = line.split("#")[0].split()
            if not words:
                continue
            try:
                species.append((int(words[0]), int(words[1]), words[2]))
            except (ValueError, IndexError):
                raise FileFormatError(f"bad ChemicalSpeciesLabel line {line.strip()!r}", path=path) from None
        user_basis = "userbasis" in keys and _is_true(keys["userbasis"].value)
        netcdf = "userbasisnetcdf" in keys and _is_true(keys["userbasisnetcdf"].value)
        searched = [Path(basis)] if basis is not None else [path.parent, path.parent.parent / "basis",
                                                             path.parent.parent.parent / "basis"]
        files = []
        for _, z, label in species:
            suffixes = ((".ion.nc",) if netcdf else (".ion",)) if user_basis else (".psf", ".psml")
            found = [d / f"{label}{s}" for d in searched for s in suffixes if (d / f"{label}{s}").is_file()]
            if not found:
                wanted = " or ".join(f"{label}{s}" for s in suffixes)
                where = ", ".join(str(d) for d in searched)
                raise BasisMismatchError(
                    f"species {label} (Z={z}) needs {wanted}, not found in {where}; name the basis folder (--basis)",
                    path=path,
                )
            files.append(found[0])
        for item in items:
            if item.included and item.key not in _GEOMETRY_BLOCKS and item.key not in _GEOMETRY_KEYS:
                source = path.parent / item.included
                if not source.is_file():
                    raise FileFormatError(f"included file {item.included} not found", path=path)
                files.append(source)
        return cls(fdf=path, species=tuple(species), files=tuple(dict.fromkeys(files)))

    def species_index(self, atoms: Atoms, *, path: str | os.PathLike | None = None) -> np.ndarray:
        """The template's species index of each atom, matched by atomic number.

        Raises:
            UnknownSpeciesError: an element the template lacks, or one with several species.
        """
        index = np.zeros(len(atoms), dtype=int)
        for z in np.unique(atoms.numbers):
            matches = [k for k, zk, _ in self.species if zk == z]
            if len(matches) != 1:
                symbol = atoms[int(np.flatnonzero(atoms.numbers == z)[0])].symbol
                problem = "has no species for" if not matches else "has several species for"
                raise UnknownSpeciesError(f"the template {self.fdf} {problem} {symbol} (Z={z})", path=path)
            index[atoms.numbers == z] = matches[0]
        return index

    def render(
        self, atoms: Atoms, name: str, *, settings: Mapping[str, str] | None = None, path: str | os.PathLike | None = None
    ) -> str:
        """The template's fdf text with the geometry of ``atoms``, the system name/label ``name`` and
        ``settings`` (fdf label -> value, e.g. ``{"DM.UseSaveDM": "T"}``) in place of the template's lines.

        Raises:
            GeometryError: a cell that is not periodic in three directions.
            InputError: a setting of the geometry, or one naming a block of the template.
        """
        if not atoms.pbc.all():
            raise GeometryError("SIESTA needs a cell periodic in all three directions (give one)", path=path)
        items = _parse_fdf(self.fdf)
        wanted = {fdf_key(label): f"{label} {value}" for label, value in (settings or {}).items()}
        geometry = set(_GEOMETRY_KEYS) | set(_GEOMETRY_BLOCKS) | {"numberofspecies", "chemicalspecieslabel"}
        blocks = {item.key for item in items if item.kind == "block"}
        refused = sorted(label for label in (settings or {}) if fdf_key(label) in geometry | blocks)
        if refused:
            raise InputError(f"settings cannot replace the geometry, species or a %block: {', '.join(refused)}", path=self.fdf)
        species = self.species_index(atoms, path=path)
        cell = atoms.cell.array
        replacements = {
            "systemname": [f"SystemName {name}"],
            "systemlabel": [f"SystemLabel {name}"],
            "numberofatoms": [f"NumberOfAtoms {len(atoms)}"],
            "latticeconstant": ["LatticeConstant 1.0 Ang"],
            "lattice": ["%block LatticeVectors", *(_row(v) for v in cell), "%endblock LatticeVectors"],
            "atomiccoordinatesformat": ["AtomicCoordinatesFormat Ang"],
            "coordinates": [
                "%block AtomicCoordinatesAndAtomicSpecies",
                *(f"{_row(x)} {s}" for x, s in zip(atoms.positions, species)),
                "%endblock AtomicCoordinatesAndAtomicSpecies",
            ],
        }
        out: list[str] = []
        for item in items:
            group = _GEOMETRY_BLOCKS.get(item.key) if item.kind == "block" else None
            if item.kind == "key" and item.key in _GEOMETRY_KEYS:
                group = item.key
            if group is not None:
                out.extend(replacements.pop(group, []))
            elif item.kind == "key" and item.key in wanted:
                out.append(wanted.pop(item.key))
            elif item.key not in _DROPPED:
                out.extend(item.lines)
        for lines in replacements.values():  # geometry items the template lacked
            out.extend(lines)
        out.extend(wanted.values())  # settings the template lacked
        return "\n".join(out) + "\n"


def _row(vector: np.ndarray) -> str:
    return "  " + " ".join(f"{x:.10f}" for x in vector)


def read_structures(paths: Sequence[str | os.PathLike]) -> list[tuple[str, Atoms, Path]]:
    """``(name, atoms, path)`` for every structure in files any ASE reader knows.

    A file with one structure is named after its stem; frames of a multi-frame file are
    ``<stem>_<k>``. Each structure is validated (:func:`~hforge.structures.validate_structure`).

    Raises:
        FileFormatError: an unreadable file. GeometryError: an unphysical structure.
        InputError: two structures with the same name.
    """
    import ase.io

    found: list[tuple[str, Atoms, Path]] = []
    for raw in paths:
        path = Path(raw)
        try:
            frames = ase.io.read(path, index=":")
        except Exception as error:  # ASE raises many kinds of error for a bad file
            raise FileFormatError(f"cannot read a structure: {error}", path=path) from error
        for k, atoms in enumerate(frames):
            validate_structure(atoms, path=path)
            found.append((path.stem if len(frames) == 1 else f"{path.stem}_{k}", atoms, path))
    names = [name for name, _, _ in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"several structures would make the same run folder: {', '.join(duplicated)}")
    return found


def write_siesta_inputs(
    structures: Sequence[str | os.PathLike],
    template: str | os.PathLike,
    out: str | os.PathLike,
    *,
    basis: str | os.PathLike | None = None,
    overwrite: bool = False,
    settings: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``out/<name>/<name>.fdf`` (+ basis files) for each structure, with the template's settings.

    Args:
        structures: structure files (any format ASE reads); ``name`` is the file's stem.
        template: a SIESTA run folder (or its fdf) whose settings are copied.
        out: folder of the run folders (created).
        basis: folder of the ``.ion`` (or pseudopotential) files, when not beside the template.
        overwrite: replace a run folder whose input differs; without it such a folder is an error.
            A folder whose input is identical is left alone (its results are kept).
        settings: fdf label -> value replacing (or added to) the template's (:meth:`SiestaTemplate.render`).

    Returns:
        The run folders, in the order of ``structures``.
    """
    recipe = SiestaTemplate.from_run(template, basis)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for name, atoms, path in read_structures(structures):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise InputError(f"{name!r} cannot be a SIESTA SystemLabel (letters, digits, _ . + - only)", path=path)
        text = recipe.render(atoms, name, settings=settings, path=path)
        folder = out / name
        existing = folder / f"{name}.fdf"
        if existing.is_file() and existing.read_text() == text:
            folders.append(folder)
            continue
        if folder.exists() and not overwrite:
            raise InputError(f"run folder exists with a different input (use overwrite): {folder}", path=path)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
        (staging / f"{name}.fdf").write_text(text)
        for source in recipe.files:
            shutil.copy2(source, staging / source.name)
        if folder.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
            folder.rename(trash / name)
            staging.rename(folder)
            shutil.rmtree(trash)
        else:
            staging.rename(folder)
        folders.append(folder)
    return folders


# ---- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """State of one run folder.

    Attributes:
        name: the run's label (folder name).
        folder: the run folder.
        state: ``"pending"`` (not run, or killed), ``"converged"``, ``"unconverged"`` (SCF did not
            converge) or ``"failed"`` (SIESTA stopped without finishing, or its output is incomplete).
        detail: what the output says, for a person.
        scf_iterations: SCF iterations of a converged run.
        seconds: wall time of the run when it ran in this call.
    """

    name: str
    folder: Path
    state: str
    detail: str = ""
    scf_iterations: int | None = None
    seconds: float | None = None

    @property
    def finished(self) -> bool:
        """Converged or unconverged: running it again would give the same result."""
        return self.state in ("converged", "unconverged")


def find_runs(out: str | os.PathLike) -> list[Path]:
    """Run folders under ``out``: sub-folders ``<name>`` holding ``<name>.fdf``, sorted by name."""
    out = Path(out)
    if not out.is_dir():
        raise InputError("not a folder of SIESTA runs", path=out)
    return sorted(d for d in out.iterdir() if d.is_dir() and (d / f"{d.name}.fdf").is_file())


def run_status(folder: str | os.PathLike) -> RunStatus:
    """The state of a run folder, from ``<name>.out`` (and the ``.TSHS`` when the fdf asks for one)."""
    folder = Path(folder)
    name = folder.name
    log = folder / f"{name}.out"
    if not log.is_file():
        return RunStatus(name, folder, "pending")
    text = log.read_text(errors="replace")
    failure = log_failure(text)
    if failure is not None:
        kind, message = failure
        return RunStatus(name, folder, "unconverged" if kind == "unconverged" else "failed", message)
    keys = {item.key: item for item in _parse_fdf(folder / f"{name}.fdf") if item.kind == "key"}
    if "tshssave" in keys and _is_true(keys["tshssave"].value) and not (folder / f"{name}.TSHS").is_file():
        return RunStatus(name, folder, "failed", f"no {name}.TSHS although TS.HS.Save is set")
    match = re.search(r"SCF cycle converged after\s+(\d+)\s+iterations", text)
    return RunStatus(name, folder, "converged", "", int(match.group(1)) if match else None)


def find_siesta(executable: str | None = None) -> list[str]:
    """The command that runs SIESTA: ``executable``, else ``$SIESTA``, else ``siesta`` on ``PATH``.

    ``executable`` and ``$SIESTA`` may hold a launcher (``"mpirun -np 4 siesta"``).

    Raises:
        BackendUnavailableError: no SIESTA executable found.
    """
    source, command = "argument", executable
    if command is None and os.environ.get("SIESTA"):
        source, command = "$SIESTA", os.environ["SIESTA"]
    if command is None:
        found = shutil.which("siesta")
        if found is None:
            raise BackendUnavailableError(
                "no SIESTA executable: none named, $SIESTA is not set and `siesta` is not on PATH "
                "(install SIESTA, e.g. from conda-forge, or set SIESTA=/path/to/siesta)"
            )
        return [found]
    words = shlex.split(command)
    if not words or shutil.which(words[0]) is None:
        raise BackendUnavailableError(f"the SIESTA command {command!r} (from {source}) is not an executable")
    return words


def run_siesta(
    out: str | os.PathLike, *, executable: str | None = None, progress: bool = True
) -> list[RunStatus]:
    """Run every unfinished run folder under ``out`` one by one; skip finished ones.

    Args:
        out: folder written by :func:`write_siesta_inputs`.
        executable: the SIESTA command (default ``$SIESTA`` or ``siesta`` on ``PATH``).
        progress: show a progress bar over the runs.

    Returns:
        The status of every run folder after this call (unconverged and failed ones included:
        the caller reports them).

    Raises:
        BackendUnavailableError: runs to do and no SIESTA executable.
    """
    from tqdm.auto import tqdm

    statuses = {folder: run_status(folder) for folder in find_runs(out)}
    todo = [folder for folder, status in statuses.items() if not status.finished]
    if not todo:
        return list(statuses.values())
    command = find_siesta(executable)
    with tqdm(total=len(todo), unit="run", desc="SIESTA", disable=not progress) as bar:
        for folder in todo:
            bar.set_postfix_str(folder.name)
            began = time.perf_counter()
            _run_one(command, folder)
            status = run_status(folder)
            statuses[folder] = RunStatus(**{**status.__dict__, "seconds": time.perf_counter() - began})
            bar.update(1)
    return list(statuses.values())


def _run_one(command: list[str], folder: Path) -> None:
    name = folder.name
    with open(folder / f"{name}.fdf", "rb") as stdin, atomic_write(folder / f"{name}.out", "wb") as stdout:
        subprocess.run(command, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT, cwd=folder, check=False)
