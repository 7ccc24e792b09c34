"""Numbers that describe one H/S file (``hforge data inspect``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hforge.io.hsdata import DENSE_CHECK_MAX_ORBITALS, HSData

__all__ = ["describe", "describe_without_basis", "hermiticity_error"]


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
    if data.folded:
        out["folded"] = "a Γ-only file whose pairs couple through several periodic images: H and S at Γ only"
    elif data.gamma_only:
        out["folded"] = "a Γ-only file, unfolded into its periodic pairs"
    h = []
    if data.n_orbitals <= DENSE_CHECK_MAX_ORBITALS:
        h = [data.matrix_at_k(which="h", spin=channel) for channel in range(data.n_spin)]
    return out | _gamma(data.n_orbitals, (lambda: data.matrix_at_k(which="s")), h)


def describe_without_basis(hamiltonian: Any, fermi_level: float, source: str) -> dict[str, Any]:
    """What :func:`describe` says of a file that needs no basis to say it: atoms, orbitals (per atom,
    as the file counts them), supercell, sparsity, symmetry errors and Γ spectra, from the
    ``sisl.Hamiltonian`` of :func:`hforge.io.siesta.read_sisl_hamiltonian`."""
    geometry = hamiltonian.geometry
    n_spin = hamiltonian.spin.size(hamiltonian.dtype)
    transposed = hamiltonian.transpose(spin=False)
    out: dict[str, Any] = {
        "source": source,
        "atoms": int(geometry.na),
        "species": "unknown: the file carries no basis (give --basis, or keep the run's fdf and ion files beside it)",
        "orbitals_per_atom": sorted({int(n) for n in np.diff(geometry.firsto)}),
        "orbitals": int(geometry.no),
        "spin": "unpolarized" if n_spin == 1 else "polarized",
        "nsc": [int(n) for n in geometry.nsc],
        "nnz": int(hamiltonian.nnz),
        "fermi_level_eV": float(fermi_level),
        "hermiticity_error_H_eV": max(
            float(abs(hamiltonian.tocsr(d) - transposed.tocsr(d)).max()) for d in range(n_spin)
        ),
        "hermiticity_error_S": float(abs(hamiltonian.tocsr(hamiltonian.S_idx) - transposed.tocsr(hamiltonian.S_idx)).max()),
    }
    h = []
    if geometry.no <= DENSE_CHECK_MAX_ORBITALS:  # sisl takes spin= only of polarized H
        h = [hamiltonian.Hk(format="array", **({"spin": d} if n_spin > 1 else {})) for d in range(n_spin)]
    return out | _gamma(int(geometry.no), (lambda: hamiltonian.Sk(format="array")), h)


def _gamma(n_orbitals: int, s_gamma: Any, h_gamma: list[np.ndarray]) -> dict[str, Any]:
    """Symmetry errors, S's smallest eigenvalue and the range of the generalized eigenvalues at Γ
    (dense, up to :data:`DENSE_CHECK_MAX_ORBITALS` orbitals); ``s_gamma()`` gives S(Γ)."""
    if n_orbitals > DENSE_CHECK_MAX_ORBITALS:
        return {"gamma": f"skipped: more than {DENSE_CHECK_MAX_ORBITALS} orbitals"}
    import scipy.linalg

    s = np.asarray(s_gamma())
    s_eig = np.linalg.eigvalsh(0.5 * (s + s.T))
    out: dict[str, Any] = {"symmetry_error_S_gamma": float(np.abs(s - s.T).max()), "S_min_eigenvalue_gamma": float(s_eig[0])}
    for channel, h in enumerate(h_gamma):
        tag = "" if len(h_gamma) == 1 else f"_spin{channel}"
        out[f"symmetry_error_H_gamma_eV{tag}"] = float(np.abs(h - h.T).max())
        if s_eig[0] > 0:
            eig = scipy.linalg.eigh(0.5 * (h + h.T), 0.5 * (s + s.T), eigvals_only=True)
            out[f"eigenvalues_gamma_eV{tag}"] = [float(eig[0]), float(eig[-1])]
    return out
