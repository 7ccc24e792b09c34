"""How much of SIESTA's H the physical baseline H0 carries, on the shared aBN cells.

For every cell: H (unshifted, eV, the file's stored entries), H0 = T + V_KB + two-centre V_NA
(:func:`hforge.ops.two_centre.baseline_blocks`) and its parts, each compared after removing the
best uniform shift ``c S`` (SIESTA's energy zero is arbitrary, and H0 lacks the exchange-correlation
potential, whose bulk is close to a constant times S).  Per block class (onsite / hopping x
species pair x shell pair) the share of H's variance that the residual keeps.

    python scripts/baseline_share.py [--shared ../shared] [--cells abn_8_0 abn_64_0] [--plot out.png]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from hforge.basis.radial import ANG_TO_BOHR, RY_TO_EV
from hforge.io import read_hs
from hforge.io.statistics import block_type_shape
from hforge.io import value_block_types
from hforge.ops.two_centre import baseline_blocks, kb_blocks, program_blocks, two_centre_descriptor


def best_shift(residual: np.ndarray, s: np.ndarray) -> float:
    return float(residual @ s / (s @ s))


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("HFORGE_SHARED", repo.parent / "shared")))
    parser.add_argument("--cells", nargs="+", default=["abn_8_0", "abn_16_1", "abn_24_1", "abn_32_1", "abn_64_0"])
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    print("| cell | H std (after c S) eV | H - T - V_KB (after c S) | H - H0 (after c S) | MAE H - H0 (after c S) meV | share of variance left |")
    print("|---|---:|---:|---:|---:|---:|")
    classes: dict[str, list[float]] = {}
    for name in args.cells:
        data = read_hs(args.shared / "abn" / "runs" / name / f"{name}.TSHS")
        m = data.mask
        h = (data.h[0] + data.fermi_level * data.s)[m]
        s = data.s[m]
        geometry = (data.basis, data.species, data.positions, data.cell, data.pbc, data.edge_index, data.cell_shift)
        h0 = baseline_blocks(*geometry, block_ptr=data.block_ptr)[m]
        desc = two_centre_descriptor(data.basis)
        i, j = data.edge_index
        vectors = (data.positions[j] + data.cell_shift @ data.cell - data.positions[i]) * ANG_TO_BOHR
        types = data.species[i] * 2 + data.species[j]
        t = program_blocks(desc.program("kinetic"), desc.tables, types, vectors, data.block_ptr) * RY_TO_EV
        kb = kb_blocks(*geometry, data.block_ptr)
        tk = (t + kb)[m]

        def spread(x: np.ndarray) -> float:
            return float(np.std(x - best_shift(x, s) * s))

        res = h - h0
        res_shifted = res - best_shift(res, s) * s
        print(
            f"| {name} | {spread(h):.3f} | {spread(h - tk):.3f} | {spread(res):.3f} | {1e3 * np.abs(res_shifted).mean():.1f} | "
            f"{spread(res) ** 2 / spread(h) ** 2:.3f} |"
        )
        # per block class (onsite/hopping x species pair x shell pair)
        bins = value_block_types(data.basis, data.species, data.edge_index, data.cell_shift, data.block_ptr)[m]
        h_shifted = h - best_shift(h, s) * s
        for b in np.unique(bins):
            sel = bins == b
            if sel.sum() < 50:
                continue
            classes.setdefault(_label(data, int(b)), []).append(float(res_shifted[sel].var() / max(h_shifted[sel].var(), 1e-30)))
    print("\nshare of each block class's variance left by H0 (mean over cells), largest first:")
    for label, shares in sorted(classes.items(), key=lambda kv: -np.mean(kv[1]))[:30]:
        print(f"  {label:32s} {np.mean(shares):.3f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        items = sorted(classes.items(), key=lambda kv: kv[0])
        fig, ax = plt.subplots(figsize=(12, 4))
        ax.bar(range(len(items)), [np.mean(v) for _, v in items])
        ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=90, fontsize=6)
        ax.set_ylabel("var(H - H0) / var(H), after c S")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=150)


def _label(data, b: int) -> str:
    """``onsite|hopping Si-Sj a-b`` of a block type index (hforge.io.statistics' layout)."""
    _, n_sp, _, n_sh, _ = block_type_shape(data.basis)
    onsite, rest = divmod(b, n_sp * n_sp * n_sh * n_sh)
    pair, shells = divmod(rest, n_sh * n_sh)
    si, sj = divmod(pair, n_sp)
    a, c = divmod(shells, n_sh)
    names = [[s.name for s in sp.shells] for sp in data.basis]
    return f"{'onsite' if onsite else 'hopping'} {data.basis.symbols[si]}-{data.basis.symbols[sj]} {names[si][a]}-{names[sj][c]}"


if __name__ == "__main__":
    main()
