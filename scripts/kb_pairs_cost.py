"""What leaving out H's Kleinman-Bylander blocks costs: the numbers behind the models' pair cut-off.

The models predict the blocks of the pairs within ``r_i + r_j`` (the blocks of S).  SIESTA's H
also couples pairs up to ``r_i + r_j + 2 r_KB`` apart through a third atom's KB projector.  This
script reads a SIESTA run (default: the 64-atom aBN validation cell of ``../shared/abn``), drops
those blocks from the exact H, and reports

* how many blocks and entries they are, their distances and sizes;
* their contribution to the H MAE over all entries of the file (a model that predicts every other
  block exactly has this MAE);
* the change of the Γ-point eigenvalues, raw (generalized problem) and after canonical
  orthogonalization (eigenvectors of S below ``--threshold`` dropped), over the occupied states
  and in a window of ±2 eV around the gap centre.

    python scripts/kb_pairs_cost.py [RUN_FILE] [--threshold 1e-3]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.linalg

from hforge.graph import GraphBuilder, uncovered_pairs
from hforge.io import read_hs


def gamma_eigenvalues(h: np.ndarray, s: np.ndarray, threshold: float | None) -> np.ndarray:
    """Generalized eigenvalues of ``(H, S)``; with ``threshold`` after dropping S's eigenvectors below it."""
    if threshold is None:
        return scipy.linalg.eigh(h, s, eigvals_only=True)
    w, u = np.linalg.eigh(s)
    keep = w > threshold
    x = u[:, keep] / np.sqrt(w[keep])
    return np.linalg.eigvalsh(x.T @ h @ x)


def measure(path: Path, threshold: float) -> dict:
    data = read_hs(path)
    graph = GraphBuilder(data.basis, r_max=1.0)(data, targets=False)
    dropped = uncovered_pairs(data, graph.pair_index.numpy(), graph.pair_shift.numpy())
    h = data.h_unshifted[0]
    in_dropped = np.isin(data.value_pair, dropped) & data.mask
    distances = data.pair_distances()[dropped]
    cutoffs = data.basis.pair_cutoffs()[data.species[data.edge_index[0, dropped]], data.species[data.edge_index[1, dropped]]]
    truncated = h.copy()
    truncated[in_dropped] = 0.0
    h_exact = data.matrix_at_k(which="h_unshifted")
    s_exact = data.matrix_at_k(which="s")
    h_trunc = replace(data, h=(truncated - data.fermi_level * data.s)[None]).matrix_at_k(which="h_unshifted")
    electrons = data.basis.valence_charges[data.species].sum()  # Z_valence of the .ion files
    if not np.isfinite(electrons):
        raise SystemExit(f"{path}: the basis does not record every species' valence charge")
    n_occ = int(round(electrons)) // 2
    result = {
        "file": str(path),
        "atoms": data.n_atoms,
        "pairs_in_file": data.n_pairs,
        "kb_pairs": int(len(dropped)),
        "kb_pair_distance_A": [float(distances.min()), float(distances.max())],
        "kb_pair_beyond_ri_rj_A": [float((distances - cutoffs).min()), float((distances - cutoffs).max())],
        "kb_entries": int(in_dropped.sum()),
        "kb_fraction_of_nnz": float(in_dropped.sum() / data.mask.sum()),
        "kb_max_abs_H_meV": float(np.abs(h[in_dropped]).max() * 1e3),
        "kb_mean_abs_H_meV": float(np.abs(h[in_dropped]).mean() * 1e3),
        "h_mae_contribution_meV": float(np.abs(h[in_dropped]).sum() / data.mask.sum() * 1e3),
        "occupied_states": n_occ,
    }
    for label, thr in (("raw", None), ("orthogonalized", threshold)):
        exact = gamma_eigenvalues(h_exact, s_exact, thr)
        approx = gamma_eigenvalues(h_trunc, s_exact, thr)
        centre = 0.5 * (exact[n_occ - 1] + exact[n_occ])
        window = np.abs(exact - centre) < 2.0
        diff = np.abs(approx - exact) * 1e3
        result[f"eig_{label}"] = {
            "gap_eV": float(exact[n_occ] - exact[n_occ - 1]),
            "states_in_window": int(window.sum()),
            "window_mae_meV": float(diff[window].mean()),
            "window_max_meV": float(diff[window].max()),
            "occupied_mae_meV": float(diff[:n_occ].mean()),
            "occupied_max_meV": float(diff[:n_occ].max()),
        }
    return result


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("HFORGE_SHARED", repo.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=shared / "abn/runs/abn_64_0/abn_64_0.TSHS")
    parser.add_argument("--threshold", type=float, default=1e-3, help="S eigenvalues dropped (canonical orthogonalization)")
    args = parser.parse_args()
    print(json.dumps(measure(args.path, args.threshold), indent=2))


if __name__ == "__main__":
    main()
