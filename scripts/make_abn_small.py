"""Regenerate the bundled sample ``hforge/datasets/data/abn-small.h5`` from ``../shared/abn``.

The sample: two 8-atom and one 16-atom training cells and one 24-atom validation cell,
converted by ``hforge.io.convert`` into a gzip-compressed float32 store of the canonical half of
the pairs (3.6 MiB; the 64-atom cell alone would take 4.7 MB, and float32 H/S compress by only
~20 %, so larger cells stay in ``../shared``).

    python scripts/make_abn_small.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from hforge.datasets import bundled_path
from hforge.io import convert

#: The runs of the sample (names of folders of shared/abn/runs) and their splits.
SPLITS = {"abn_8_0": "train", "abn_8_1": "train", "abn_16_0": "train", "abn_24_0": "val"}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("HFORGE_SHARED", repo.parent / "shared")))
    parser.add_argument("--out", type=Path, default=bundled_path("abn-small"))
    args = parser.parse_args()
    abn = args.shared / "abn"
    report = convert(
        [abn / "runs" / name for name in SPLITS],
        args.out,
        basis=abn / "basis",
        dtype=np.float32,
        half=True,
        compression="gzip",
        splits=SPLITS,
        relative_to=args.shared,
    )
    if report.skipped:
        raise SystemExit(f"runs skipped: {report.skipped}")
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.2f} MiB, {report.n_structures} structures")


if __name__ == "__main__":
    main()
