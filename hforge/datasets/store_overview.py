"""``hforge data stats``: numbers and figures of a store.

Figures (PNG, matplotlib, Agg):

* ``onsite_energies.png``: distribution of the onsite energies (diagonal of the onsite blocks of
  the unshifted H, eV) of every orbital of every species;
* ``decay_with_distance.png``: largest |H_ij| (eV) and |S_ij| of each pair block against the
  pair distance, per species pair, with the pair cutoff r_i + r_j (and, for H, the reach
  r_i + r_j + 2 r_KB through a third atom's Kleinman-Bylander projector);
* ``h_heatmap.png``: H(Γ) (unshifted, eV) of one structure, atoms' orbital blocks outlined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hforge.files import atomic_write, write_json
from hforge.io import HSData, HSStore

__all__ = ["store_summary", "plot_store", "collect_pairs", "collect_onsite"]


def collect_onsite(store: HSStore) -> dict[int, np.ndarray]:
    """``{species: (n_atoms_total, n_orbitals)}`` onsite energies (eV) of all atoms of the store."""
    out: dict[int, list[np.ndarray]] = {k: [] for k in range(len(store.basis))}
    for data in store:
        for e in np.flatnonzero(data.onsite):
            species = int(data.species[data.edge_index[0, e]])
            out[species].append(np.diag(data.block(e, "h_unshifted")).astype(np.float64))
    return {k: np.array(v).reshape(-1, store.basis[k].n_orbitals) for k, v in out.items()}


def collect_pairs(store: HSStore, max_points: int = 200_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per off-site pair of every structure: species of both atoms, distance (Å), max |H| (eV, unshifted)
    and max |S| over the block (subsampled to ``max_points``)."""
    columns: dict[str, list[np.ndarray]] = {"si": [], "sj": [], "distance": [], "h": [], "s": []}
    for data in store:
        keep = ~data.onsite
        pair = data.value_pair
        h_abs = np.abs(data.h_unshifted).max(axis=0).astype(np.float64)
        h_max = np.zeros(data.n_pairs)
        s_max = np.zeros(data.n_pairs)
        np.maximum.at(h_max, pair, np.where(data.mask, h_abs, 0.0))
        np.maximum.at(s_max, pair, np.where(data.mask, np.abs(data.s.astype(np.float64)), 0.0))
        si, sj = data.species[data.edge_index]
        for name, values in (("si", si), ("sj", sj), ("distance", data.pair_distances()), ("h", h_max), ("s", s_max)):
            columns[name].append(values[keep])
    out = {k: np.concatenate(v) for k, v in columns.items()}
    n = len(out["distance"])
    if n > max_points:
        pick = np.random.default_rng(seed).choice(n, max_points, replace=False)
        out = {k: v[pick] for k, v in out.items()}
    return out


def store_summary(store: HSStore) -> dict[str, Any]:
    """Numbers printed by ``hforge data stats`` (JSON-serialisable)."""
    manifest = store.manifest
    splits = {}
    for split in ("train", "val", "test"):
        entries = [e for e in manifest if e["split"] == split]
        if entries:
            splits[split] = {
                "structures": len(entries),
                "atoms": sorted({e["n_atoms"] for e in entries}),
                "nnz": int(sum(e["nnz"] for e in entries)),
            }
    return {
        "store": str(store.path),
        "structures": len(store),
        "species": store.basis.symbols,
        "irreps": dict(zip(store.basis.symbols, store.basis.irreps)),
        "basis_hash": store.basis.hash,
        "dtype": store.dtype.name,
        "half": store.half,
        "splits": splits,
        "statistics": store.statistics.to_dict(),
    }


def _heatmap(ax: Any, fig: Any, data: HSData) -> None:
    h = data.matrix_at_k(which="h_unshifted")
    limit = float(np.abs(h).max())
    image = ax.imshow(h, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    for boundary in data.orbital_offsets[1:-1]:
        ax.axhline(boundary - 0.5, color="0.5", lw=0.3)
        ax.axvline(boundary - 0.5, color="0.5", lw=0.3)
    fig.colorbar(image, ax=ax, label="H(Γ) (eV)")
    formula = "".join(f"{s}{n}" for s, n in zip(*np.unique([data.basis.symbols[k] for k in data.species], return_counts=True)))
    ax.set_title(f"H at Γ of {Path(data.source or '').stem or 'structure'} ({formula}, {data.n_orbitals} orbitals)")
    ax.set_xlabel("orbital")
    ax.set_ylabel("orbital")


def plot_store(store: HSStore, out_dir: str | os.PathLike, structure: str | int | None = None, dpi: int = 110) -> list[Path]:
    """Write the figures (and ``stats.json``) of a store into ``out_dir``; returns their paths.

    Args:
        structure: the structure of the heatmap (name or index); default the smallest.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    basis = store.basis
    written = []

    onsite = collect_onsite(store)
    fig, axes = plt.subplots(len(basis), 1, figsize=(9, 2.8 * len(basis)), squeeze=False)
    for k, ax in enumerate(axes[:, 0]):
        values = onsite[k]
        if len(values):
            ax.violinplot(values, showmedians=True)
        ax.set_xticks(np.arange(1, basis[k].n_orbitals + 1), basis[k].orbital_names(), rotation=45, fontsize=7)
        ax.set_ylabel("onsite energy (eV)")
        ax.set_title(f"{basis[k].symbol}: {len(values)} atoms", fontsize=9)
    fig.suptitle("Onsite energies per orbital (unshifted H)")
    fig.tight_layout()
    written.append(_save(fig, out / "onsite_energies.png", dpi))

    pairs = collect_pairs(store)
    combos = [(i, j) for i in range(len(basis)) for j in range(i, len(basis))]
    cutoffs = basis.pair_cutoffs()
    kb_cutoffs = basis.pair_cutoffs(include_kb=True) if all(sp.kb_cutoff for sp in basis) else None
    fig, axes = plt.subplots(2, len(combos), figsize=(3.6 * len(combos), 5.6), squeeze=False, sharex=True)
    for c, (i, j) in enumerate(combos):
        sel = ((pairs["si"] == i) & (pairs["sj"] == j)) | ((pairs["si"] == j) & (pairs["sj"] == i))
        for row, (key, label) in enumerate((("h", "max |H_ij| (eV)"), ("s", "max |S_ij|"))):
            ax = axes[row, c]
            ax.scatter(pairs["distance"][sel], np.maximum(pairs[key][sel], 1e-12), s=2, alpha=0.3, lw=0)
            ax.axvline(cutoffs[i, j], color="k", ls="--", lw=0.8, label="r_i + r_j")
            if key == "h" and kb_cutoffs is not None:
                ax.axvline(kb_cutoffs[i, j], color="k", ls=":", lw=0.8, label="r_i + r_j + 2 r_KB")
            ax.set_yscale("log")
            ax.set_ylim(1e-8, None)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"{basis[i].symbol}-{basis[j].symbol} ({int(sel.sum())} pairs)", fontsize=9)
            else:
                ax.set_xlabel("pair distance (Å)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Decay of H and S with pair distance")
    fig.tight_layout()
    written.append(_save(fig, out / "decay_with_distance.png", dpi))

    if structure is None:
        structure = int(np.argmin([e["n_orbitals"] for e in store.manifest]))
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    _heatmap(ax, fig, store.read(structure))
    fig.tight_layout()
    written.append(_save(fig, out / "h_heatmap.png", dpi))
    written.append(write_json(out / "stats.json", store_summary(store)))
    return written


def _save(fig: Any, path: Path, dpi: int) -> Path:
    """Write a pyplot figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_write(path, None) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path
