"""What float32 output changes in H, S and the full-S spectrum, against float64, on real aBN cells.

    python scripts/float32_output.py --model /path/to/checkpoint.pt [--shared ../shared]
        [--cells abn_32_2 abn_64_0] [--out benchmarks/results/float32_output/results.json]

Two comparisons per cell, at Γ, the full-S spectrum (``H c = E S c`` in the whole basis, each side
with its own S, dense LAPACK in float64):

* *storage*: SIESTA's own H and S (the TSHS, float64) against the same matrices rounded to float32
  (what a float32 output keeps of exact values);
* *prediction*: the model's prediction with ``dtype=float32`` (the new default) against
  ``dtype=float64`` (``Predictor.predict``, same process, same threads).

Reported: the largest |ΔH| (eV) and |ΔS|, the largest |ΔE| over every state and over the states
within ±2 eV of the gap centre (meV), the HOMO-LUMO gap change (meV), the states more than 1 eV
outside SIESTA's spectrum in each, and S(Γ)'s smallest eigenvalue in each.  Writes the JSON and a
markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import scipy.linalg as sla

import hforge
from hforge.files import atomic_write, write_json
from hforge.io import read_hs
from hforge.metrics import n_occupied_states

REPO = Path(__file__).resolve().parents[1]


def gamma(hamiltonian, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Dense Hermitian ``(H(Γ), S(Γ))`` (float64) of a sisl Hamiltonian whose values were stored in ``dtype``."""
    hamiltonian = hamiltonian.copy(dtype=dtype)
    h = hamiltonian.Hk(format="array", dtype=np.float64)
    s = hamiltonian.Sk(format="array", dtype=np.float64)
    return 0.5 * (h + h.T), 0.5 * (s + s.T)


def spectrum_change(h64, s64, h32, s32, n_occupied: int, dft: np.ndarray) -> dict:
    """The full-S spectra of both pairs of matrices and what differs between them."""
    e64, e32 = sla.eigh(h64, s64, eigvals_only=True), sla.eigh(h32, s32, eigvals_only=True)
    centre = 0.5 * (e64[n_occupied - 1] + e64[n_occupied])
    window = np.abs(e64 - centre) <= 2.0
    low, high = dft.min() - 1.0, dft.max() + 1.0
    return {
        "max_dH_eV": float(np.abs(h32 - h64).max()),
        "max_dS": float(np.abs(s32 - s64).max()),
        "max_dE_all_meV": float(1e3 * np.abs(e32 - e64).max()),
        "max_dE_window_meV": float(1e3 * np.abs(e32 - e64)[window].max()),
        "states_in_window": int(window.sum()),
        "gap_change_meV": float(1e3 * ((e32[n_occupied] - e32[n_occupied - 1]) - (e64[n_occupied] - e64[n_occupied - 1]))),
        "outside_dft_float64": int(((e64 < low) | (e64 > high)).sum()),
        "outside_dft_float32": int(((e32 < low) | (e32 > high)).sum()),
        "min_S_eigenvalue_float64": float(np.linalg.eigvalsh(s64)[0]),
        "min_S_eigenvalue_float32": float(np.linalg.eigvalsh(s32)[0]),
    }


def markdown(result: dict) -> str:
    lines = [
        "# float32 against float64 output (Γ, full S)",
        "",
        f"Made by `scripts/float32_output.py` at commit {result['commit']}; model `{result['model']}` (sha256 "
        f"{result['model_sha256'][:12]}).",
        "storage: SIESTA's H and S rounded to float32; prediction: `predict(dtype=float32)` against `dtype=float64`.",
        "Energies in meV (H in eV); 'outside': states more than 1 eV outside SIESTA's spectrum, float64 / float32.",
        "",
        "| cell | what | max abs dH (eV) | max abs dS | max abs dE, all states | max abs dE, +-2 eV (states) | gap change "
        "| outside | S min. eigenvalue 64 / 32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in result["cells"].items():
        for what in ("storage", "prediction"):
            c = cell[what]
            lines.append(
                f"| {name} | {what} | {c['max_dH_eV']:.1e} | {c['max_dS']:.1e} | {c['max_dE_all_meV']:.2e} | "
                f"{c['max_dE_window_meV']:.2e} ({c['states_in_window']}) | {c['gap_change_meV']:.1e} | "
                f"{c['outside_dft_float64']} / {c['outside_dft_float32']} | "
                f"{c['min_S_eigenvalue_float64']:.3e} / {c['min_S_eigenvalue_float32']:.3e} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint or bundled name")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cells", nargs="+", default=["abn_32_2", "abn_64_0"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "float32_output" / "results.json")
    args = parser.parse_args()
    predictor = hforge.load(args.model, device="cpu")
    path = Path(args.model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "bundled"
    git = ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    result = {"model": str(args.model), "model_sha256": digest, "commit": commit, "cells": {}}
    for name in args.cells:
        data = read_hs(next((args.shared / "abn" / "runs" / name).glob(f"{name}.TSHS*")))
        dft = data.to_sisl()
        n_occupied = n_occupied_states(data.basis, data.species)
        h64, s64 = gamma(dft, np.float64)
        h32, s32 = gamma(dft, np.float32)
        dft_spectrum = sla.eigh(h64, s64, eigvals_only=True)
        storage = spectrum_change(h64, s64, h32, s32, n_occupied, dft_spectrum)
        predicted = {dtype: gamma(predictor.predict(data, dtype=dtype, threads=1), dtype) for dtype in (np.float64, np.float32)}
        prediction = spectrum_change(*predicted[np.float64], *predicted[np.float32], n_occupied, dft_spectrum)
        result["cells"][name] = {"atoms": data.n_atoms, "orbitals": data.n_orbitals, "storage": storage, "prediction": prediction}
        print(name, storage, prediction, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
