"""The physical baseline a model learns on top of (``ModelConfig.baseline``): its fit.

``"operator"``: ``H0 = T + V_KB + c0 S`` (:func:`hforge.ops.two_centre.operator_coefficients`) and,
with ``ModelConfig.separable``, the species-mean separable operator ``D_mean``
(:mod:`hforge.models.separable`): :func:`fit_operator_baseline`, least squares of the unshifted H
over the stored entries of the training structures with one energy zero per structure (SIESTA's
zero moves by ~0.1 eV from cell to cell); ``c0`` is their mean.

``"h0"`` (below):
``H0 = c_T T + c_KB V_KB + c_NA V_NA + c_S S`` (:func:`hforge.ops.two_centre.baseline_blocks`),
one coefficient per part and block type (onsite or not x species pair x shell pair: a scalar per
sub-block, so every symmetry holds).  The plain sum ``T + V_KB + V_NA`` is a poor baseline on its
own: it lacks the exchange-correlation potential and the screening of the neutral-atom potentials
by the valence density (on the shared aBN cells it leaves more spread in some block types than H
has).  Fitted by least squares on the training data it carries most of H: on the held-out 64-atom
aBN cell the fit alone leaves 25 meV of H's 0.8 eV spread (MAE; std 0.074 eV), and models learning
the rest reach 1.5-1.9x lower errors at equal budget than models learning H (closing note of
issue 17).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from hforge.basis import BasisSet
from hforge.errors import InputError
from hforge.io import HSData, value_block_types
from hforge.io.block_statistics import block_type_shape

if TYPE_CHECKING:
    from hforge.ops.two_centre.projectors import ProjectorSet

__all__ = ["fit_baseline", "fit_operator_baseline", "baseline_of"]

#: Fewest stored entries a block type needs for its own fit (else it keeps the plain coefficients).
MIN_ENTRIES = 64


def _model_species(data: HSData, basis: BasisSet) -> np.ndarray:
    lookup = np.array([basis.index(symbol) if symbol in basis else -1 for symbol in data.basis.symbols])
    return lookup[data.species]


def baseline_of(basis: BasisSet, data: HSData, coefficients: np.ndarray | None = None, *, parts: bool = False) -> np.ndarray:
    """The baseline (or, with ``parts``, its ``(4, n_values)`` parts) on ``data``'s own pairs, in
    the model basis ``basis`` (species matched by label)."""
    from hforge.ops.two_centre import baseline_blocks, baseline_parts

    args = (basis, _model_species(data, basis), data.positions, data.cell, data.pbc, data.edge_index, data.cell_shift)
    if parts:
        return baseline_parts(*args, block_ptr=data.block_ptr)
    return baseline_blocks(*args, block_ptr=data.block_ptr, coefficients=coefficients)


def fit_baseline(basis: BasisSet, structures: Iterable[HSData], *, spin: int = 0) -> np.ndarray:
    """Least-squares coefficients of the baseline parts per block type on the structures' stored
    entries (unshifted H): ``(4, 2, n_species, n_species, n_shells, n_shells)``.

    Block types ``(s_i, s_j, a, b)`` and ``(s_j, s_i, b, a)`` (a block and its transpose) share
    their coefficients; types with fewer than :data:`MIN_ENTRIES` entries keep the plain ones
    (``T + V_KB + V_NA``).
    """
    from hforge.ops.two_centre import plain_coefficients

    table = plain_coefficients(basis)
    shape = block_type_shape(basis)
    transposed = np.arange(int(np.prod(shape))).reshape(shape).transpose(0, 2, 1, 4, 3).reshape(-1)
    gram = np.zeros((int(np.prod(shape)), 4, 4))
    rhs = np.zeros((int(np.prod(shape)), 4))
    count = np.zeros(int(np.prod(shape)), dtype=np.int64)
    for data in structures:
        x = baseline_of(basis, data, parts=True)[:, data.mask]
        y = data.h_unshifted[spin, data.mask]
        types = value_block_types(basis, _model_species(data, basis), data.edge_index, data.cell_shift, data.block_ptr)
        types = np.minimum(types, transposed[types])[data.mask]
        np.add.at(gram, types, x.T[:, :, None] * x.T[:, None, :])
        np.add.at(rhs, types, x.T * y[:, None])
        np.add.at(count, types, 1)
    flat = table.reshape(4, -1)
    for t in np.flatnonzero(count >= MIN_ENTRIES):
        solution = np.linalg.lstsq(gram[t], rhs[t], rcond=1e-12)[0]
        flat[:, t] = flat[:, transposed[t]] = solution
    return table


def fit_operator_baseline(
    basis: BasisSet, structures: Iterable[HSData], projectors: "ProjectorSet | None" = None, *, spin: int = 0,
    ridge: float = 1e-6,
) -> tuple[float, np.ndarray | None]:
    """``(c0, D_mean blocks)`` of the operator baseline (module docstring): ``c0`` in eV, the blocks
    ``(n_species, l_max + 1, n_radial, n_radial)`` (eV, :func:`hforge.models.separable.mean_operator_matrix`'s
    input) or None without ``projectors``.  Species without entries keep zero blocks.  ``ridge``
    (relative to the mean diagonal of the normal equations' D part) keeps directions the data
    barely determine from growing: every unit of ``||D||`` loosens the operator's bound.

    Raises:
        InputError: no structures.
    """
    import torch

    from hforge.models.separable import mean_operator_matrix
    from hforge.ops.two_centre import operator_coefficients
    from hforge.ops.two_centre.separable import SeparableContext

    n_species = len(basis)
    unit = []  # the basis of D_mean: one symmetric element per (species, l, n <= n')
    if projectors is not None:
        n = projectors.n_radial
        for sp in range(n_species):
            for l in range(projectors.l_max + 1):
                for a in range(n):
                    for b in range(a, n):
                        blocks = np.zeros((n_species, projectors.l_max + 1, n, n))
                        blocks[sp, l, a, b] = blocks[sp, l, b, a] = 1.0
                        unit.append(blocks)
    n_unit = len(unit)
    design = [mean_operator_matrix(projectors, torch.from_numpy(u)).numpy() for u in unit]
    grams, rhss = [], []
    zero = operator_coefficients(basis, 0.0)
    for data in structures:
        species = _model_species(data, basis)
        y = (data.h_unshifted[spin] - baseline_of(basis, data, zero))[data.mask]
        columns = [data.s[data.mask]]
        if n_unit:
            context = SeparableContext(basis, projectors, species, data.positions, data.cell, data.pbc)
            per_atom = [d[species] for d in design]
            columns += [c[data.mask] for c in context.blocks_of_many(data.edge_index, data.cell_shift, data.block_ptr, per_atom)]
        x = np.stack(columns, axis=1)
        grams.append(x.T @ x)
        rhss.append(x.T @ y)
    if not grams:
        raise InputError("fit_operator_baseline: no structures")
    n_struct = len(grams)
    gram = np.zeros((n_struct + n_unit, n_struct + n_unit))
    rhs = np.zeros(n_struct + n_unit)
    for b, (g, r) in enumerate(zip(grams, rhss)):
        index = np.r_[b, n_struct : n_struct + n_unit]
        gram[np.ix_(index, index)] += g
        rhs[index] += r
    if n_unit:
        d_part = np.arange(n_struct, n_struct + n_unit)
        gram[d_part, d_part] += ridge * np.mean(np.diag(gram)[d_part])
    solution = np.linalg.lstsq(gram, rhs, rcond=1e-12)[0]
    c0 = float(np.mean(solution[:n_struct]))
    if not n_unit:
        return c0, None
    return c0, np.einsum("u,u...->...", solution[n_struct:], np.stack(unit))
