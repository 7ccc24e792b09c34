"""A stand-in for SIESTA in the campaign tests (CI has no SIESTA): ``python fake_siesta.py < label.fdf``.

It behaves as the campaign engine sees SIESTA: reads the fdf on stdin, makes ``FAKE_SIESTA_STEPS`` SCF
steps of ``FAKE_SIESTA_DELAY`` s each, writes ``<label>.DM`` in SIESTA's Fortran layout after every
step (record by record, so a kill can truncate it), restarts from a complete ``<label>.DM`` (and
stops with a Fortran-like error on a truncated one, as SIESTA does), and at the end copies
``FAKE_SIESTA_TSHS`` to ``<label>.TSHS`` and prints the lines of a converged log.  Runs named in
``FAKE_SIESTA_UNCONVERGED`` end unconverged; those in ``FAKE_SIESTA_FAIL`` (``name:times``) stop
with ABNORMAL_TERMINATION on their first ``times`` attempts (counted in ``<label>.fake_failures``).  Every
call appends its label to ``FAKE_SIESTA_CALLS`` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import time
from pathlib import Path


def record(f, payload: bytes) -> None:
    f.write(struct.pack("<i", len(payload)) + payload + struct.pack("<i", len(payload)))
    f.flush()


def write_dm(path: Path, step: int) -> None:
    """A 2-orbital, 1-spin density matrix whose values are the SCF step reached."""
    with open(path, "wb") as f:
        record(f, struct.pack("<5i", 2, 1, 1, 1, 1))
        record(f, struct.pack("<2i", 1, 1))
        for column in (1, 2):
            record(f, struct.pack("<i", column))
            time.sleep(0.002)
        for _ in (1, 2):
            record(f, struct.pack("<d", float(step)))
            time.sleep(0.002)


def read_dm(path: Path) -> int:
    data = path.read_bytes()
    if len(data) != 6 * 8 + 20 + 8 + 4 + 4 + 8 + 8:
        print(f"At line 1171 of file m_io_s.F90 (unit = 12, file = '{path.name}')")
        print("Fortran runtime error: Unformatted file structure has been corrupted")
        sys.exit(2)
    return int(struct.unpack("<d", data[-12:-4])[0])


def main() -> None:
    fdf = sys.stdin.read()
    label = re.search(r"^SystemLabel\s+(\S+)", fdf, flags=re.MULTILINE).group(1)
    if os.environ.get("FAKE_SIESTA_CALLS"):
        with open(os.environ["FAKE_SIESTA_CALLS"], "a") as calls:
            calls.write(label + "\n")
    steps = int(os.environ.get("FAKE_SIESTA_STEPS", "8"))
    delay = float(os.environ.get("FAKE_SIESTA_DELAY", "0.1"))
    print("Siesta Version  : fake-1.0")
    print("Total number of electrons:    32.000000")
    print("siesta: k-grid: Number of k-points =        32")
    dm = Path(f"{label}.DM")
    start = 0
    if "DM.UseSaveDM T" in fdf and dm.exists():
        print("Attempting to read DM from file... ", end="")
        start = read_dm(dm)
        print("Succeeded...")
    failures = dict(item.split(":") for item in os.environ.get("FAKE_SIESTA_FAIL", "").split(",") if item)
    counter = Path(f"{label}.fake_failures")
    failed = int(counter.read_text()) if counter.exists() else 0
    if failed < int(failures.get(label, 0)):
        counter.write_text(str(failed + 1))
        print("ABNORMAL_TERMINATION")
        sys.exit(1)
    for step in range(start + 1, steps + 1):
        time.sleep(delay)
        print(f"   scf: {step - start:4d}    -1447.857706    -1447.857706    -1447.857706  0.000002 -5.683947  0.000013",
              flush=True)
        write_dm(dm, step)
    if label in os.environ.get("FAKE_SIESTA_UNCONVERGED", "").split(","):
        print("SCF_NOT_CONV: SCF did not converge in maximum number of steps.")
        print("Job completed")
        return
    shutil.copyfile(os.environ["FAKE_SIESTA_TSHS"], f"{label}.TSHS")
    print(f"SCF cycle converged after {steps - start} iterations")
    print("max |DM_out - DM_in|         :     0.0000021740")
    print("max |H_out - H_in|      (eV) :     0.0000134888")
    print("siesta:         Total =   -1447.857706")
    print("siesta:         Fermi =      -5.683947")
    print(f"timer: Elapsed wall time (sec) =      {delay * (steps - start):.3f}")
    print("Job completed")


if __name__ == "__main__":
    main()
