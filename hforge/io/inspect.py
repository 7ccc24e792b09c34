"""Numbers that describe one H/S file (``hforge data inspect``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hforge.io.hsdata import DENSE_CHECK_MAX_ORBITALS, HSData

__all__ = ["describe", "hermiticity_error"]


def hermiticity_error(data: HSData, which: str = "h") -> float:
    """``max |M_e - M_partner(e)^T|`` over all pairs (eV for H): how far the stored blocks are
    from ``M(i, j, n) = M(j, i, -n)^T``."""
    has = data.partner >= 0
    pairs = np.flatnonzero(has)
    own = data._gather(pairs)
    mirrored = data._gather(data.partner[pairs], np.ones(len(pairs), bool))
    values = data.s[None, :] if which == "s" else data.h
    if len(own) == 0:
        return 0.0
    return float(np.abs(values[:, own].astype(np.float64) - values[:, mirrored]).max())


def describe(data: HSData) -> dict[str, Any]:
    """Atoms, species, orbitals, supercell, sparsity, symmetry errors and Γ spectra of ``data``."""
    symbols = data.basis.symbols
    counts = np.bincount(data.species, minlength=len(symbols))
    out: dict[str, Any] = {
        "source": data.source,
        "atoms": data.n_atoms,
        "species": {symbols[k]: int(c) for k, c in enumerate(counts) if c},
        "orbitals_per_atom": {sp.symbol: sp.n_orbitals for sp in data.basis},
        "irreps": {sp.symbol: sp.irreps for sp in data.basis},
        "orbitals": data.n_orbitals,
        "spin": data.spin,
        "nsc": data.nsc.tolist(),
        "pairs": data.n_pairs,
        "nnz": data.nnz,
        "fermi_level_eV": data.fermi_level,
        "hermiticity_error_H_eV": hermiticity_error(data, "h"),
        "hermiticity_error_S": hermiticity_error(data, "s"),
    }
    if data.n_orbitals > DENSE_CHECK_MAX_ORBITALS:
        out["gamma"] = f"skipped: more than {DENSE_CHECK_MAX_ORBITALS} orbitals"
        return out
    import scipy.linalg

    s = data.matrix_at_k(which="s")
    s_eig = np.linalg.eigvalsh(0.5 * (s + s.T))
    out["symmetry_error_S_gamma"] = float(np.abs(s - s.T).max())
    out["S_min_eigenvalue_gamma"] = float(s_eig[0])
    for channel in range(data.n_spin):
        h = data.matrix_at_k(which="h", spin=channel)
        tag = "" if data.n_spin == 1 else f"_spin{channel}"
        out[f"symmetry_error_H_gamma_eV{tag}"] = float(np.abs(h - h.T).max())
        if s_eig[0] > 0:
            eig = scipy.linalg.eigh(0.5 * (h + h.T), 0.5 * (s + s.T), eigvals_only=True)
            out[f"eigenvalues_gamma_eV{tag}"] = [float(eig[0]), float(eig[-1])]
    return out
