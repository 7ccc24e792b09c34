"""The dataset store: many structures' H and S in one HDF5 file, read lazily.

Layout (``format = "hforge-hsstore"``, version 1)::

    /                     attrs: format, version, basis (JSON), basis_hash, dtype, half
    /manifest             JSON list, one entry per structure (name, source, source_sha256,
                          n_atoms, species counts, n_orbitals, n_pairs, nnz, fermi_level, split, ...)
    /structures/<name>/   cell, positions, species, pbc, nsc, edge_index, cell_shift, block_ptr,
                          mask (np.packbits of HSData.mask), h (n_spin, nnz) and s (nnz,): the
                          values inside the mask only; attrs fermi_level, source, n_values
    /statistics/          the arrays of :class:`~hforge.io.block_statistics.StoreStatistics`

Uncompressed datasets are contiguous and read through ``np.memmap``; a store
written with ``compression`` is read through h5py.  With ``half=True`` only the canonical half
of the pairs is stored and the partners are rebuilt as transposes on reading (H's asymmetry,
~1e-8 eV in SIESTA output, is then dropped).

*Compact* stores (``overlap=`` given to :func:`write_store` / :func:`convert`; root attributes
``overlap = "computed"``, ``h_quantum``, version 2) keep the structure, its pairs, H and the
provenance only: the canonical half, H as integers in units of :data:`H_QUANTUM` (2^-20 eV, so
within 2^-21 eV = 4.8e-7 eV of the file's; float32 errs by up to 9.4e-7 eV on the aBN cells'
largest entries and compresses to 1.6x the size), every array gzip-compressed.  S is not
stored: every write checks that the S the basis gives (the ``overlap`` function, e.g.
:func:`hforge.ops.two_centre.overlap_blocks`, which lives above this layer) equals the
structure's S within :data:`S_TOLERANCE` (:class:`~hforge.errors.OverlapMismatchError`
otherwise), and reading computes it again (:class:`HSStore` opened with ``overlap``;
:func:`hforge.datasets.open_store` passes it).  Every structure of a converted store also
carries its provenance (``provenance`` attribute, JSON): the run's fdf, the SIESTA version of
its log, and the campaign record beside the run (``<label>.record.json``) when there is one.

Conversion (:func:`convert`) writes every structure to its own part file first (temp + rename,
named by the SHA-256 of its source file), so a killed conversion resumes where it stopped;
the store itself is assembled in a temp file and renamed, so a half-written store never
appears.  Runs that fail (no output, unconverged SCF, unreadable or inconsistent files) are
reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from hforge.basis import BasisSet
from hforge.basis.radial import SpeciesRadials
from hforge.errors import (
    BasisMismatchError,
    ConfigError,
    FileFormatError,
    FoldedMatrixError,
    HForgeError,
    InputError,
    OverlapMismatchError,
)
from hforge.files import atomic_write
from hforge.io.block_statistics import StatisticsAccumulator, StoreStatistics
from hforge.io.hsdata import HSData
from hforge.io.runs import find_log, find_runs, log_text, run_output
from hforge.io.siesta import hs_label, read_hs
from hforge.io.siesta_log import read_siesta_log

__all__ = [
    "HSStore",
    "SplitRule",
    "ConversionReport",
    "OverlapFunction",
    "check_overlap",
    "computed_overlap",
    "convert",
    "write_store",
    "file_sha256",
    "run_provenance",
    "FORMAT",
    "VERSION",
    "H_QUANTUM",
    "S_TOLERANCE",
]

logger = logging.getLogger(__name__)

FORMAT = "hforge-hsstore"
VERSION = 1
#: Version of compact stores (S computed on reading): readers of version 1 cannot read them.
COMPACT_VERSION = 2
#: eV per integer step of a compact store's H.
H_QUANTUM = 2.0**-20
#: Largest ``|S_computed - S_file|`` a compact store accepts (the two-centre S matches SIESTA's to ~1e-8).
S_TOLERANCE = 1e-6
_ARRAYS = ("cell", "positions", "species", "pbc", "nsc", "edge_index", "cell_shift", "block_ptr")


class OverlapFunction(Protocol):
    """S of the pairs of a structure from its basis, flat on ``block_ptr`` (float64): the signature of
    :func:`hforge.ops.two_centre.overlap_blocks`."""

    def __call__(
        self,
        basis: BasisSet,
        species: np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray,
        edge_index: np.ndarray,
        cell_shift: np.ndarray,
        *,
        block_ptr: np.ndarray,
    ) -> np.ndarray: ...


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitRule:
    """Structures with at most ``train_max_atoms`` atoms train, up to ``val_max_atoms`` validate,
    larger ones test (train on small cells, judge transfer to large ones)."""

    train_max_atoms: int = 32
    val_max_atoms: int = 64

    def __call__(self, n_atoms: int) -> str:
        if n_atoms <= self.train_max_atoms:
            return "train"
        return "val" if n_atoms <= self.val_max_atoms else "test"


# ---------------------------------------------------------------------------------------
# writing one structure
# ---------------------------------------------------------------------------------------
def computed_overlap(data: HSData, overlap: OverlapFunction) -> np.ndarray:
    """``(n_values,)`` float64 S of ``data``'s pairs from the basis, 0 outside ``data.mask`` (as a file's S)."""
    s = overlap(data.basis, data.species, data.positions, data.cell, data.edge_index, data.cell_shift, block_ptr=data.block_ptr)
    s[~data.mask] = 0.0
    return s


def check_overlap(data: HSData, computed: np.ndarray, tolerance: float = S_TOLERANCE) -> float:
    """``max |computed - data.s|`` over the stored entries; raises when it exceeds ``tolerance``.

    Raises:
        OverlapMismatchError: naming the source, the largest difference and its pair.
    """
    difference = np.abs(computed - data.s)[data.mask] if data.nnz else np.zeros(1)
    worst = float(difference.max())
    if not worst <= tolerance:  # NaN fails too
        flat = int(np.flatnonzero(data.mask)[int(np.argmax(difference))])
        e = int(data.value_pair[flat])
        (i, j), n = data.edge_index[:, e].tolist(), data.cell_shift[e].tolist()
        symbols = data.basis.symbols
        raise OverlapMismatchError(
            f"S computed from the basis differs from the file's by {worst:.3e} (> {tolerance:.0e}), largest in the block "
            f"of atoms {i} ({symbols[data.species[i]]}) and {j} ({symbols[data.species[j]]}), cell {tuple(n)}, "
            f"{data.pair_distances()[e]:.4f} Å apart: the basis is not the run's (give its ion files) or the geometry moved",
            path=data.source,
        )
    return worst


def _write_structure(
    group: Any,
    data: HSData,
    dtype: np.dtype,
    half: bool,
    compression: str | None,
    overlap: OverlapFunction | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """One structure into ``group``; compact (S checked, not stored; H fixed point) when ``overlap`` is given."""
    if data.folded:
        raise FoldedMatrixError(
            "its H and S are a Γ-only run's, folded into the unit cell with periodic images that cannot be told "
            "apart (hforge.io.reach): a store holds the blocks of every periodic pair, which this file does not give",
            path=data.source,
        )
    if overlap is not None:
        check_overlap(data, computed_overlap(data, overlap))  # every pair, the partners too
        compression = compression or "gzip"
    data = data.canonical_half() if half or overlap is not None else data
    options = {"compression": compression, "shuffle": True} if compression else {}
    for name in _ARRAYS:
        group.create_dataset(name, data=getattr(data, name), **(options if overlap is not None else {}))
    if overlap is None:
        group.create_dataset("h", data=data.h[:, data.mask].astype(dtype), **options)
        group.create_dataset("s", data=data.s[data.mask].astype(dtype), **options)
    else:
        steps = np.rint(data.h[:, data.mask] / H_QUANTUM)
        fits = steps.size == 0 or np.abs(steps).max() < 2**31
        group.create_dataset("h", data=steps.astype(np.int32 if fits else np.int64), **options)
    group.create_dataset("mask", data=np.packbits(data.mask), **options)
    group.attrs["n_values"] = data.n_values
    group.attrs["fermi_level"] = data.fermi_level
    group.attrs["source"] = data.source or ""
    group.attrs["gamma_only"] = data.gamma_only
    if provenance:
        group.attrs["provenance"] = json.dumps(provenance)


def _array(dataset: Any, filename: str) -> np.ndarray:
    """The dataset as an array: memory-mapped when contiguous and uncompressed."""
    offset = dataset.id.get_offset() if dataset.chunks is None and dataset.compression is None else None
    if offset is None or dataset.size == 0:
        return dataset[()]
    return np.memmap(filename, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)


def _read_structure(
    group: Any, basis: BasisSet, half: bool, filename: str, overlap: OverlapFunction | None = None
) -> HSData:
    arrays = {name: _array(group[name], filename) for name in _ARRAYS}
    mask = np.unpackbits(group["mask"][()], count=int(group.attrs["n_values"])).astype(bool)
    h_packed = _array(group["h"], filename)
    compact = "s" not in group
    h = np.zeros((h_packed.shape[0], len(mask)), dtype=np.float64 if compact else h_packed.dtype)
    h[:, mask] = h_packed * H_QUANTUM if compact else h_packed
    if compact:
        if overlap is None:
            raise InputError(
                "a compact store (S not stored): open it with hforge.datasets.open_store / HSDataset / load, "
                "which compute S from the basis", path=filename,
            )
        s = np.zeros(len(mask))
    else:
        s_packed = _array(group["s"], filename)
        s = np.zeros(len(mask), dtype=s_packed.dtype)
        s[mask] = s_packed
    data = HSData(
        basis=basis,
        h=h,
        s=s,
        mask=mask,
        fermi_level=float(group.attrs["fermi_level"]),
        source=str(group.attrs["source"]) or None,
        gamma_only=bool(group.attrs.get("gamma_only", False)),
        **arrays,
    )
    if compact:
        data.s = computed_overlap(data, overlap)
    return data.expand_half() if half else data


def _manifest_entry(name: str, data: HSData, sha: str) -> dict[str, Any]:
    symbols = data.basis.symbols
    counts = np.bincount(data.species, minlength=len(symbols))
    return {
        "name": name,
        "source": data.source,
        "source_sha256": sha,
        "n_atoms": data.n_atoms,
        "species": {symbols[k]: int(c) for k, c in enumerate(counts) if c},
        "n_orbitals": data.n_orbitals,
        "n_pairs": data.n_pairs,
        "n_values": data.n_values,
        "nnz": data.nnz,
        "n_spin": data.n_spin,
        "nsc": data.nsc.tolist(),
        "fermi_level": data.fermi_level,
    }


def write_basis(h5: Any, basis: BasisSet) -> None:
    """The basis into an open HDF5 file: shells as the ``basis`` attribute (JSON), radial tables
    (where the basis has them) as the ``basis_radials`` dataset (gzip-compressed JSON bytes; too
    large for an attribute)."""
    h5.attrs["basis"] = basis.to_json(radials=False)
    if basis.has_radials:
        text = json.dumps([sp.radials.to_dict() for sp in basis]).encode()
        h5.create_dataset("basis_radials", data=np.frombuffer(text, dtype=np.uint8), compression="gzip")


def read_basis(h5: Any) -> BasisSet:
    """Inverse of :func:`write_basis` (stores written before the radial tables were kept have none)."""
    basis = BasisSet.from_json(h5.attrs["basis"])
    if "basis_radials" not in h5:
        return basis
    tables = json.loads(h5["basis_radials"][()].tobytes().decode())
    return BasisSet(tuple(replace(sp, radials=SpeciesRadials.from_dict(t)) for sp, t in zip(basis, tables)))


def _save_statistics(h5: Any, stats: StoreStatistics) -> None:
    group = h5.create_group("statistics")
    for name in StoreStatistics.ARRAYS:
        group.create_dataset(name, data=getattr(stats, name))


def write_store(
    path: str | os.PathLike,
    structures: Iterable[tuple[str, HSData, str]],
    *,
    basis: BasisSet,
    dtype: Any = np.float64,
    half: bool = False,
    compression: str | None = None,
    split_rule: SplitRule = SplitRule(),
    splits: dict[str, str] | None = None,
    overlap: OverlapFunction | None = None,
    provenance: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``(name, data, source_sha256)`` structures into a store at ``path``, atomically.

    Every structure must use ``basis`` (same species indices).  Statistics and the manifest are
    computed while writing.  ``splits`` overrides the split of named structures.

    Args:
        overlap: write a compact store (module docstring): S is checked against this function's
            and not stored; ``dtype``, ``half`` and ``compression`` are then those of the layout.
        provenance: per structure name, what is recorded with it (JSON-ready mapping).

    Raises:
        BasisMismatchError: a structure of another basis.
        OverlapMismatchError: (compact) a structure whose S is not the basis' S.
    """
    import h5py

    path = Path(path)
    if overlap is not None:
        dtype, half = np.float64, True
    manifest = []
    accumulator = StatisticsAccumulator(basis)
    with atomic_write(path, None) as tmp:
        with h5py.File(tmp, "w") as h5:
            root = h5.create_group("structures")
            for name, data, sha in structures:
                if data.basis.hash != basis.hash:
                    raise BasisMismatchError(f"structure {name!r} uses another basis than the store", path=data.source)
                _write_structure(
                    root.create_group(name), data, np.dtype(dtype), half, compression, overlap, (provenance or {}).get(name)
                )
                accumulator.add(data)
                entry = _manifest_entry(name, data, sha)
                entry["split"] = (splits or {}).get(name) or split_rule(data.n_atoms)
                manifest.append(entry)
            h5.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION if overlap is None else COMPACT_VERSION,
                    "basis_hash": basis.hash,
                    "dtype": np.dtype(dtype).name,
                    "half": half,
                    "split_rule": json.dumps(vars(split_rule)),
                }
            )
            if overlap is not None:
                h5.attrs.update({"overlap": "computed", "h_quantum": H_QUANTUM})
            write_basis(h5, basis)
            h5.create_dataset("manifest", data=json.dumps(manifest))
            _save_statistics(h5, accumulator.result())
    return path


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
class HSStore:
    """A store opened read-only; structures are read on demand (memory-mapped when possible).

    The HDF5 file is opened lazily in each process, so a store can be shared by the workers of
    a torch ``DataLoader``.

    Args:
        path: the store file.
        overlap: how S is computed for a compact store (:class:`OverlapFunction`); reading a
            compact store without it raises :class:`~hforge.errors.InputError`.

    Raises:
        FileFormatError: the file is missing or not an HForge store (or of a newer version).
    """

    def __init__(self, path: str | os.PathLike, overlap: OverlapFunction | None = None) -> None:
        import h5py

        self.path = Path(path)
        self.overlap = overlap
        if not self.path.is_file():
            raise FileFormatError("no such store", path=self.path)
        try:
            with h5py.File(self.path, "r") as h5:
                if h5.attrs.get("format") != FORMAT:
                    raise FileFormatError("not an HForge store (no format attribute)", path=self.path)
                self.version = int(h5.attrs["version"])
                if self.version > COMPACT_VERSION:
                    raise FileFormatError(
                        f"store version {self.version}: this HForge reads up to {COMPACT_VERSION}", path=self.path
                    )
                self.compact = h5.attrs.get("overlap") == "computed"
                self.basis = read_basis(h5)
                self.dtype = np.dtype(h5.attrs["dtype"])
                self.half = bool(h5.attrs["half"])
                self.split_rule = SplitRule(**json.loads(h5.attrs["split_rule"]))
                self.manifest: list[dict[str, Any]] = json.loads(h5["manifest"][()])
                stats = {name: h5["statistics"][name][()] for name in StoreStatistics.ARRAYS}
        except HForgeError:
            raise
        except Exception as exc:
            raise FileFormatError(f"cannot read the store: {exc}", path=self.path) from exc
        self.statistics = StoreStatistics(basis=self.basis, **stats)
        self._h5: Any = None
        self._pid: int | None = None

    def _file(self) -> Any:
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest]

    def split(self, split: str) -> list[int]:
        """Indices of the structures of a split (``train``, ``val``, ``test``)."""
        return [k for k, entry in enumerate(self.manifest) if entry["split"] == split]

    def read(self, key: int | str) -> HSData:
        """One structure as :class:`HSData` (H, S in the store's dtype; of a compact store S computed from the basis)."""
        name = self.manifest[key]["name"] if isinstance(key, (int, np.integer)) else key
        return _read_structure(self._file()["structures"][name], self.basis, self.half, str(self.path), self.overlap)

    def provenance(self, key: int | str) -> dict[str, Any]:
        """What the store records of a structure's origin (:func:`run_provenance`; empty for stores without)."""
        name = self.manifest[key]["name"] if isinstance(key, (int, np.integer)) else key
        return json.loads(self._file()["structures"][name].attrs.get("provenance", "{}"))

    def __getitem__(self, key: int | str) -> HSData:
        return self.read(key)

    def __iter__(self):
        return (self.read(k) for k in range(len(self)))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state

    def __repr__(self) -> str:
        splits = {s: len(self.split(s)) for s in ("train", "val", "test")}
        layout = ", compact" if self.compact else ""
        return f"HSStore({str(self.path)!r}, {len(self)} structures {splits}, species {self.basis.symbols}{layout})"


