"""Datasets of SIESTA H/S for training: the store as a torch ``Dataset``, and bundled samples.

``load("abn-small")`` opens the aBN sample shipped with HForge (3.5 MiB, gzip-compressed float32,
canonical half of the pairs: two 8-atom and one 16-atom training cells and one 24-atom validation
cell, made by ``scripts/make_abn_small.py`` from ``../shared/abn`` with hforge's own converter);
``load(path)`` opens any store written by ``hforge data convert``; a compact store (S not stored)
gets its S from the basis (:func:`hforge.ops.two_centre.overlap_blocks`, exact), which is why this
package sits above :mod:`hforge.ops`.

SIESTA data of your own: :mod:`.siesta_runs` (inputs from a template run, running them),
:mod:`.campaign` (whole resumable campaigns: structures, a pool of SIESTA runs, :mod:`.siesta_pool`,
one record per run, :mod:`.run_records`, and a compact store).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from hforge.errors import ConfigError
from hforge.io import HSData, HSStore
from hforge.ops.two_centre import overlap_blocks

__all__ = ["HSDataset", "load", "open_store", "bundled_path", "shared_data_dir", "BUNDLED"]

_DATA = Path(__file__).resolve().parent / "data"

#: Bundled stores by name.
BUNDLED = {"abn-small": "abn-small.h5"}


def shared_data_dir(folder: str | os.PathLike | None = None) -> Path:
    """The project's shared SIESTA data (``abn/``, ``abn-extra/``, ``fixtures/``): ``folder`` when
    given, else ``$HFORGE_SHARED``, else ``shared`` beside the source checkout HForge runs from
    (``<repository>/../shared``), else ``../shared`` of the working directory.  The one rule of
    the CLI (``hforge demo``, ``hforge study``) and the tests."""
    if folder is not None:
        return Path(folder)
    if os.environ.get("HFORGE_SHARED"):
        return Path(os.environ["HFORGE_SHARED"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout.parent / "shared"
    return Path.cwd().parent / "shared"


def bundled_path(name: str) -> Path:
    """Path of a bundled store (see :data:`BUNDLED`)."""
    try:
        return _DATA / BUNDLED[name]
    except KeyError:
        raise ConfigError(f"no bundled dataset {name!r}; bundled: {sorted(BUNDLED)}") from None


def open_store(store: HSStore | str | os.PathLike) -> HSStore:
    """A store that reads every layout: a compact store's S is computed from its basis
    (:func:`~hforge.ops.two_centre.overlap_blocks`).  An open :class:`HSStore` without that
    function is opened again with it."""
    if isinstance(store, HSStore):
        return store if store.overlap is not None or not store.compact else HSStore(store.path, overlap=overlap_blocks)
    return HSStore(store, overlap=overlap_blocks)


class HSDataset(torch.utils.data.Dataset):
    """Structures of a store (optionally one split) as a torch ``Dataset`` of :class:`HSData`.

    Items are read lazily (memory-mapped); ``transform`` (e.g. a graph builder) is applied to
    each.  The store is reopened in each ``DataLoader`` worker.

    Args:
        store: an :class:`HSStore` or the path of one (any layout: :func:`open_store`).
        split: ``train``, ``val``, ``test`` or None for all structures.
        transform: called on every item.
    """

    def __init__(
        self, store: HSStore | str | os.PathLike, split: str | None = None, transform: Callable[[HSData], Any] | None = None
    ) -> None:
        self.store = open_store(store)
        if split is not None and split not in ("train", "val", "test"):
            raise ConfigError(f"split {split!r}: expected train, val or test")
        self.indices = list(range(len(self.store))) if split is None else self.store.split(split)
        self.split = split
        self.transform = transform

    @property
    def basis(self):
        return self.store.basis

    @property
    def statistics(self):
        return self.store.statistics

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        data = self.store.read(self.indices[index])
        return self.transform(data) if self.transform is not None else data

    def __repr__(self) -> str:
        return f"HSDataset({self.store.path.name!r}, split={self.split!r}, {len(self)} structures)"


def load(name: str | os.PathLike, split: str | None = None, transform: Callable[[HSData], Any] | None = None) -> HSDataset:
    """A bundled dataset by name (``"abn-small"``) or a store by path."""
    path = bundled_path(name) if isinstance(name, str) and name in BUNDLED else Path(name)
    return HSDataset(path, split=split, transform=transform)
