"""``hforge evaluate CHECKPOINT DATA... [--json OUT]``: a model against SIESTA, per structure and size."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional

import typer
from rich.console import Console
from rich.table import Table

from hforge.cli._choices import Split
from hforge.cli._errors import escape, user_errors

__all__ = [
    "CAPTION", "COLUMNS", "columns", "evaluate_command", "iter_references", "metrics_table", "parse_kpoints",
    "parse_valence", "wide_console",
]

#: The headline columns (what a user of the predicted H and S sees: the full-S Γ spectrum after removing
#: the best c·S, and the per-atom onsite energies) and the block MAEs: summary key(s) -> header; a tuple of
#: keys is printed as ``a/b``.
COLUMNS: dict[str | tuple[str, ...], str] = {
    ("ghosts_low", "ghosts_high"): "ghosts\nbelow/above",
    "eig_window_fullS_meV": "eig ±2eV\nfull S meV",
    ("window_states_pred", "window_states_ref"): "states ±2eV\nML/DFT",
    "gap_error_fullS_meV": "gap err.\nfull S meV",
    "band_energy_error_fullS_meV_per_atom": "band E\nmeV/atom",
    "dos_distance_fullS_meV": "DOS W1\nfull S meV",
    "h_mae_meV": "H MAE\nmeV",
    "h_mae_shifted_meV": "H MAE\n-c·S meV",
    "h_onsite_meV": "onsite\nmeV",
    "onsite_atom_rmse_meV": "onsite/atom\nRMSE meV",
    "h_hopping_meV": "hopping\nmeV",
    "s_mae": "S MAE",
}
#: What the table's columns mean (printed under it).
CAPTION = (
    "full S: H c = E S c in the whole basis, each side with its own S, after removing the best c·S; ghosts: ML states "
    "more than 1 eV below/above DFT's spectrum; ±2 eV window around DFT's gap centre, paired from the HOMO. "
    "ref S t (secondary): both H in the reference S's canonical basis, S eigenvalues below t dropped."
)


def columns(thresholds: List[float]) -> dict[str | tuple[str, ...], str]:
    """The table's columns: the headline (:data:`COLUMNS`), then per threshold of the secondary view
    the window MAE in the reference S's canonical basis (and for the first threshold the gap error),
    each header naming its threshold."""
    from hforge.train.evaluation import threshold_key

    out = dict(COLUMNS)
    for k, threshold in enumerate(thresholds):
        t = threshold_key(threshold)
        out[f"eig_window_refS_{t}_meV"] = f"eig ±2eV\nref S {t}\nmeV"
        if k == 0:
            out[f"gap_error_refS_{t}_meV"] = f"gap err.\nref S {t}\nmeV"
    return out


def wide_console() -> Console:
    """A console for wide tables: the terminal's width, or 200 columns when not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(key: str | tuple[str, ...], row: Mapping[str, Any]) -> str:
    if isinstance(key, tuple):
        return "/".join(_fmt(k, row) for k in key)
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2e}" if key == "s_mae" else f"{value:.4g}"


def metrics_table(
    rows: Mapping[str, Mapping[str, Any]], *, title: str, first: str = "structure", thresholds: List[float] | None = None
) -> Table:
    """A rich table of summary rows (label -> :func:`hforge.train.evaluation.summary_row`) with
    :data:`CAPTION` under it; ``title`` is rich markup (escape user text in it), the labels are
    printed as they are."""
    from hforge.metrics import EVALUATION_THRESHOLDS

    shown = columns(list(EVALUATION_THRESHOLDS if thresholds is None else thresholds))
    table = Table(title=title, caption=CAPTION)
    table.add_column(first)
    for header in shown.values():
        table.add_column(header, justify="right")
    for label, row in rows.items():
        table.add_row(escape(label), *(_fmt(k, row) for k in shown))
    return table


def parse_valence(items: List[str]) -> dict[str, float]:
    """``["B=3", "N=5"]`` -> ``{"B": 3.0, "N": 5.0}``."""
    out = {}
    for item in items:
        symbol, _, charge = item.partition("=")
        try:
            out[symbol.strip()] = float(charge)
        except ValueError:
            raise typer.BadParameter(f"--valence {item!r}: expected SYMBOL=CHARGE, e.g. B=3") from None
    return out


def parse_kpoints(items: List[str]) -> list[list[float]] | None:
    """``["0.5,0,0"]`` -> ``[[0, 0, 0], [0.5, 0, 0]]`` (Γ first); None without items (Γ alone)."""
    if not items:
        return None
    out = [[0.0, 0.0, 0.0]]
    for item in items:
        try:
            k = [float(x) for x in item.replace(",", " ").split()]
        except ValueError:
            k = []
        if len(k) != 3 or not all(math.isfinite(x) for x in k):
            raise typer.BadParameter(f"--kpoint {item!r}: expected three reduced coordinates, e.g. 0.5,0,0")
        out.append(k)
    return out


