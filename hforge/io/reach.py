"""Which atom pairs a basis couples, against the pairs a SIESTA file stores: the basis-reach
check (:func:`check_basis_reach`) and Γ-only files, whose pairs are folded into the unit cell
(:func:`mark_folded`, :func:`unfold`).

SIESTA stores an S block for every atom pair ``(i, j, n)`` with ``|r_ij| < r_i + r_j`` (the
largest orbital radii of the two species) and H blocks up to ``r_i + r_j + 2 r_KB`` further
(through a third atom's Kleinman-Bylander projector, ``BasisSet.pair_cutoffs(include_kb=True)``).
A Γ-only run writes ``nsc = 1 1 1``: every pair is stored under unit-cell indices ``(i, j, 0)``,
its block the sum of the blocks of all images ``n`` within reach.  When one image alone is within
the H reach of each stored pair, the sum is that image's block and the file unfolds exactly into
the periodic pairs (by minimum image, the only image there); when two or more are, the images
cannot be told apart and the file holds H(Γ) and S(Γ) only (:class:`~hforge.errors.FoldedMatrixError`
where unfolding is asked for; :attr:`HSData.folded` where it is kept as stored).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hforge.errors import BasisMismatchError, FoldedMatrixError
from hforge.io.hsdata import HSData

__all__ = ["REACH_TOLERANCE", "Images", "check_basis_reach", "images_within", "mark_folded", "unfold"]

#: Distances (Å) within this of a pair's reach ``r_i + r_j`` are not judged by :func:`check_basis_reach`
#: (the ion file formats round the same radius differently, by ~1e-12 Å); images within this beyond
#: the H reach count as coupling in :func:`unfold` (the safe side).
REACH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Images:
    """Every atom pair ``(i, j, n)`` of a structure closer than a per-species-pair cut-off, onsite
    pairs ``(i, i, 0)`` included, every periodic image its own pair (not limited by ``nsc``).

    Attributes:
        i, j: ``(P,)`` int64 atoms.
        shift: ``(P, 3)`` int64 lattice translation ``n`` of atom ``j``.
        distance: ``(P,)`` float64 ``|r_ij|`` in Å.
        reach: ``(P,)`` float64 the pair's cut-off in Å.
    """

    i: np.ndarray
    j: np.ndarray
    shift: np.ndarray
    distance: np.ndarray
    reach: np.ndarray

    def atom_pair_keys(self, n_atoms: int) -> np.ndarray:
        """``(P,)`` int64 ``i * n_atoms + j``: one key per atom pair, whatever the image."""
        return self.i * n_atoms + self.j


def images_within(data: HSData, cutoff: np.ndarray, tolerance: float = 0.0) -> Images | None:
    """The pairs of ``data``'s structure with ``|r_ij| < cutoff[s_i, s_j] + tolerance``.

    Args:
        data: the structure (positions, cell, pbc, species).
        cutoff: ``(n_species, n_species)`` Å, e.g. ``data.basis.pair_cutoffs()``.
        tolerance: Å added to every cut-off (negative: taken off).

    Returns:
        The :class:`Images`, or None for a cell the neighbour search refuses (degenerate;
        :meth:`HSData.validate` names it).
    """
    from vesin import NeighborList

    largest = float(cutoff.max()) + tolerance
    try:
        search = NeighborList(cutoff=largest, full_list=True)
        i, j, shift, distance = search.compute(data.positions, data.cell, data.pbc, "ijSd")
    except (RuntimeError, ValueError):
        return None
    onsite = np.arange(data.n_atoms, dtype=np.int64)
    i = np.concatenate([onsite, i.astype(np.int64)])
    j = np.concatenate([onsite, j.astype(np.int64)])
    shift = np.concatenate([np.zeros((data.n_atoms, 3), np.int64), shift.astype(np.int64)])
    distance = np.concatenate([np.zeros(data.n_atoms), distance])
    reach = cutoff[data.species[i], data.species[j]]
    keep = distance < reach + tolerance
    return Images(i[keep], j[keep], shift[keep], distance[keep], reach[keep])


def _atom_pair_names(data: HSData, i: np.ndarray, j: np.ndarray) -> str:
    """``"B-N (12), B-B (3)"``: the species pairs of the atom pairs ``(i, j)`` and how many of each."""
    symbols = data.basis.symbols
    names = ["-".join(sorted((symbols[a], symbols[b]))) for a, b in zip(data.species[i], data.species[j])]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({count})" for name, count in sorted(counts.items(), key=lambda item: -item[1]))


def _h_reach(data: HSData) -> np.ndarray:
    """``(n_species, n_species)`` Å: the reach of H's blocks, ``r_i + r_j + 2 max r_KB`` (``r_i + r_j``
    for a basis without Kleinman-Bylander radii)."""
    with_kb = all(sp.kb_cutoff is not None for sp in data.basis)
    return data.basis.pair_cutoffs(include_kb=with_kb)


def _has_radii(data: HSData) -> bool:
    return all(sp.cutoff is not None for sp in data.basis)


def mark_folded(data: HSData) -> HSData:
    """``data`` marked :attr:`~HSData.folded` when it is a Γ-only file's matrices folded into the
    unit cell: ``nsc = 1 1 1`` in a periodic cell where some atom pair couples through a periodic
    image (within H's reach); ``data`` itself otherwise (a molecule in a box, a basis without radii)."""
    if data.folded or not (data.nsc == 1).all() or not data.pbc.any() or not _has_radii(data):
        return data
    images = images_within(data, _h_reach(data))
    if images is None or not images.shift.any():
        return data
    return replace(data, folded=True, gamma_only=True)


def unfold(data: HSData) -> HSData:
    """The periodic pairs of folded matrices (:func:`mark_folded`): every stored pair ``(i, j, 0)``
    moved to the one image ``(i, j, n)`` within H's reach (the minimum image), blocks unchanged,
    ``nsc`` their reach; :attr:`~HSData.gamma_only` stays set, so that :func:`~hforge.io.write_hs`
    folds them back and the file comes out as it came.  Data that is not folded is returned as is.

    Raises:
        FoldedMatrixError: a stored pair couples through two or more images (named, with their
            distances and the number of such pairs).
        BasisMismatchError: a basis without Kleinman-Bylander radii (H's reach unknown), or a
            stored pair without any image within reach (radii smaller than the run's).
    """
    if not data.folded:
        return data
    if any(sp.kb_cutoff is None for sp in data.basis):
        raise BasisMismatchError(
            "a Γ-only file (nsc 1 1 1) is unfolded by the reach of H, which needs the Kleinman-Bylander radii of "
            "the .ion files: give the basis as a folder of ion files",
            path=data.source,
        )
    images = images_within(data, _h_reach(data), REACH_TOLERANCE)
    if images is None:
        raise BasisMismatchError("the cell is degenerate: its pairs cannot be unfolded", path=data.source)
    keys = images.atom_pair_keys(data.n_atoms)
    stored = data.edge_index[0] * data.n_atoms + data.edge_index[1]
    counts = np.bincount(keys, minlength=data.n_atoms**2)[stored]
    if (counts == 0).any():
        e = int(np.flatnonzero(counts == 0)[0])
        raise BasisMismatchError(
            f"stores atoms {int(data.edge_index[0, e])} and {int(data.edge_index[1, e])} as a pair, but no image of them "
            "is within the basis' reach: this is not the basis the run used (other cut-off radii)",
            path=data.source,
        )
    ambiguous = np.flatnonzero(counts > 1)
    if len(ambiguous):
        raise _ambiguity(data, images, keys, stored, ambiguous)
    order = np.argsort(keys, kind="stable")
    found = order[np.searchsorted(keys[order], stored)]
    shift = images.shift[found]
    nsc = 2 * np.abs(shift).max(axis=0, initial=0) + 1
    return replace(data, cell_shift=shift, nsc=nsc, folded=False, gamma_only=True)


def _ambiguity(
    data: HSData, images: Images, keys: np.ndarray, stored: np.ndarray, ambiguous: np.ndarray
) -> FoldedMatrixError:
    """The error naming the first ambiguous pair of the file: its images within reach, their distances."""
    e = int(ambiguous[0])
    a, b = (int(x) for x in data.edge_index[:, e])
    mine = np.flatnonzero(keys == stored[e])
    mine = mine[np.argsort(images.distance[mine], kind="stable")]
    shown = ", ".join(f"{tuple(images.shift[k].tolist())} at {images.distance[k]:.3f} Å" for k in mine[:4])
    more = f" and {len(mine) - 4} more" if len(mine) > 4 else ""
    sa, sb = data.basis.symbols[data.species[a]], data.basis.symbols[data.species[b]]
    who = f"atom {a} ({sa}) couples with itself" if a == b else f"atom {a} ({sa}) and atom {b} ({sb}) couple"
    return FoldedMatrixError(
        f"a Γ-only file (nsc 1 1 1) stores every atom pair's images summed into one block, and {who} "
        f"through {len(mine)} images within H's reach of {images.reach[mine[0]]:.4f} Å "
        f"(cells {shown}{more}); {len(ambiguous)} of the file's {data.n_pairs} atom pairs in all (species pairs "
        f"{_atom_pair_names(data, data.edge_index[0, ambiguous], data.edge_index[1, ambiguous])}): their images "
        "cannot be told apart, so the file holds H and S at Γ only (read it with unfold=False to keep it folded)",
        path=data.source,
    )


def check_basis_reach(data: HSData) -> None:
    """Check the basis' orbital radii against the S the file stores.

    SIESTA stores an S block for every atom pair closer than the sum of the largest orbital radii
    of their species, ``|r_ij| < r_i + r_j``, and S vanishes beyond (exactly the pairs of
    :func:`hforge.graph.orbital_pair_list` with the ion files' radii).  A basis with the same shells
    but other radii (e.g. another ``PAO.EnergyShift``) shows as a nonzero S block beyond its
    ``r_i + r_j`` (radii too small) or as a pair inside it without any nonzero S entry (radii too
    large); pairs within :data:`REACH_TOLERANCE` of the reach are not judged.  Folded matrices
    (:attr:`HSData.folded`) are judged per atom pair: a stored block ``(i, j, 0)`` needs some image
    of ``j`` within reach, and every atom pair with an image within reach needs a nonzero block.
    Nothing is checked for a basis without radii (a bare HSX's shells), nor for a geometry that is
    not finite (:meth:`HSData.validate` reports that).

    Raises:
        BasisMismatchError: naming the file, the species pairs at fault, the worst pair and the radii.
    """
    finite = np.isfinite(data.positions).all() and np.isfinite(data.cell).all()
    if data.n_pairs == 0 or not _has_radii(data) or not finite:
        return
    radius = np.asarray([sp.cutoff for sp in data.basis], dtype=np.float64)
    given = ", ".join(f"{sp.symbol} {r:.4f}" for sp, r in zip(data.basis, radius))
    cutoff = data.basis.pair_cutoffs()
    i, j = data.edge_index
    nonzero = np.add.reduceat(((data.s != 0) & data.mask).astype(np.int64), data.block_ptr[:-1]) > 0
    outer = images_within(data, cutoff, REACH_TOLERANCE)  # every image that may carry S
    inner = images_within(data, cutoff, -REACH_TOLERANCE)  # every image that must
    if outer is None or inner is None:  # a degenerate cell: HSData.validate names it
        return
    if data.folded:
        # a stored block needs an image within reach; its distance is the nearest image's
        outer_keys, key = outer.atom_pair_keys(data.n_atoms), i * data.n_atoms + j
        nearest = np.full(data.n_atoms**2, np.inf)
        np.minimum.at(nearest, outer_keys, outer.distance)
        distance = np.where(np.isin(key, outer_keys), nearest[key], np.inf)
        inner = replace(inner, shift=np.zeros_like(inner.shift))  # judged per atom pair
    else:
        distance = data.pair_distances()
    reach = cutoff[data.species[i], data.species[j]]
    beyond = np.flatnonzero(nonzero & (distance > reach + REACH_TOLERANCE))
    if len(beyond):
        worst = beyond[np.argmax(np.minimum(distance[beyond], 1e300) - reach[beyond])]
        a, b = data.basis.symbols[data.species[i[worst]]], data.basis.symbols[data.species[j[worst]]]
        limit = f"r_{a} + r_{b} = {reach[worst]:.4f} Å"
        where = f"(folded from its periodic images, none of them within {limit})" if data.folded else (
            f"in cell {tuple(data.cell_shift[worst].tolist())}, {distance[worst]:.4f} Å apart, beyond {limit}"
        )
        raise BasisMismatchError(
            f"the basis' orbital radii ({given} Å) are smaller than the ones of the file's S: it couples atom "
            f"{i[worst]} ({a}) and atom {j[worst]} ({b}) {where}, and {len(beyond)} atom pairs in all beyond their "
            "reach (species pairs "
            f"{_atom_pair_names(data, i[beyond], j[beyond])}): this is not the basis the run used (other cut-off radii, "
            "e.g. another PAO.EnergyShift)",
            path=data.source,
        )
    half = data.nsc // 2
    within_nsc = data.folded | (np.abs(inner.shift) <= half).all(axis=1)
    ni, nj, shift, nd, reach_n = (x[within_nsc] for x in (inner.i, inner.j, inner.shift, inner.distance, inner.reach))
    span = 2 * np.abs(np.concatenate([shift, data.cell_shift])).max(axis=0, initial=0) + 1

    def keys(a: np.ndarray, b: np.ndarray, n: np.ndarray) -> np.ndarray:
        key = a * data.n_atoms + b
        for axis in range(3):
            key = key * span[axis] + n[:, axis] + span[axis] // 2
        return key

    missing = np.flatnonzero(~np.isin(keys(ni, nj, shift), keys(i[nonzero], j[nonzero], data.cell_shift[nonzero])))
    if len(missing):
        worst = missing[np.argmax(reach_n[missing] - nd[missing])]
        a, b = data.basis.symbols[data.species[ni[worst]]], data.basis.symbols[data.species[nj[worst]]]
        raise BasisMismatchError(
            f"the basis' orbital radii ({given} Å) are larger than the ones of the file's S: atom {ni[worst]} ({a}) "
            f"and atom {nj[worst]} ({b}) in cell {tuple(shift[worst].tolist())}, {nd[worst]:.4f} Å apart, "
            f"within r_{a} + r_{b} = {reach_n[worst]:.4f} Å, have no "
            f"nonzero S entry in the file, nor {len(missing) - 1} more atom pairs within their reach (species pairs "
            f"{_atom_pair_names(data, ni[missing], nj[missing])}): this is not the basis the run used (other cut-off "
            "radii, e.g. another PAO.EnergyShift)",
            path=data.source,
        )
