"""The record of one finished SIESTA run: what its log and its H/S file say, one JSON-ready dict.

The fields of ``shared/abn/summary.jsonl`` (same names, same meaning) that a run folder alone
determines: the geometry (``natoms``, ``formula``, ``cell_A``, ``density_g_cm3``), the SCF
(``scf_iterations``, ``converged``, ``final_dDmax``, ``final_dHmax_eV``, ``n_kpoints``), the
energies (``E_total_eV``, ``E_fermi_eV``), the matrices (``no``, ``nnz``, ``nsc``, ``tshs_bytes``)
and at Γ the smallest eigenvalue of S and the HOMO, LUMO and gap of H - E_F S (eV, as sisl reads
SIESTA's H), the occupied states being half of the log's valence electrons.  The Γ numbers need a
dense eigensolver: cells above :data:`GAMMA_MAX_ORBITALS` orbitals get None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_masses, atomic_numbers

from hforge.errors import FileFormatError
from hforge.io import read_hs
from hforge.io.runs import find_log, log_failure, log_text
from hforge.io.siesta import find_hs_file
from hforge.io.siesta_log import read_siesta_log

__all__ = ["GAMMA_MAX_ORBITALS", "run_record"]

#: Largest cell (orbitals) whose Γ spectrum a record computes (dense; 8000 orbitals: ~1 GB, minutes).
GAMMA_MAX_ORBITALS = 8000

_AMU_G = 1.66053906660e-24  # g per atomic mass unit


def _gamma(data: Any, electrons: float | None) -> dict[str, float | None]:
    """Smallest eigenvalue of S(Γ) and HOMO/LUMO/gap of H(Γ) - E_F S(Γ) (eV) of an unpolarized cell."""
    out: dict[str, float | None] = dict.fromkeys(("S_min_eig_gamma", "homo_gamma_eV", "lumo_gamma_eV", "gap_gamma_eV"))
    if data.n_orbitals > GAMMA_MAX_ORBITALS:
        return out
    import scipy.linalg

    s = data.matrix_at_k(which="s")
    s = 0.5 * (s + s.T)
    out["S_min_eig_gamma"] = float(np.linalg.eigvalsh(s)[0])
    occupied = None if electrons is None else int(round(electrons / 2))
    if data.n_spin != 1 or occupied is None or not 0 < occupied < data.n_orbitals or out["S_min_eig_gamma"] <= 0:
        return out
    h = data.matrix_at_k(which="h")
    eig = scipy.linalg.eigh(0.5 * (h + h.T), s, eigvals_only=True)
    out.update(homo_gamma_eV=float(eig[occupied - 1]), lumo_gamma_eV=float(eig[occupied]),
               gap_gamma_eV=float(eig[occupied] - eig[occupied - 1]))
    return out


def run_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The record of a finished run folder ``folder/<name>.fdf`` with its log (``<name>.out[.gz]``).

    Every run gets its name, ``state`` (``converged``, ``unconverged`` or ``failed``, from the log as
    :func:`hforge.io.runs.log_failure` reads it), ``detail``, ``job_completed`` and the log's
    numbers; a converged run with its H/S file also the geometry and matrix fields (module
    docstring).  Values the folder does not give are None.

    Raises:
        FileFormatError: no log, or an unreadable H/S file of a converged run.
    """
    folder = Path(folder)
    name = folder.name
    log_path = find_log(folder, name)
    if log_path is None:
        raise FileFormatError("no SIESTA log in the run folder", path=folder)
    text = log_text(log_path)
    log = read_siesta_log(text)
    failure = log_failure(text)
    state = "converged" if failure is None else ("unconverged" if failure[0] == "unconverged" else "failed")
    record: dict[str, Any] = {
        "name": name,
        "state": state,
        "detail": "" if failure is None else failure[1],
        "converged": state == "converged",
        "job_completed": "Job completed" in text,
        "siesta_version": log.version,
        "scf_iterations": log.scf_converged_after if state == "converged" else log.scf_steps,
        "n_kpoints": log.n_kpoints,
        "E_total_eV": log.total_energy,
        "E_fermi_eV": log.fermi_energy,
        "final_dDmax": log.final_ddmax,
        "final_dHmax_eV": log.final_dhmax,
        "siesta_elapsed_s": log.elapsed,
        "dm_from_file": log.dm_from_file,
    }
    if state != "converged":
        return record
    hs_file = find_hs_file(folder / f"{name}.fdf")
    data = read_hs(hs_file, validate=False)
    symbols = data.basis.symbols
    elements = [symbols[s] for s in data.species]
    counts = {e: elements.count(e) for e in dict.fromkeys(elements)}
    mass = sum(float(atomic_masses[atomic_numbers[e]]) * c for e, c in counts.items() if e in atomic_numbers)
    volume = abs(float(np.linalg.det(data.cell)))
    record.update(
        natoms=data.n_atoms,
        formula="".join(f"{e}{c}" for e, c in counts.items()),
        cell_A=np.linalg.norm(data.cell, axis=1).round(6).tolist(),
        density_g_cm3=round(mass * _AMU_G / (volume * 1e-24), 4),
        no=data.n_orbitals,
        nnz=data.nnz,
        nsc=data.nsc.tolist(),
        tshs_bytes=hs_file.stat().st_size,
        **_gamma(data, log.electrons),
    )
    return record
