"""Errors of predicted H and S blocks against SIESTA, in physical units.

Predictions and references are flat-packed blocks on one pair list (docs/design.md): SIESTA
orbital order, row-major blocks at ``values[block_ptr[e]:block_ptr[e + 1]]``.  The reference of a
prediction is the *unshifted* H of the SIESTA file (``HSData.h_unshifted``, eV) and its S,
gathered onto the predicted pairs by :func:`align_reference`: the predicted pairs may be any
subset of the file's pairs (the canonical half, say); a pair the file lacks, and every entry
outside the file's sparsity pattern, has reference 0.  Every entry of the predicted blocks counts.

Metrics (:func:`block_metrics`, :func:`compare_blocks`): mean absolute errors of H in meV over all
entries, the onsite blocks ``(i, i, 0)``, the hopping blocks (all others, an atom and its own
periodic image included), per species pair and per block type (onsite or not x species pair x
shell pair: the bins of :class:`~hforge.io.StoreStatistics`); the same after removing the best
uniform shift ``c S`` (the energy zero of a SIESTA H is arbitrary up to ``c S``):
``c = <H_pred - H_ref, S_ref> / <S_ref, S_ref>`` over all entries (least squares, eV), so that
``H_pred + a S_ref`` has the same shifted errors for every ``a``; and the MAE of S.

Per atom (:func:`onsite_energy_errors`): the mean error of the atom's onsite energies (the
diagonal of its onsite block) after the same ``c S`` removal, a potential error ``V_i`` of the
atom; its RMSE and MAE over the atoms of held-out cells against training cells tell memorisation
of each cell's potentials from transfer.

The training losses built on these layouts are in :mod:`hforge.train.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, InputError
from hforge.io import HSData, block_type_shape, value_block_types

__all__ = [
    "MEV_PER_EV",
    "AlignedReference",
    "BlockTypes",
    "TypeErrors",
    "BlockMetrics",
    "OnsiteEnergyErrors",
    "align_reference",
    "best_shift",
    "block_metrics",
    "check_same_structure",
    "compare_blocks",
    "onsite_energy_errors",
]

MEV_PER_EV = 1000.0


def _numpy(x: Any) -> np.ndarray:
    """A float64 numpy view/copy of an array or tensor (detached)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# reference on the predicted pairs
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AlignedReference:
    """A SIESTA reference gathered onto a predicted pair list.

    Attributes:
        h: ``(n_values,)`` float64 unshifted H (eV) on the predicted layout.
        s: ``(n_values,)`` float64 S.
        mask: ``(n_values,)`` bool, True inside the file's sparsity pattern.
        found: ``(E,)`` bool, True for the predicted pairs that the file has.
        block_ptr: ``(E + 1,)`` int64 offsets of the predicted layout.
    """

    h: np.ndarray
    s: np.ndarray
    mask: np.ndarray
    found: np.ndarray
    block_ptr: np.ndarray


def align_reference(
    reference: HSData,
    edge_index: Any,
    cell_shift: Any,
    block_ptr: Any | None = None,
    *,
    spin: int = 0,
) -> AlignedReference:
    """The reference's unshifted H and S on the pairs ``(edge_index, cell_shift)``.

    Pairs are matched by their ``(i, j, n)`` key, whatever their order; the block of a pair
    absent from the file, and the entries outside the file's mask, are 0.

    Args:
        reference: the SIESTA structure.
        edge_index: ``(2, E)`` int pairs of the prediction (atoms of ``reference``).
        cell_shift: ``(E, 3)`` int lattice translations.
        block_ptr: ``(E + 1,)`` offsets of the predicted blocks, checked against the reference's
            orbital counts; default: built from them.
        spin: spin channel of H.

    Raises:
        BasisMismatchError: atoms out of range, or blocks whose sizes differ from the reference's.
    """
    edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= reference.n_atoms):
        raise BasisMismatchError(f"predicted pairs name atoms outside 0..{reference.n_atoms - 1}", path=reference.source)
    sizes = reference.atom_orbitals[edge_index[0]] * reference.atom_orbitals[edge_index[1]]
    expected = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if block_ptr is not None and not np.array_equal(np.asarray(block_ptr, dtype=np.int64), expected):
        raise BasisMismatchError("predicted block sizes differ from the reference's orbital counts", path=reference.source)
    pairs = reference.find_pairs(edge_index[0], edge_index[1], cell_shift)
    found = pairs >= 0
    local = np.arange(int(expected[-1])) - np.repeat(expected[:-1], sizes)
    source = np.repeat(np.where(found, reference.block_ptr[np.maximum(pairs, 0)], -1), sizes)
    present = source >= 0
    flat = np.where(present, source + local, 0)
    h = np.where(present, reference.h_unshifted[spin][flat], 0.0)
    s = np.where(present, reference.s[flat], 0.0)
    mask = present & reference.mask[flat]
    return AlignedReference(h=h.astype(np.float64), s=s.astype(np.float64), mask=mask, found=found, block_ptr=expected)


