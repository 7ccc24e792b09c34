"""The numbers of a SIESTA log (``<label>.out``): version, electrons, k-points, SCF history, energies, cost.

Read from the lines SIESTA (4.1 and later) prints; a number the log lacks is None.  Whether the
run finished and converged is :func:`hforge.io.runs.log_failure`'s business; this module only
reads what the log reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SiestaLog", "read_siesta_log"]

_FLOAT = r"([-+]?\d+(?:\.\d*)?(?:[eEdD][-+]?\d+)?)"


def _last(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    return float(found[-1].replace("D", "e").replace("d", "e")) if found else None


@dataclass(frozen=True)
class SiestaLog:
    """What one SIESTA log reports.

    Attributes:
        version: ``Siesta Version`` line.
        electrons: total number of (valence) electrons.
        n_kpoints: k-points of the SCF.
        scf_steps: ``scf:`` lines printed (the SCF steps this run made, also when it was killed).
        scf_converged_after: iterations of ``SCF cycle converged after N iterations``.
        dm_from_file: whether SIESTA started from a density matrix read from file
            (``Attempting to read DM from file... Succeeded``).
        total_energy: final total energy, eV.
        fermi_energy: final Fermi energy, eV.
        final_ddmax: last ``max |DM_out - DM_in|``.
        final_dhmax: last ``max |H_out - H_in|``, eV.
        elapsed: ``Elapsed wall time``, s (of this run: an attempt restarted from a saved density
            matrix counts only its own time).
        cpu_time: the CPU time of the whole run (the ``siesta`` row of the timer's table of CPU
            execution times), s.
        processes: MPI processes (``* Running in serial mode``: 1; ``* Running on N nodes in parallel``: N).
    """

    version: str | None
    electrons: float | None
    n_kpoints: int | None
    scf_steps: int
    scf_converged_after: int | None
    dm_from_file: bool
    total_energy: float | None
    fermi_energy: float | None
    final_ddmax: float | None
    final_dhmax: float | None
    elapsed: float | None
    cpu_time: float | None
    processes: int | None


def read_siesta_log(text: str) -> SiestaLog:
    """The numbers of a SIESTA log's text (:class:`SiestaLog`)."""
    version = re.search(r"^Siesta Version\s*:\s*(\S+)", text, flags=re.MULTILINE)
    kpoints = _last(r"k-grid: Number of k-points\s*=\s*(\d+)", text)
    converged = _last(r"SCF cycle converged after\s+(\d+)\s+iterations", text)
    parallel = _last(r"^\* Running on\s+(\d+)\s+nodes in parallel", text)
    serial = re.search(r"^\* Running in serial mode", text, flags=re.MULTILINE) is not None
    return SiestaLog(
        version=version.group(1) if version else None,
        electrons=_last(rf"Total number of electrons:\s*{_FLOAT}", text),
        n_kpoints=None if kpoints is None else int(kpoints),
        scf_steps=len(re.findall(r"^\s*scf:\s+\d+", text, flags=re.MULTILINE)),
        scf_converged_after=None if converged is None else int(converged),
        dm_from_file=re.search(r"Attempting to read DM from file\.\.\.\s*Succeeded", text) is not None,
        total_energy=_last(rf"^siesta:\s+Total =\s*{_FLOAT}", text),
        fermi_energy=_last(rf"^siesta:\s+Fermi =\s*{_FLOAT}", text),
        final_ddmax=_last(rf"max \|DM_out - DM_in\|\s*:\s*{_FLOAT}", text),
        final_dhmax=_last(rf"max \|H_out - H_in\|\s*\(eV\)\s*:\s*{_FLOAT}", text),
        elapsed=_last(rf"Elapsed wall time \(sec\)\s*=\s*{_FLOAT}", text),
        cpu_time=_last(rf"^siesta\s+1\s+{_FLOAT}", text),
        processes=int(parallel) if parallel is not None else (1 if serial else None),
    )
