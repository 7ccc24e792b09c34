"""Size the graph2mat baseline's budget: seconds per training step and the H error of a short run.

1. Timing: one optimizer step (forward, backward, clipping, AdamW, EMA) on the 32-atom batch of
   abn-small's training cells (8 + 8 + 16 atoms), for graph2mat's MatrixMACE
   (:class:`~hforge.train.graph2mat.Graph2MatSettings` defaults) and HForge's default
   equivariant and invariant models (:class:`hforge.train.Trainer`), steps interleaved so that the
   three share the machine's load; median wall and CPU seconds per step after a warm-up.
2. A short run: :func:`~hforge.train.graph2mat.train_graph2mat` on abn-small's training
   cells (``--steps``, 32 atoms a step), validated on its 24-atom cell; the final validation.
   ``--hforge-steps N`` trains HForge's default models (``--hforge-kinds``) on the same cells, batch,
   seed and validation with :class:`hforge.train.Trainer` for comparison.

    python scripts/graph2mat_budget.py [--threads 1] [--timing-steps 10] [--steps 300] [--lr 1e-2]
        [--target h|residual] [--hforge-steps 0] [--hforge-kinds equivariant invariant] [--out DIR] [--no-hforge]

Threads: on a loaded 2-core machine two torch threads spin against each other (a graph2mat step
measured 3-13 CPU s with 2 threads against 0.34 s with 1, at load 11): the default is one thread.
HForge's Trainer resets torch's thread count while it sets up (numba kernels of the baseline fit):
the script sets it again before every timed step and before each run.

Measured (this 2-core machine shared with a training and other tests, load average 6.5-9.5, one
torch thread; 2026-12-04):

* per step, 32 atoms: graph2mat (defaults, 104k parameters) 0.32 CPU s / 0.72 s wall; HForge
  equivariant (80k) 0.21 / 0.48; invariant (128k) 0.08 / 0.20; so graph2mat costs 1.5x HForge's
  equivariant model a step (about 0.25 s on idle cores where that one takes 0.16 s);
* 300 steps, lr 1e-2, batches of 32 atoms, validation abn_24_0 (H MAE, meV; onsite / hopping):
  graph2mat on H 59.1 (502 / 52.1), 239 s; graph2mat on H - H0 16.1 (68.5 / 15.3), 384 s; HForge
  equivariant (its default, H - H0) 22.1 (72.6 / 21.3), 142 s; invariant 19.2 (74.0 / 18.3), 57 s;
  the fitted H0 alone 24.6 (402 / 18.7).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

BATCH = ["abn_8_0", "abn_8_1", "abn_16_0"]


def graph2mat_stepper(settings, seed: int = 0):
    """A closure running one graph2mat training step on the 32-atom batch (as train_graph2mat's loop)."""
    from hforge.datasets import load
    from hforge.train import graph2mat as gm

    store = load("abn-small").store
    processor = gm._processor(store.basis)
    index = {e["name"]: k for k, e in enumerate(store.manifest)}
    items = [gm.to_graph2mat(store.read(index[name]), processor) for name in BATCH]
    avg = sum(int(g.edge_index.shape[1]) for g in items) / sum(int(g.num_nodes) for g in items)
    torch.manual_seed(seed)
    model = gm._build_model(settings, processor, 2.0 * float(processor.basis_table.maxR()), avg)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {n for n, _ in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = gm._batch(items)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.jit.optimized_execution(False):
            loss = gm._loss(settings.loss, model(batch), batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k in names:
                    ema[k].lerp_(v, 0.01)
                else:
                    ema[k].copy_(v)

    return step, sum(p.numel() for p in model.parameters())


def hforge_stepper(kind: str, out: Path):
    from hforge.train.config import load_config
    from hforge.train.trainer import Trainer

    config = load_config({
        "data": {"source": "abn-small", "train": {"names": BATCH}, "val": {"names": ["abn_24_0"]}},
        "model": {"kind": kind},
        "training": {"max_steps": 10**6, "batch_atoms": 32, "device": "cpu"},
    })
    trainer = Trainer(config, out / f"hforge-{kind}", progress=False)
    batch = list(range(len(trainer.items)))
    return (lambda: trainer._train_step(batch)), sum(p.numel() for p in trainer.model.parameters())


def timing(args, out: Path) -> dict:
    from hforge.train.graph2mat import Graph2MatSettings

    steppers = {"graph2mat": graph2mat_stepper(Graph2MatSettings())}
    if not args.no_hforge:
        for kind in ("equivariant", "invariant"):
            steppers[f"hforge {kind}"] = hforge_stepper(kind, out)
    for step, _ in steppers.values():  # warm-up: compilation, first-call overheads
        torch.set_num_threads(args.threads)  # HForge's Trainer (its numba kernels) resets torch's threads
        step()
        step()
    samples = {name: [] for name in steppers}
    loads = []
    for _ in range(args.timing_steps):
        for name, (step, _) in steppers.items():
            torch.set_num_threads(args.threads)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            samples[name].append((time.perf_counter() - t0, time.process_time() - c0))
        loads.append(os.getloadavg()[0])
    rows = {}
    for name, values in samples.items():
        wall, cpu = np.array(values).T
        rows[name] = {
            "wall_s_median": float(np.median(wall)), "cpu_s_median": float(np.median(cpu)),
            "wall_s_min": float(wall.min()), "cpu_s_min": float(cpu.min()), "params": steppers[name][1],
        }
        print(f"{name:22s} wall {np.median(wall):.3f} s/step (min {wall.min():.3f}), CPU {np.median(cpu):.3f} s/step "
              f"(min {cpu.min():.3f}), {steppers[name][1]:,} parameters", flush=True)
    print(f"load average during timing: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)
    return {"rows": rows, "load_average": [min(loads), max(loads)], "threads": torch.get_num_threads(),
            "batch": BATCH, "steps": args.timing_steps}


def short_run(args, out: Path) -> dict:
    from hforge.datasets import load
    from hforge.train.graph2mat import Graph2MatSettings, train_graph2mat

    store = load("abn-small").store
    train = [e["name"] for e in store.manifest if e["split"] == "train"]
    val = [e["name"] for e in store.manifest if e["split"] == "val"]
    settings = Graph2MatSettings(threads=args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    path = train_graph2mat(store, train, val, out / f"run-{args.target}", max_steps=args.steps, batch_atoms=32,
                           lr=args.lr, seed=0, settings=settings, target=args.target, progress=not args.quiet)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val"]["mean"]["h_mae_meV"], r["val"]["mean"]["h_mae_shifted_meV"]) for r in records if "val" in r]
    summary = json.loads((path.parent / "summary.json").read_text())
    final = records[-1]["val"]["mean"] if "val" in records[-1] else {}
    print(f"graph2mat {args.steps} steps ({args.target}, lr {args.lr}): {wall:.0f} s wall "
          f"({summary['throughput']['s_per_step']:.3f} s/step in the loop), load {load_before:.1f}-{os.getloadavg()[0]:.1f}")
    for step, mae, shifted in curve:
        print(f"  step {step:5d}: val H MAE {mae:7.1f} meV, shift removed {shifted:7.1f} meV")
    for key in ("h_onsite_meV", "h_hopping_meV", "eig_window_ortho_meV"):
        if key in final:
            print(f"  final {key}: {final[key]:.1f}")
    return {"train": train, "val": val, "steps": args.steps, "lr": args.lr, "target": args.target, "wall_s": wall,
            "throughput": summary["throughput"], "curve": curve, "final": final, "checkpoint": str(path)}


def hforge_runs(args, out: Path) -> dict:
    from hforge.train.config import load_config
    from hforge.train.trainer import Trainer

    results = {}
    for kind in args.hforge_kinds:
        config = load_config({
            "data": {"source": "abn-small", "train": {"max_atoms": 16}, "val": {"names": ["abn_24_0"]}},
            "model": {"kind": kind},
            "training": {"max_steps": args.hforge_steps, "batch_atoms": 32, "device": "cpu", "seed": 0},
        })
        start = time.perf_counter()
        trainer = Trainer(config, out / f"hforge-run-{kind}", progress=not args.quiet)
        torch.set_num_threads(args.threads)  # the Trainer's set-up (numba kernels) resets torch's threads
        result = trainer.run()
        wall = time.perf_counter() - start
        mean = result.validation["mean"]
        print(f"HForge {kind} {args.hforge_steps} steps (its defaults: lr {config.optimizer.lr}, baseline "
              f"{config.model.baseline}): {wall:.0f} s wall; val H MAE {mean['h_mae_meV']:.1f} meV, shift removed "
              f"{mean['h_mae_shifted_meV']:.1f}, onsite {mean['h_onsite_meV']:.1f}, hopping {mean['h_hopping_meV']:.1f}",
              flush=True)
        results[kind] = {"wall_s": wall, "final": mean, "throughput": result.throughput}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300, help="steps of the short run (0: none)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--target", choices=("h", "residual"), default="h")
    parser.add_argument("--out", type=Path, default=Path("graph2mat-budget"))
    parser.add_argument("--no-hforge", action="store_true", help="time graph2mat alone")
    parser.add_argument("--hforge-steps", type=int, default=0, help="also train HForge's default models this long")
    parser.add_argument("--hforge-kinds", nargs="+", default=["equivariant", "invariant"])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.timing_steps > 0:
        results["timing"] = timing(args, args.out)
    if args.steps > 0:
        results["run"] = short_run(args, args.out)
    if args.hforge_steps > 0:
        results["hforge"] = hforge_runs(args, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