# ---------------------------------------------------------------------------------------
# block types
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BlockTypes:
    """The block type of every flat value of a pair list (the bins of ``StoreStatistics``).

    Attributes:
        basis: the basis whose species and shells define the types.
        index: ``(n_values,)`` int64 flat index into arrays of shape :attr:`shape`.
    """

    basis: BasisSet
    index: np.ndarray

    @classmethod
    def of(cls, basis: BasisSet, species: Any, edge_index: Any, cell_shift: Any, block_ptr: Any) -> "BlockTypes":
        """Types of the values of the pairs ``(edge_index, cell_shift)`` with offsets ``block_ptr``."""
        arrays = (np.asarray(a) for a in (species, edge_index, cell_shift, block_ptr))
        return cls(basis, value_block_types(basis, *arrays))

    @classmethod
    def from_hsdata(cls, data: HSData) -> "BlockTypes":
        """Types of the values of ``data``'s pairs."""
        return cls.of(data.basis, data.species, data.edge_index, data.cell_shift, data.block_ptr)

    @cached_property
    def shape(self) -> tuple[int, ...]:
        """``(2, n_species, n_species, max_shells, max_shells)``: onsite, species i, j, shells a, b."""
        return block_type_shape(self.basis)

    @property
    def n_types(self) -> int:
        return int(np.prod(self.shape))

    @cached_property
    def onsite(self) -> np.ndarray:
        """``(n_values,)`` bool: the value belongs to an onsite block ``(i, i, 0)``."""
        return self.index >= self.n_types // 2


@dataclass
class TypeErrors:
    """Sums of absolute errors and counts per block type: every grouping derives from them.

    Attributes:
        basis: the basis of the types.
        abs_sum: ``(n_types,)`` float64 sum of |error| per block type (eV for H).
        count: ``(n_types,)`` int64 entries per block type.
        max_abs: largest |error|.
    """

    basis: BasisSet
    abs_sum: np.ndarray
    count: np.ndarray
    max_abs: float

    @classmethod
    def of(cls, errors: np.ndarray, types: BlockTypes) -> "TypeErrors":
        """From the errors of every value and their types."""
        errors = np.abs(errors)
        return cls(
            types.basis,
            np.bincount(types.index, weights=errors, minlength=types.n_types),
            np.bincount(types.index, minlength=types.n_types).astype(np.int64),
            float(errors.max(initial=0.0)),
        )

    def __add__(self, other: "TypeErrors") -> "TypeErrors":
        if self.basis.hash != other.basis.hash:
            raise BasisMismatchError("cannot pool errors over different bases")
        return TypeErrors(self.basis, self.abs_sum + other.abs_sum, self.count + other.count, max(self.max_abs, other.max_abs))

    def _mae(self, select: np.ndarray) -> float:
        n = int(self.count[select].sum())
        return float(self.abs_sum[select].sum() / n) if n else float("nan")

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        """MAEs (times ``scale``) as a JSON-ready dict: ``all``, ``onsite``, ``hopping``, ``max``,
        ``count``, ``species`` (unordered species pairs, e.g. ``B-N``) and ``block_types``
        (``"onsite B-N": {"2sZ1-2pZ2": ...}``, directed, as in ``StoreStatistics.to_dict``)."""
        shape = block_type_shape(self.basis)
        kind, si, sj, _, _ = np.unravel_index(np.arange(self.abs_sum.size), shape)
        symbols = self.basis.symbols
        out: dict[str, Any] = {
            "all": scale * self._mae(np.ones(kind.shape, bool)),
            "onsite": scale * self._mae(kind == 1),
            "hopping": scale * self._mae(kind == 0),
            "max": scale * self.max_abs,
            "count": int(self.count.sum()),
        }
        lo, hi = np.minimum(si, sj), np.maximum(si, sj)
        out["species"] = {
            f"{symbols[a]}-{symbols[b]}": scale * self._mae((lo == a) & (hi == b))
            for a in range(len(symbols))
            for b in range(a, len(symbols))
            if self.count[(lo == a) & (hi == b)].sum()
        }
        blocks: dict[str, dict[str, float]] = {}
        for t in np.flatnonzero(self.count):
            k, a, b, x, y = np.unravel_index(t, shape)
            label = f"{'onsite' if k else 'hopping'} {symbols[a]}-{symbols[b]}"
            shells = f"{self.basis[a].shells[x].name}-{self.basis[b].shells[y].name}"
            blocks.setdefault(label, {})[shells] = scale * float(self.abs_sum[t] / self.count[t])
        out["block_types"] = blocks
        return out


