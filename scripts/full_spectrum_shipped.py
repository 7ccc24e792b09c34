"""The full-S spectrum a user gets from a bundled model, on held-out and training cells of the shared aBN data.

    python scripts/full_spectrum_shipped.py [--model abn-dzp] [--shared ../shared]
        [--held-out abn_16_5 abn_24_3 abn_32_2 abn_64_0] [--training abn_16_0 abn_24_0 abn_32_0]
        [--out benchmarks/results/full_spectrum/abn-dzp.json]

Evaluates ``hforge.load(model)``'s network with the metrics of ``hforge evaluate`` (Γ; the
headline: the raw generalized problem H c = E S c with each side's own S after removing the best
uniform c·S, ghost states more than 1 eV outside DFT's spectrum, the ±2 eV window around DFT's gap
centre paired from the HOMO, the gap error; the H MAEs; the per-atom onsite-energy RMSE; the
reference S's canonical basis at threshold 1e-2 as the secondary view).  Every cell is also
predicted the way a user does it (``Predictor.predict``, float64, sisl Hamiltonian) and its full-S
spectrum compared again (``user_route``).  The memorisation ratio is the mean per-atom onsite RMSE
of the held-out cells over that of the training cells.  Writes the JSON and a markdown table
beside it (``.md``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import hforge
from hforge.files import atomic_write, write_json
from hforge.io import HSData, read_hs
from hforge.metrics import compare_full_spectra
from hforge.train.evaluation import evaluate_structures

REPO = Path(__file__).resolve().parents[1]
KEYS = ("ghosts_low", "ghosts_high", "eig_window_fullS_meV", "window_states_pred", "window_states_ref",
        "gap_error_fullS_meV", "band_energy_error_fullS_meV_per_atom", "dos_distance_fullS_meV", "h_mae_meV",
        "h_mae_shifted_meV", "h_onsite_meV", "h_onsite_shifted_meV", "onsite_atom_rmse_meV", "onsite_atom_mae_meV",
        "eig_window_refS_1e-2_meV", "gap_error_refS_1e-2_meV")


def read_cell(shared: Path, name: str) -> HSData:
    for folder in ("abn", "abn-extra"):
        run = shared / folder / "runs" / name
        if run.is_dir():
            tshs = next(run.glob(f"{name}.TSHS*"))
            return read_hs(tshs)
    raise SystemExit(f"no run folder {name} in {shared}/abn or {shared}/abn-extra")


def markdown(result: dict) -> str:
    lines = [
        f"# Full-S spectrum of `{result['model']}` (Γ)",
        "",
        "Made by `scripts/full_spectrum_shipped.py`. Full S: H c = E S c in the whole basis, each side with its own",
        "(exact) S, after removing the best uniform c·S; ghosts: predicted states more than 1 eV below / above DFT's",
        "spectrum; window: DFT's states within ±2 eV of its gap centre, paired from the HOMO; energies in meV.",
        "",
        "| cell | atoms | role | ghosts below / above | window MAE | states in window ML / DFT | gap error | H MAE "
        "| onsite MAE | per-atom onsite RMSE | window MAE, ref. S 1e-2 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in result["cells"].items():
        s = cell["summary"]
        lines.append(
            f"| {name} | {cell['n_atoms']} | {cell['role']} | {s['ghosts_low']} / {s['ghosts_high']} "
            f"| {s['eig_window_fullS_meV']:.0f} | {s['window_states_pred']} / {s['window_states_ref']} "
            f"| {s['gap_error_fullS_meV']:.0f} | {s['h_mae_meV']:.2f} | {s['h_onsite_meV']:.1f} "
            f"| {s['onsite_atom_rmse_meV']:.1f} | {s['eig_window_refS_1e-2_meV']:.0f} |"
        )
    m = result["memorisation"]
    lines += ["", f"Per-atom onsite RMSE: held-out mean {m['held_out_rmse_meV']:.1f} meV, training mean "
              f"{m['training_rmse_meV']:.1f} meV: memorisation ratio **{m['ratio']:.1f}** (held-out / training).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="abn-dzp")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--held-out", nargs="+", default=["abn_16_5", "abn_24_3", "abn_32_2", "abn_64_0"])
    parser.add_argument("--training", nargs="+", default=["abn_16_0", "abn_24_0", "abn_32_0"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/full_spectrum/abn-dzp.json")
    args = parser.parse_args()
    start = time.perf_counter()
    predictor = hforge.load(args.model, device="cpu")
    roles = {**{n: "held-out" for n in args.held_out}, **{n: "training" for n in args.training}}
    references = {name: read_cell(args.shared, name) for name in roles}
    evaluation = evaluate_structures(predictor.model, list(references.values()), thresholds=(1e-2,))
    cells = {}
    for (name, reference), entry in zip(references.items(), evaluation.structures):
        user = HSData.from_sisl(predictor.predict(reference), reference.basis, species=reference.species)
        user_full = compare_full_spectra(user, reference).errors
        cells[name] = {
            "role": roles[name], "n_atoms": reference.n_atoms, "summary": {k: entry["summary"][k] for k in KEYS},
            "full_spectrum": entry["full_spectrum"], "onsite_per_atom_meV": entry["onsite_energies"]["per_atom_meV"],
            "user_route": {"ghosts_low": user_full.ghosts_low, "ghosts_high": user_full.ghosts_high,
                           "window_mae_meV": user_full.window_mae_meV, "gap_error_meV": user_full.gap_error_meV},
        }
        print(f"{name}: {roles[name]}, ghosts {user_full.ghosts_low}/{user_full.ghosts_high} (user route), "
              f"{cells[name]['summary']['ghosts_low']}/{cells[name]['summary']['ghosts_high']} (evaluate)", flush=True)
    held = float(np.mean([cells[n]["summary"]["onsite_atom_rmse_meV"] for n in args.held_out]))
    train = float(np.mean([cells[n]["summary"]["onsite_atom_rmse_meV"] for n in args.training]))
    result = {
        "model": args.model, "model_source": predictor.source, "kpoints": [[0.0, 0.0, 0.0]],
        "settings": evaluation.settings, "cells": cells,
        "memorisation": {"held_out_rmse_meV": held, "training_rmse_meV": train, "ratio": held / train,
                         "held_out": args.held_out, "training": args.training},
        "wall_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    with atomic_write(args.out.with_suffix(".md"), "w") as fh:
        fh.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