def iter_references(inputs: List[str], *, split: Optional[str] = None, basis: Optional[Path] = None) -> Iterator[Any]:
    """SIESTA structures (:class:`HSData`) of bundled datasets (``abn-small``), stores (``.h5``),
    H/S files (``.TSHS``, ``.HSX``, ``.nc``, ``.fdf``) and (folders of) run folders.

    Raises:
        ConfigError: a store whose ``split`` holds no structure (naming what its splits hold).
    """
    from hforge.datasets import BUNDLED, load
    from hforge.errors import ConfigError
    from hforge.io import read_hs
    from hforge.io.runs import find_runs, run_output

    for item in inputs:
        if item in BUNDLED or item.endswith((".h5", ".hdf5")):
            dataset = load(item, split=split)
            if not len(dataset):
                held = {s: len(dataset.store.split(s)) for s in ("train", "val", "test")}
                raise ConfigError(f"--split {split}: {item} holds no structure of that split (its splits: {held})")
            yield from dataset
            continue
        for run in find_runs([item]):
            yield read_hs(run_output(run), basis=basis)


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (hforge train's best.pt / last.pt)."),
    data: List[str] = typer.Argument(..., help="abn-small, stores (.h5), SIESTA files or run folders."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every metric as JSON here."),
    split: Optional[Split] = typer.Option(None, "--split", help="Only this split of stores."),
    basis: Optional[Path] = typer.Option(None, "--basis", help="Folder of .ion files for bare TSHS files."),
    window: float = typer.Option(2.0, help="Half-width (eV) of the eigenvalue window around the gap centre."),
    threshold: List[float] = typer.Option(
        [1e-2, 1e-3], "--threshold",
        help="Secondary view: canonical orthogonalization dropping S eigenvalues below this (repeat for several).",
    ),
    kpoint: List[str] = typer.Option(
        [], "--kpoint",
        help="Full-S spectra also at this reduced k-point, e.g. --kpoint 0.5,0,0 (repeat; one dense solve each: small cells).",
    ),
    eigenvalues: bool = typer.Option(True, "--eigenvalues/--no-eigenvalues", help="Eigenvalue metrics (dense)."),
    valence: List[str] = typer.Option(
        [], "--valence", help="Z_valence where the basis lacks it, e.g. --valence B=3 --valence N=5."
    ),
) -> None:
    """The full-S spectrum a user sees (Γ, and --kpoint; each side with its own S, best c·S removed): ghost states,
    ±window MAE paired from the HOMO, states in the window, gap, band-energy and DOS errors; per-atom onsite-energy
    RMSE; H MAE (meV; all, onsite, hopping, per species and shell pair; raw and without the best c·S), S MAE; and,
    secondary, eigenvalue errors in the reference S's canonical basis at each threshold; per structure and size."""
    from hforge.errors import ConfigError
    from hforge.models import load_checkpoint
    from hforge.train.evaluation import evaluate_structures

    console = wide_console()
    with user_errors():
        model, payload = load_checkpoint(checkpoint)
        extra_valence = (payload.get("extra", {}).get("training", {}).get("config", {}).get("data", {}).get("valence")) or {}
        evaluation = evaluate_structures(
            model, iter_references(data, split=None if split is None else split.value, basis=basis), window=window,
            thresholds=threshold, kpoints=parse_kpoints(kpoint),
            eigenvalues=eigenvalues, valence={**extra_valence, **parse_valence(valence)},
            on_structure=lambda e: console.print(
                f"  {e['name']}: {e['n_atoms']} atoms, H MAE {e['summary']['h_mae_meV']:.3g} meV, ghost states "
                f"{_fmt(('ghosts_low', 'ghosts_high'), e['summary'])}", markup=False
            ),
        )
        if not evaluation.structures:
            raise ConfigError(f"no structure to evaluate in {', '.join(data)}")
    rows = {e["name"]: e["summary"] for e in evaluation.structures}
    console.print(metrics_table(rows, title=f"{escape(checkpoint)} per structure", thresholds=threshold))
    groups = {n: g["summary"] for n, g in evaluation.groups.items()}
    console.print(metrics_table(groups, title="per size", first="atoms", thresholds=threshold))
    if json_out is not None:
        from hforge.files import write_json

        result = {"checkpoint": str(checkpoint), "model": model.config.to_dict(), **evaluation.to_dict()}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"wrote {write_json(json_out, result)}", markup=False)
