"""Training losses of predicted H and S: normalised block errors and Γ eigenvalues.

Block losses (:class:`BlockLoss`, :func:`block_loss`): torch-differentiable squared or absolute
errors of flat-packed blocks, each entry divided by the standard deviation of its block type in
the training store (:func:`normalization_scales`), optionally with the best uniform shift ``c S``
removed per structure (as the shift-removed metrics of :mod:`hforge.metrics.blocks`).

Eigenvalue loss (:func:`eigenvalue_loss`): the selected canonically orthogonalized Γ eigenvalues
of the predicted H against the reference's (:mod:`hforge.metrics.spectra`); see
:class:`EigenvalueTarget`.

Near-null loss (:func:`null_loss`): the Rayleigh quotients ``v^T H v / v^T S v`` along the
eigenvectors ``v`` of S(Γ) with the smallest eigenvalues, predicted against DFT's (eV), after the
structure's best uniform shift.  Along those directions an error is divided by S's eigenvalue in
``H c = E S c``: they hold the top of the spectrum (the kinetic energy of small functions) and,
for a matrix filled entry by entry, its ghost states (:class:`NullTarget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hforge.errors import InputError
from hforge.io import HSData, StoreStatistics
from hforge.metrics.spectra import DEFAULT_THRESHOLD, DEFAULT_WINDOW, GammaLayout, canonical_orthogonalization, n_occupied_states

__all__ = [
    "DEFAULT_SCALE_FLOOR",
    "BlockLoss",
    "EigenvalueTarget",
    "block_loss",
    "eigenvalue_loss",
    "eigenvalue_target",
    "NullTarget",
    "normalization_scales",
    "null_loss",
    "null_target",
    "remove_shift",
]

#: Smallest per-block-type scale of the losses: 1 meV for H, 1e-4 for S (onsite S blocks are
#: the same in every structure: their spread is rounding noise).
DEFAULT_SCALE_FLOOR = {"h": 1e-3, "s": 1e-4}


# ---------------------------------------------------------------------------------------
# block losses
# ---------------------------------------------------------------------------------------
def normalization_scales(
    statistics: StoreStatistics, matrix: Literal["h", "s"] = "h", *, floor: float | None = None
) -> np.ndarray:
    """``(n_types,)`` float64 loss scale of every block type: the store's standard deviation.

    Types absent from the store get the median scale; every scale is at least ``floor``
    (default :data:`DEFAULT_SCALE_FLOOR`: 1 meV for H, 1e-4 for S).
    """
    std = np.asarray(statistics.h_std if matrix == "h" else statistics.s_std, dtype=np.float64).ravel()
    floor = DEFAULT_SCALE_FLOOR[matrix] if floor is None else float(floor)
    known = np.isfinite(std)
    fill = float(np.median(std[known])) if known.any() else 1.0
    return np.maximum(np.where(known, std, fill), floor)


def remove_shift(delta: torch.Tensor, s_ref: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    """``delta - c_b s_ref`` with ``c_b`` the least-squares shift of each structure ``b``.

    Args:
        delta: ``(n_values,)`` H errors (eV), differentiable.
        s_ref: ``(n_values,)`` reference S.
        batch: ``(n_values,)`` int64 structure of every value; None for one structure.
    """
    s_ref = s_ref.to(delta.dtype)
    if batch is None:
        c = (delta * s_ref).sum() / (s_ref * s_ref).sum().clamp_min(torch.finfo(delta.dtype).tiny)
        return delta - c * s_ref
    n = int(batch.max()) + 1 if batch.numel() else 0
    num = torch.zeros(n, dtype=delta.dtype, device=delta.device).index_add(0, batch, delta * s_ref)
    den = torch.zeros(n, dtype=delta.dtype, device=delta.device).index_add(0, batch, s_ref * s_ref)
    return delta - (num / den.clamp_min(torch.finfo(delta.dtype).tiny))[batch] * s_ref


def block_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    types: torch.Tensor,
    scale: torch.Tensor,
    *,
    kind: Literal["mse", "mae"] = "mse",
    reduction: Literal["entries", "types"] = "entries",
    s_ref: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised error of flat blocks: ``mean(((pred - target) / scale[types]) ** 2)`` (or ``|.|``).

    Args:
        pred, target: ``(n_values,)`` predicted and reference values (eV for H).
        types: ``(n_values,)`` int64 block type of every value (:attr:`hforge.metrics.BlockTypes.index`).
        scale: ``(n_types,)`` scale of every type (:func:`normalization_scales`).
        kind: ``"mse"`` or ``"mae"``.
        reduction: ``"entries"`` averages over entries; ``"types"`` averages within each block
            type first, then over the types present, so that rare types weigh as much as common ones.
        s_ref: give it (with ``batch`` for several structures) to remove each structure's best
            uniform shift ``c S_ref`` from the error first (H only).
        batch: ``(n_values,)`` int64 structure of every value.

    Returns:
        A scalar tensor (dimensionless).
    """
    delta = pred - target.to(pred.dtype)
    if s_ref is not None:
        delta = remove_shift(delta, s_ref, batch)
    z = delta / scale.to(delta)[types]
    per_entry = z * z if kind == "mse" else z.abs()
    if reduction == "entries":
        return per_entry.mean()
    n_types = scale.numel()
    sums = torch.zeros(n_types, dtype=per_entry.dtype, device=per_entry.device).index_add(0, types, per_entry)
    counts = torch.bincount(types, minlength=n_types).to(per_entry.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


class BlockLoss(torch.nn.Module):
    """Weighted sum of the normalised H and S block losses of :func:`block_loss`.

    Args:
        statistics: training-store statistics (per-block-type std of H and S).
        kind, reduction: as in :func:`block_loss`.
        h_weight, s_weight: weights of the H and S terms.
        shift_invariant: remove each structure's best shift ``c S_ref`` from the H errors.
        normalize: divide by the per-block-type standard deviations (else errors in physical units).
        onsite_weight: weight of the entries of onsite blocks (block types of the onsite half).

    ``forward(h_pred, h_ref, types, s_pred=None, s_ref=None, batch=None)`` returns a dict with
    ``loss`` (the weighted sum) and the terms ``h`` and ``s`` (when S is given).
    """

    def __init__(
        self,
        statistics: StoreStatistics,
        *,
        kind: Literal["mse", "mae"] = "mse",
        reduction: Literal["entries", "types"] = "entries",
        h_weight: float = 1.0,
        s_weight: float = 1.0,
        shift_invariant: bool = False,
        normalize: bool = True,
        onsite_weight: float = 1.0,
    ) -> None:
        super().__init__()
        h_scale, s_scale = normalization_scales(statistics, "h"), normalization_scales(statistics, "s")
        if not normalize:
            h_scale, s_scale = np.ones_like(h_scale), np.ones_like(s_scale)
        # types of the onsite half (block_type_shape: onsite or not first) weigh onsite_weight: scale / sqrt(weight)
        h_scale[len(h_scale) // 2 :] /= np.sqrt(onsite_weight)
        self.register_buffer("h_scale", torch.as_tensor(h_scale))
        self.register_buffer("s_scale", torch.as_tensor(s_scale))
        self.kind, self.reduction = kind, reduction
        self.h_weight, self.s_weight = h_weight, s_weight
        self.shift_invariant = shift_invariant

    def forward(
        self,
        h_pred: torch.Tensor,
        h_ref: torch.Tensor,
        types: torch.Tensor,
        s_pred: torch.Tensor | None = None,
        s_ref: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.shift_invariant and s_ref is None:
            raise InputError("a shift-invariant loss needs the reference S")
        options = {"kind": self.kind, "reduction": self.reduction}
        terms = {
            "h": block_loss(
                h_pred, h_ref, types, self.h_scale, s_ref=s_ref if self.shift_invariant else None, batch=batch, **options
            )
        }
        loss = self.h_weight * terms["h"]
        if s_pred is not None and s_ref is not None:
            terms["s"] = block_loss(s_pred, s_ref, types, self.s_scale, **options)
            loss = loss + self.s_weight * terms["s"]
        return {"loss": loss, **terms}


# ---------------------------------------------------------------------------------------
# eigenvalue loss
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EigenvalueTarget:
    """What :func:`eigenvalue_loss` compares a predicted H with, built once per structure.

    The loss diagonalises ``X^T H_pred X`` with ``X`` the canonical orthogonalization of the
    *reference* S (no gradient flows through S: its eigenvectors are degenerate in these cells and
    their derivatives undefined) and compares the selected eigenvalues with the reference's.

    Degeneracies: ``torch.linalg.eigvalsh`` back-propagates ``V diag(g) V^T``, with no
    ``1/(λ_i - λ_j)`` factors, so gradients stay finite at degenerate eigenvalues; and the targets
    of each group of reference states closer than ``degeneracy_tol`` are replaced by the group
    mean, so that the loss is a symmetric function of the eigenvalues of every group (hence
    differentiable where the predicted group stays degenerate).  Selected states are extended to
    whole groups.

    Attributes:
        layout: folds the predicted flat values into the Γ matrix.
        x: ``(n, m)`` float64 canonical orthogonalization of the reference S.
        states: ``(k,)`` int64 indices of the compared states in the sorted spectrum.
        target: ``(k,)`` float64 reference eigenvalues (eV), group-averaged.
    """

    layout: GammaLayout
    x: torch.Tensor
    states: torch.Tensor
    target: torch.Tensor


def eigenvalue_target(
    reference: HSData,
    n_occupied: int | None = None,
    *,
    layout: GammaLayout | None = None,
    window: float | None = DEFAULT_WINDOW,
    occupied: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    degeneracy_tol: float = 1e-3,
    spin: int = 0,
) -> EigenvalueTarget:
    """The loss target of one structure.

    Args:
        reference: the SIESTA structure.
        n_occupied: occupied states; default from the basis' valence charges.
        layout: the Γ layout of the *predicted* pair list (e.g. the canonical half); default the
            reference's own pairs.
        window: include the states within ±window eV of the (orthogonalized) reference gap
            centre; None for none.
        occupied: include every occupied state.
        threshold: canonical-orthogonalization threshold.
        degeneracy_tol: reference states closer than this (eV) form one degenerate group.
        spin: spin channel.
    """
    if n_occupied is None:
        n_occupied = n_occupied_states(reference.basis, reference.species)
    ref_layout = GammaLayout.from_hsdata(reference)
    h = torch.as_tensor(ref_layout.dense(reference.h_unshifted[spin]))
    x = canonical_orthogonalization(ref_layout.dense(reference.s), threshold)
    evals = torch.linalg.eigvalsh(x.T @ h @ x).numpy()
    if not 0 < n_occupied < len(evals):
        raise InputError(f"{n_occupied} occupied states in a spectrum of {len(evals)}")
    select = np.zeros(len(evals), dtype=bool)
    if occupied:
        select[:n_occupied] = True
    if window is not None:
        centre = 0.5 * (evals[n_occupied - 1] + evals[n_occupied])
        select |= np.abs(evals - centre) <= window
    if not select.any():
        raise InputError("the eigenvalue target selects no state: enable occupied or give a window")
    group = np.concatenate([[0], np.cumsum(np.diff(evals) > degeneracy_tol)])
    select = np.isin(group, group[select])  # whole degenerate groups
    means = np.bincount(group, weights=evals) / np.bincount(group)
    states = np.flatnonzero(select)
    return EigenvalueTarget(
        layout=layout if layout is not None else ref_layout,
        x=x,
        states=torch.as_tensor(states),
        target=torch.as_tensor(means[group[states]]),
    )


def eigenvalue_loss(
    h_pred: torch.Tensor, target: EigenvalueTarget, *, kind: Literal["mse", "mae"] = "mse"
) -> torch.Tensor:
    """Mean squared (eV²) or absolute (eV) error of the selected orthogonalized Γ eigenvalues.

    Args:
        h_pred: ``(n_values,)`` predicted unshifted H on ``target.layout``'s pairs (differentiable).
        target: from :func:`eigenvalue_target`.
        kind: ``"mse"`` or ``"mae"``.
    """
    if h_pred.shape != (len(target.layout.index),):
        raise InputError(f"h_pred has shape {tuple(h_pred.shape)}, the target's layout {len(target.layout.index)} values")
    h = target.layout.dense(h_pred.to(torch.float64))
    x = target.x.to(h.device)
    evals = torch.linalg.eigvalsh(x.T @ h @ x)
    err = evals[target.states.to(h.device)] - target.target.to(h.device)
    return (err * err).mean() if kind == "mse" else err.abs().mean()


# ---------------------------------------------------------------------------------------
# near-null loss
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NullTarget:
    """What :func:`null_loss` compares a predicted H with along S's near-null directions, built once
    per structure.

    Attributes:
        layout: folds the predicted flat values into the Γ matrix.
        vectors: ``(n, k)`` float64 eigenvectors of the reference S(Γ) with the ``k`` smallest eigenvalues.
        eigenvalues: ``(k,)`` those eigenvalues.
        quotients: ``(k,)`` DFT's Rayleigh quotients ``v^T H v / v^T S v`` (eV).
    """

    layout: GammaLayout
    vectors: torch.Tensor
    eigenvalues: torch.Tensor
    quotients: torch.Tensor


def null_target(reference: HSData, n_directions: int, *, layout: GammaLayout | None = None, spin: int = 0) -> NullTarget:
    """The near-null target of one structure (``layout``: of the predicted pair list; default the reference's)."""
    ref_layout = GammaLayout.from_hsdata(reference)
    w, u = np.linalg.eigh(ref_layout.dense(reference.s))
    k = min(int(n_directions), len(w))
    vectors = u[:, :k]
    h = ref_layout.dense(reference.h_unshifted[spin])
    quotients = np.einsum("iv,ij,jv->v", vectors, h, vectors) / w[:k]
    return NullTarget(layout if layout is not None else ref_layout, torch.as_tensor(vectors), torch.as_tensor(w[:k]),
                      torch.as_tensor(quotients))


def null_loss(h_pred: torch.Tensor, target: NullTarget, shift: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Mean squared error (eV²) of the Rayleigh quotients along ``target``'s directions of the
    predicted H (``(n_values,)`` on ``target.layout``'s pairs, differentiable) minus ``shift`` (the
    structure's best uniform shift, eV: the quotient of ``c S`` is ``c``)."""
    h = target.layout.dense(h_pred)
    v = target.vectors.to(h)
    quotients = torch.einsum("iv,ij,jv->v", v, h, v) / target.eigenvalues.to(h)
    return ((quotients - shift - target.quotients.to(h)) ** 2).mean()
