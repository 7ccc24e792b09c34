"""Regenerate the bundled sample ``hforge/datasets/data/abn-small.h5`` from ``../shared/abn``.

The sample: two 8-atom, two 16-atom and one 24-atom training cells and the 64-atom validation
cell, converted by ``hforge.io.convert`` into a float32 store of the canonical half of the pairs.

    python scripts/make_abn_small.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from hforge.datasets import bundled_path
from hforge.io import SplitRule, convert

#: The runs of the sample (names of folders of shared/abn/runs).
RUNS = ("abn_8_0", "abn_8_1", "abn_16_0", "abn_16_1", "abn_24_0", "abn_64_0")


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("HFORGE_SHARED", repo.parent / "shared")))
    parser.add_argument("--out", type=Path, default=bundled_path("abn-small"))
    args = parser.parse_args()
    abn = args.shared / "abn"
    report = convert(
        [abn / "runs" / name for name in RUNS],
        args.out,
        basis=abn / "basis",
        dtype=np.float32,
        half=True,
        split_rule=SplitRule(train_max_atoms=32, val_max_atoms=64),
        relative_to=args.shared,
    )
    if report.skipped:
        raise SystemExit(f"runs skipped: {report.skipped}")
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB, {report.n_structures} structures")


if __name__ == "__main__":
    main()