# ---------------------------------------------------------------------------------------
# conversion of SIESTA runs
# ---------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What :func:`convert` did."""

    store: Path
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_structures(self) -> int:
        return len(self.converted) + len(self.reused)


def _merge_basis(merged: BasisSet | None, new: BasisSet, source: str) -> BasisSet:
    """``merged`` extended by the species of ``new`` it lacks (same label must mean same basis)."""
    if merged is None:
        return new
    extra = []
    for sp in new:
        if sp.symbol in merged:
            known = merged[sp.symbol]
            other_tables = known.radials is not None and sp.radials is not None and not known.radials.matches(sp.radials)
            if BasisSet((known,)).hash != BasisSet((sp,)).hash or other_tables:
                raise BasisMismatchError(f"species {sp.symbol!r} has another basis than in earlier runs", path=source)
        else:
            extra.append(sp)
    return BasisSet(merged.species + tuple(extra)) if extra else merged


def _remap(data: HSData, basis: BasisSet) -> HSData:
    """The same structure with species indices into ``basis``."""
    lookup = np.array([basis.index(s) for s in data.basis.symbols], dtype=np.int64)
    return replace(data, basis=basis, species=lookup[data.species])


def _run_name(run: Path, used: set[str]) -> str:
    base = hs_label(run) if run.is_file() else run.name
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def convert(
    inputs: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    *,
    basis: BasisSet | str | os.PathLike | None = None,
    dtype: Any = np.float64,
    half: bool = False,
    compression: str | None = None,
    split_rule: SplitRule = SplitRule(),
    splits: dict[str, str] | None = None,
    progress: bool = True,
    on_skip: Callable[[str, HForgeError], None] | None = None,
    relative_to: str | os.PathLike | None = None,
    append: bool = False,
    overwrite: bool = False,
    overlap: OverlapFunction | None = None,
) -> ConversionReport:
    """Convert SIESTA runs (files or folders, searched recursively) into a store.

    Args:
        inputs: run folders, folders of run folders, or H/S files / fdfs.
        store: the store file to write (replaced atomically at the end).  An existing store is
            refused unless ``append`` or ``overwrite`` says what becomes of what it holds.
        basis: a BasisSet or folder of ion files for every run; default: each run's own.
        dtype: float64 (exact) or float32 (half the size).
        half: store only the canonical half of the pairs.
        compression: an h5py filter (``"gzip"``); compressed stores are not memory-mapped.
        split_rule, splits: the split of each structure (by size, or by name).
        progress: show a progress bar.
        on_skip: called with (run, error) for each run that is skipped.
        relative_to: record source paths relative to this folder (for stores that travel).
        append: keep the existing store's structures (names, splits) and add the runs it lacks
            (same dtype and ``half``; a run whose file it holds already is counted as reused).
        overwrite: replace the existing store by the converted runs (its structures whose source
            files are among them are reused rather than read again).
        overlap: write a compact store (module docstring; ``dtype``, ``half``, ``compression``
            are then the layout's): each run's S is checked against this function's, and a run
            whose S differs is skipped with an :class:`~hforge.errors.OverlapMismatchError`.

    Returns:
        A :class:`ConversionReport`; runs that failed are in ``skipped`` with the reason.

    Raises:
        InputError: the store exists and neither ``append`` nor ``overwrite`` is given, or both are.
        ConfigError: ``append`` to a store of another dtype or ``half``.
        FileFormatError: the output is a folder or a file that is not a store; no run converted.
    """
    import h5py
    from tqdm.auto import tqdm

    store = Path(store)
    if isinstance(basis, (str, os.PathLike)):
        basis = BasisSet.from_folder(basis)
    if append and overwrite:
        raise InputError("append adds to the store, overwrite replaces it: choose one", path=store)
    runs = find_runs(inputs)
    old = None
    if store.is_dir():
        raise FileFormatError("the output is a folder: give the store's file name, e.g. store.h5", path=store)
    if store.exists():
        try:
            old = HSStore(store, overlap=overlap)
        except FileFormatError as exc:
            raise FileFormatError(
                f"the output exists and is not a readable HForge store ({exc.message}); it is not replaced: "
                "delete or move it, or choose another output file",
                path=store,
            ) from exc
        if not (append or overwrite):
            old.close()
            raise InputError(
                f"the store exists and holds {len(old)} structures: add the runs to them with --append "
                "(append=True), replace them with --overwrite (overwrite=True), or choose another output file",
                path=store,
            )
        if append and (old.dtype != np.dtype(dtype) or old.half != half):
            kept = f"{old.dtype.name}{', half' if old.half else ''}"
            old.close()
            raise ConfigError(
                f"--append to a store of {kept}: convert with the same dtype and --half as it was written", path=store
            )
    parts = store.with_name(store.name + ".parts")
    created = not parts.exists()
    parts.mkdir(parents=True, exist_ok=True)
    if overlap is not None:
        dtype, half, compression = np.float64, True, None
    options = "compact" if overlap is not None else f"{np.dtype(dtype).name}-{'half' if half else 'full'}"
    same_options = old is not None and old.compact == (overlap is not None) and old.dtype == np.dtype(dtype) and old.half == half
    old_by_sha = {e["source_sha256"]: e["name"] for e in old.manifest} if same_options else {}

    report = ConversionReport(store)
    done: list[tuple[str, Path]] = []
    kept = list(range(len(old))) if append and old is not None else []  # structures of the old store carried over
    used: set[str] = {old.manifest[k]["name"] for k in kept}
    held = {old.manifest[k]["source_sha256"]: old.manifest[k]["name"] for k in kept}
    seen: set[Path] = set()
    merged: BasisSet | None = basis
    if kept:
        merged = _merge_basis(old.basis, basis, str(store)) if basis is not None else old.basis
    for run in tqdm(runs, desc="converting SIESTA runs", unit="run", disable=not progress):
        try:
            source = run_output(run)
            sha = file_sha256(source)
            if sha in held:  # appending a run the store holds already
                report.reused.append(held[sha])
                continue
            if source.resolve() in seen:  # the same file named twice
                continue
            seen.add(source.resolve())
            name = _run_name(run, used)  # another run with the same bytes is still its own run, under its name
            part = parts / f"{sha[:32]}-{options}.h5"
            if part.is_file() and (basis is None or _part_basis(part).hash == basis.hash):
                report.reused.append(name)
            elif sha in old_by_sha and (basis is None or old.basis.hash == basis.hash):
                _save_part(part, old.read(old_by_sha[sha]), dtype, half, source, sha, overlap)
                report.reused.append(name)
            else:
                _save_part(part, read_hs(source, basis=basis), dtype, half, source, sha, overlap)
                report.converted.append(name)
            part_basis = _part_basis(part)
            merged = _merge_basis(merged, part_basis, str(source))
            done.append((name, part))
        except HForgeError as exc:
            logger.info("skipped %s: %s", run, exc)
            report.skipped.append((str(run), str(exc)))
            if on_skip is not None:
                on_skip(str(run), exc)
    logger.info("%s: %d runs converted, %d reused, %d skipped", store, len(report.converted), len(report.reused),
                len(report.skipped))
    if not done:
        if old is not None:
            old.close()
        if created and not any(parts.iterdir()):
            parts.rmdir()
        if kept:  # appending runs the store holds already (or none that converts): it stays as it was
            return report
        raise FileFormatError(f"no structure converted from {len(runs)} runs; nothing written", path=store)
    splits = dict(splits or {})
    for k in kept:  # an appended store keeps the splits it had
        splits.setdefault(old.manifest[k]["name"], old.manifest[k]["split"])

    provenance: dict[str, dict[str, Any]] = {}

    def structures() -> Iterable[tuple[str, HSData, str]]:
        for k in kept:
            entry = old.manifest[k]
            yield entry["name"], _remap(old.read(k), merged), entry["source_sha256"]
        for name, part in tqdm(done, desc="writing store", unit="structure", disable=not progress):
            try:
                with h5py.File(part, "r") as h5:
                    data = _read_structure(h5["structure"], read_basis(h5), half, str(part), overlap)
                    source = Path(str(h5.attrs["source_path"]))
                    sha = str(h5.attrs["source_sha256"])
                    provenance[name] = json.loads(h5["structure"].attrs.get("provenance", "{}"))
            except (OSError, KeyError) as exc:
                raise FileFormatError(
                    f"cannot read this converted part (delete it to convert its run again): {exc}", path=part
                ) from exc
            data = _remap(data, merged)
            data.source = str(source.relative_to(relative_to) if relative_to is not None else source)
            yield name, data, sha

    try:
        write_store(
            store, structures(), basis=merged, dtype=dtype, half=half, compression=compression,
            split_rule=split_rule, splits=splits, overlap=overlap, provenance=provenance,
        )
    finally:
        if old is not None:
            old.close()
    shutil.rmtree(parts)
    return report


