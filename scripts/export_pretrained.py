"""Ship a trained checkpoint as a bundled model: float16 parameters, and its measured accuracy.

    python scripts/export_pretrained.py runs/long/rich-h0/last.pt --store runs/abn-all2.h5 \
        [--name abn-dzp] [--cells abn_8_7 abn_16_5 abn_24_3 abn_32_2 abn_64_0]

Evaluates the checkpoint as trained (float32) and as it will ship (parameters stored in float16,
loaded back into float32) on the held-out cells, with the metrics of ``hforge evaluate`` (H MAE raw
and after the best c·S shift, Γ eigenvalues in the reference S's canonical basis at thresholds 1e-2
and 1e-3), and writes ``hforge/infer/pretrained/<name>.pt`` and ``<name>.json`` (both evaluations,
the source checkpoint, its training budget). ``tests/test_pretrained.py`` guards the shipped numbers.
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

KEYS = ("h_mae_meV", "h_mae_shifted_meV", "h_onsite_meV", "h_hopping_meV", "eig_window_refS_1e-2_meV",
        "eig_window_refS_1e-3_meV", "gap_error_refS_1e-2_meV")


def evaluate(model, references) -> dict:
    return {e["name"]: {k: e["summary"].get(k) for k in KEYS} for e in evaluate_structures(model, references).structures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", default="abn-dzp")
    parser.add_argument("--cells", nargs="+", default=["abn_8_7", "abn_16_5", "abn_24_3", "abn_32_2", "abn_64_0"])
    args = parser.parse_args()
    store = load(args.store).store
    references = [store.read(n) for n in args.cells]
    for reference, name in zip(references, args.cells):
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
        "shipped": shipped, "float32": full, "trained_with": extra["trained_with"],
        "evaluation_s": time.perf_counter() - start,
    })
    print(f"{out}: {out.stat().st_size / 2**20:.2f} MiB")
    print(f"{'cell':10s} {'key':28s} {'float32':>10s} {'shipped':>10s} {'ratio':>8s}")
    for name in args.cells:
        for key in KEYS:
            a, b = full[name][key], shipped[name][key]
            ratio = b / a if a else float("nan")
            print(f"{name:10s} {key:28s} {a:10.4g} {b:10.4g} {ratio:8.4f}")


if __name__ == "__main__":
    main()
