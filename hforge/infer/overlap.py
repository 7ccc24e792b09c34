"""Is a predicted S positive definite?  Checked for models that learn S, at Γ, where affordable.

A model with ``ModelConfig(overlap="exact")`` (the default) computes S from the two-centre
integrals of the basis' radial functions: SIESTA's S to 1e-8, positive definite by construction
(a Gram matrix of linearly independent orbitals), and it is not checked.  A model with a learned S
(``overlap="learned"``, every checkpoint written before exact S existed, the bundled ``abn-dzp``
up to its exact-S release among them) predicts each S entry to ~1e-4, while dense DZP cells have
S(Γ) eigenvalues down to ~5e-5: its S can then be indefinite (docs/measurements.md) and the
generalized eigenvalue problem H c = E S c is ill-posed.

The check: a dense Cholesky factorization of S(Γ) (the sum of S over all cell shifts), up to
:data:`OVERLAP_CHECK_MAX_ORBITALS` orbitals (its cost: docs/measurements.md); when it fails, the
smallest eigenvalue (LAPACK ``evr``, one eigenvalue) is named in the warning.  S(Γ) positive definite does not prove S(k) positive
definite at every k, but an indefinite S(Γ) proves S indefinite.  Larger cells get a warning that
S was not checked.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from hforge.errors import OverlapWarning

__all__ = ["OVERLAP_CHECK_MAX_ORBITALS", "check_learned_overlap", "smallest_overlap_eigenvalue"]

#: Largest prediction (orbitals) whose learned S(Γ) is checked (dense: 8 n^2 bytes, twice).
OVERLAP_CHECK_MAX_ORBITALS = 4000

_EXACT_S_ADVICE = (
    "models with the exact two-centre S (ModelConfig overlap='exact', the default) are positive definite by "
    "construction: retrain with it"
)


def smallest_overlap_eigenvalue(hamiltonian: Any) -> float | None:
    """The smallest eigenvalue of S(Γ) of a non-orthogonal ``sisl.Hamiltonian`` when S(Γ) is not
    positive definite (dense Cholesky failed), else None (positive definite)."""
    import scipy.linalg

    s = hamiltonian.Sk(format="array").astype(np.float64)
    s = 0.5 * (s + s.T)
    try:
        scipy.linalg.cholesky(s, lower=True, check_finite=False, overwrite_a=False)
        return None
    except np.linalg.LinAlgError:
        pass
    return float(scipy.linalg.eigh(s, eigvals_only=True, subset_by_index=[0, 0], driver="evr", check_finite=False)[0])


def check_learned_overlap(model: Any, hamiltonian: Any, *, source: str | None = None) -> float | None:
    """Warn (:class:`~hforge.errors.OverlapWarning`) when a model that learns S predicted an S(Γ)
    that is not positive definite, or one too large to check (> :data:`OVERLAP_CHECK_MAX_ORBITALS`).

    Args:
        model: the :class:`~hforge.models.HSModel` that made the prediction (nothing is checked
            when it computes S exactly).
        hamiltonian: its prediction, a non-orthogonal ``sisl.Hamiltonian``.
        source: what was predicted (a path), named in the warning.

    Returns:
        The smallest eigenvalue of S(Γ) when it is not positive definite, else None.
    """
    if not model.learns_overlap:
        return None
    where = f"{source}: " if source else ""
    n = hamiltonian.no
    if n > OVERLAP_CHECK_MAX_ORBITALS:
        warnings.warn(
            f"{where}the model learns S (overlap='learned') and its S can be indefinite; this prediction's S was not "
            f"checked ({n} orbitals; the Cholesky check of S(Γ) runs up to {OVERLAP_CHECK_MAX_ORBITALS}); "
            + _EXACT_S_ADVICE,
            OverlapWarning,
            stacklevel=3,
        )
        return None
    low = smallest_overlap_eigenvalue(hamiltonian)
    if low is not None:
        warnings.warn(
            f"{where}the model learns S (overlap='learned') and the predicted S is not positive definite: "
            f"S(Γ) has the eigenvalue {low:.3e} (Cholesky of S(Γ) failed), so H c = E S c is ill-posed; "
            + _EXACT_S_ADVICE,
            OverlapWarning,
            stacklevel=3,
        )
    return low