def run_provenance(source: str | os.PathLike) -> dict[str, Any]:
    """Where an H/S file came from, read from its run folder: ``fdf`` (the input's text), ``siesta``
    (the version line of the log) and ``record`` (the campaign's ``<label>.record.json``), each
    None when the folder lacks it."""
    source = Path(source)
    label = hs_label(source)
    fdf = source.parent / f"{label}.fdf"
    record = source.parent / f"{label}.record.json"
    log = find_log(source.parent, label)
    return {
        "fdf": fdf.read_text(errors="replace") if fdf.is_file() else None,
        "siesta": None if log is None else read_siesta_log(log_text(log)).version,
        "record": json.loads(record.read_text()) if record.is_file() else None,
    }


def _save_part(
    part: Path, data: HSData, dtype: Any, half: bool, source: Path, sha: str, overlap: OverlapFunction | None = None
) -> None:
    """One structure (read from the file ``source``) in its own file, atomically."""
    import h5py

    with atomic_write(part, None) as tmp, h5py.File(tmp, "w") as h5:
        group = h5.create_group("structure")
        _write_structure(group, data, np.dtype(dtype), half, None, overlap, run_provenance(source))
        write_basis(h5, data.basis)
        h5.attrs["source_path"] = str(source)
        h5.attrs["source_sha256"] = sha


def _part_basis(part: Path) -> BasisSet:
    import h5py

    with h5py.File(part, "r") as h5:
        return read_basis(h5)