@dataclass
class BlockMetrics:
    """Errors of predicted H (and S) blocks against a reference, pooled over structures.

    Attributes:
        h: errors of the unshifted H (eV sums).
        h_shifted: errors after removing each structure's best shift ``c S_ref`` (None without S_ref).
        shifts_eV: the best shift ``c`` (eV) of every structure.
        s: errors of S (None when S was not predicted).
        n_structures: structures pooled.
    """

    h: TypeErrors
    h_shifted: TypeErrors | None = None
    shifts_eV: list[float] = field(default_factory=list)
    s: TypeErrors | None = None
    n_structures: int = 1

    @staticmethod
    def combine(metrics: Sequence["BlockMetrics"]) -> "BlockMetrics":
        """Pool several structures: MAEs weighted by their entry counts."""
        if not metrics:
            raise InputError("no metrics to combine")

        def pooled(name: str) -> TypeErrors | None:
            parts = [getattr(m, name) for m in metrics]
            if any(p is None for p in parts):
                return None
            total = parts[0]
            for p in parts[1:]:
                total = total + p
            return total

        return BlockMetrics(
            h=pooled("h"),
            h_shifted=pooled("h_shifted"),
            shifts_eV=[c for m in metrics for c in m.shifts_eV],
            s=pooled("s"),
            n_structures=sum(m.n_structures for m in metrics),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``h_mae_meV``, ``h_mae_shifted_meV``, ``shift_eV`` (mean over structures),
        ``s_mae`` (each a :meth:`TypeErrors.summary`), ``n_structures``."""
        return {
            "n_structures": self.n_structures,
            "h_mae_meV": self.h.summary(MEV_PER_EV),
            "h_mae_shifted_meV": None if self.h_shifted is None else self.h_shifted.summary(MEV_PER_EV),
            "shift_eV": float(np.mean(self.shifts_eV)) if self.shifts_eV else None,
            "s_mae": None if self.s is None else self.s.summary(),
        }


def best_shift(delta: Any, s: Any) -> float:
    """Least-squares ``c`` (eV) of ``delta ≈ c s`` over all entries: ``<delta, s> / <s, s>``."""
    delta, s = _numpy(delta), _numpy(s)
    norm = float(s @ s)
    return float(delta @ s / norm) if norm > 0 else 0.0


def block_metrics(
    h_pred: Any,
    h_ref: Any,
    types: BlockTypes,
    *,
    s_ref: Any | None = None,
    s_pred: Any | None = None,
) -> BlockMetrics:
    """Errors of one structure's predicted blocks (all on one layout; arrays or tensors).

    Args:
        h_pred: ``(n_values,)`` predicted unshifted H, eV.
        h_ref: ``(n_values,)`` reference unshifted H, eV (e.g. :attr:`AlignedReference.h`).
        types: block type of every value.
        s_ref: ``(n_values,)`` reference S: enables the shift-removed errors.
        s_pred: ``(n_values,)`` predicted S: enables the S errors (needs ``s_ref``).
    """
    h_pred, h_ref = _numpy(h_pred), _numpy(h_ref)
    if h_pred.shape != h_ref.shape or h_pred.shape != types.index.shape:
        raise InputError(f"prediction {h_pred.shape}, reference {h_ref.shape} and types {types.index.shape} differ in size")
    delta = h_pred - h_ref
    metrics = BlockMetrics(h=TypeErrors.of(delta, types))
    if s_ref is not None:
        s_ref = _numpy(s_ref)
        c = best_shift(delta, s_ref)
        metrics.h_shifted = TypeErrors.of(delta - c * s_ref, types)
        metrics.shifts_eV = [c]
        if s_pred is not None:
            metrics.s = TypeErrors.of(_numpy(s_pred) - s_ref, types)
    return metrics


def check_same_structure(prediction: HSData, reference: HSData) -> None:
    """Raise :class:`BasisMismatchError` unless both use one basis and the same species per atom."""
    if prediction.basis.hash != reference.basis.hash:
        raise BasisMismatchError(
            f"prediction basis {prediction.basis.symbols} differs from the reference's {reference.basis.symbols}",
            path=reference.source,
        )
    if not np.array_equal(prediction.species, reference.species):
        raise BasisMismatchError("prediction and reference have different species per atom", path=reference.source)


def compare_blocks(prediction: HSData, reference: HSData, *, spin: int = 0, compare_s: bool = True) -> BlockMetrics:
    """Block errors of a predicted structure (its pairs, ``h_unshifted`` and ``s``) against SIESTA.

    Args:
        prediction: the prediction on any subset of pairs (E_F = 0: ``h`` is the unshifted H).
        reference: the SIESTA structure (same atoms and basis).
        spin: spin channel of both.
        compare_s: include the S errors.

    Raises:
        BasisMismatchError: different bases, species or block sizes.
    """
    check_same_structure(prediction, reference)
    ref = align_reference(reference, prediction.edge_index, prediction.cell_shift, prediction.block_ptr, spin=spin)
    return block_metrics(
        prediction.h_unshifted[spin],
        ref.h,
        BlockTypes.from_hsdata(prediction),
        s_ref=ref.s,
        s_pred=prediction.s if compare_s else None,
    )


@dataclass
class OnsiteEnergyErrors:
    """Per-atom onsite-energy errors of one structure, after removing the best uniform ``c S``.

    Attributes:
        per_atom_meV: ``(N,)`` float64 signed mean, over the atom's orbitals ``μ``, of
            ``H_pred[μμ] - H_ref[μμ] - c S_ref[μμ]`` (meV): the atom's potential error ``V_i``.
        shift_eV: the removed ``c`` (eV; :func:`best_shift` over every predicted entry, the
            shift of :func:`block_metrics`).
    """

    per_atom_meV: np.ndarray
    shift_eV: float

    @property
    def rmse_meV(self) -> float:
        """Root mean square of :attr:`per_atom_meV` over the atoms."""
        return float(np.sqrt(np.mean(self.per_atom_meV**2)))

    @property
    def mae_meV(self) -> float:
        """Mean absolute value of :attr:`per_atom_meV` over the atoms."""
        return float(np.mean(np.abs(self.per_atom_meV)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``rmse_meV``, ``mae_meV``, ``shift_eV``, ``per_atom_meV`` (a list)."""
        return {"rmse_meV": self.rmse_meV, "mae_meV": self.mae_meV, "shift_eV": self.shift_eV,
                "per_atom_meV": self.per_atom_meV.tolist()}


def onsite_energy_errors(prediction: HSData, reference: HSData, *, spin: int = 0) -> OnsiteEnergyErrors:
    """The per-atom onsite-energy errors of a prediction against SIESTA (:class:`OnsiteEnergyErrors`).

    Args:
        prediction: the prediction on any subset of pairs that holds every atom's onsite pair
            ``(i, i, 0)`` (``h`` the unshifted H, E_F = 0).
        reference: the SIESTA structure (same atoms and basis).
        spin: spin channel of both.

    Raises:
        BasisMismatchError: different bases, species or block sizes.
        InputError: an atom without its onsite pair in the prediction.
    """
    check_same_structure(prediction, reference)
    ref = align_reference(reference, prediction.edge_index, prediction.cell_shift, prediction.block_ptr, spin=spin)
    delta = prediction.h_unshifted[spin] - ref.h
    c = best_shift(delta, ref.s)
    error = delta - c * ref.s
    pairs = np.flatnonzero(prediction.onsite)
    atoms = prediction.edge_index[0, pairs]
    if len(np.unique(atoms)) != prediction.n_atoms:
        missing = sorted(set(range(prediction.n_atoms)) - set(atoms.tolist()))
        raise InputError(f"the prediction lacks the onsite blocks of atoms {missing[:10]}", path=reference.source)
    n = prediction.atom_orbitals[atoms]
    local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    diagonal = np.repeat(prediction.block_ptr[pairs], n) + local * (np.repeat(n, n) + 1)
    sums = np.bincount(np.repeat(atoms, n), weights=error[diagonal], minlength=prediction.n_atoms)
    return OnsiteEnergyErrors(MEV_PER_EV * sums / prediction.atom_orbitals, c)
