"""Ship a trained checkpoint as a bundled model: float16 parameters, and its measured accuracy.

    python scripts/export_pretrained.py runs/long/rich-h0/last.pt --store runs/abn-all2.h5 \
        [--name abn-dzp] [--cells abn_8_7 abn_16_5 abn_24_3 abn_32_2 abn_64_0] \
        [--training-cells abn_16_0 abn_24_0 abn_32_0]

Evaluates the checkpoint as trained (float32) and as it will ship (parameters stored in float16,
loaded back into float32) on the held-out cells and on a few training cells, with the metrics of
``hforge evaluate``: the headline, the full-S Γ spectrum after removing the best c·S (ghost states
outside DFT's spectrum, the ±2 eV window paired from the HOMO and its state counts, the gap error)
and the per-atom onsite-energy RMSE (held-out over training cells: the memorisation ratio); the H
MAE raw and after c·S; the Γ eigenvalues in the reference S's canonical basis at thresholds 1e-2
and 1e-3 (secondary).  Writes ``hforge/infer/pretrained/<name>.pt`` and ``<name>.json`` (both
evaluations, the memorisation ratios, the source checkpoint, its training budget).
``tests/test_pretrained.py`` guards the shipped numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hforge.datasets import load
from hforge.files import write_json
from hforge.infer import PRETRAINED_DIR
from hforge.models import load_checkpoint, save_model
from hforge.train.evaluation import evaluate_structures

KEYS = ("ghosts_low", "ghosts_high", "eig_window_fullS_meV", "window_states_pred", "window_states_ref",
        "gap_error_fullS_meV", "onsite_atom_rmse_meV", "h_mae_meV", "h_mae_shifted_meV", "h_onsite_meV",
        "h_hopping_meV", "eig_window_refS_1e-2_meV", "eig_window_refS_1e-3_meV", "gap_error_refS_1e-2_meV")


def evaluate(model, references) -> dict:
    return {e["name"]: {k: e["summary"].get(k) for k in KEYS} for e in evaluate_structures(model, references).structures}


def memorisation(evaluation: dict, held_out: list[str], training: list[str]) -> dict:
    """Mean per-atom onsite RMSE of the held-out cells of at least 16 atoms over that of the training cells (8-atom
    cells are no transfer test: the shared ones are one ordered network)."""
    held = [evaluation[n]["onsite_atom_rmse_meV"] for n in held_out if n in evaluation and not n.startswith("abn_8_")]
    train = [evaluation[n]["onsite_atom_rmse_meV"] for n in training]
    mean_held, mean_train = sum(held) / len(held), sum(train) / len(train)
    return {"held_out_rmse_meV": mean_held, "training_rmse_meV": mean_train, "ratio": mean_held / mean_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", default="abn-dzp")
    parser.add_argument("--cells", nargs="+", default=["abn_8_7", "abn_16_5", "abn_24_3", "abn_32_2", "abn_64_0"])
    parser.add_argument("--training-cells", nargs="+", default=["abn_16_0", "abn_24_0", "abn_32_0"])
    args = parser.parse_args()
    store = load(args.store).store
    names = args.cells + args.training_cells
    references = [store.read(n) for n in names]
    for reference, name in zip(references, names):
        reference.source = name
    model, payload = load_checkpoint(args.checkpoint)
    training = payload.get("extra", {}).get("training", {})
    start = time.perf_counter()
    full = evaluate(model, references)
    out = PRETRAINED_DIR / f"{args.name}.pt"
    extra = {"trained_with": {
        "config": training.get("config"), "step": training.get("step"), "train_time_s": training.get("train_time_s"),
        "structures_seen": training.get("structures_seen"), "split": payload.get("extra", {}).get("split"),
        "source_checkpoint": str(args.checkpoint), "git_commit": payload.get("git_commit"),
    }, "parameter_dtype": "float16"}
    if "domain" in payload.get("extra", {}):  # trained by hforge.train.Trainer: the predictor warns outside it
        extra["domain"] = payload["extra"]["domain"]
    save_model(model, out, extra=extra, parameter_dtype=torch.float16)
    shipped_model, _ = load_checkpoint(out)
    shipped = evaluate(shipped_model, references)
    write_json(out.with_suffix(".json"), {
        "checkpoint": out.name, "size_bytes": out.stat().st_size, "parameters": sum(p.numel() for p in model.parameters()),
        "shipped": shipped, "float32": full, "training_cells": args.training_cells,
        "memorisation": {"shipped": memorisation(shipped, args.cells, args.training_cells),
                         "float32": memorisation(full, args.cells, args.training_cells)},
        "trained_with": extra["trained_with"], "evaluation_s": time.perf_counter() - start,
    })
    print(f"{out}: {out.stat().st_size / 2**20:.2f} MiB")
    print(f"{'cell':10s} {'key':28s} {'float32':>10s} {'shipped':>10s} {'ratio':>8s}")
    for name in names:
        for key in KEYS:
            a, b = full[name][key], shipped[name][key]
            ratio = b / a if a else float("nan")
            print(f"{name:10s} {key:28s} {a:10.4g} {b:10.4g} {ratio:8.4f}")
    print(f"memorisation ratio (held-out / training per-atom onsite RMSE): "
          f"{memorisation(shipped, args.cells, args.training_cells)['ratio']:.2f} (shipped)")


if __name__ == "__main__":
    main()
