"""Learning curves from ``metrics.jsonl`` records (training loss and validation H MAE against steps)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["plot_learning_curves"]


def plot_learning_curves(
    runs: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    save: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """Two panels: training loss (log scale) and mean validation H MAE (meV, raw and shift-removed;
    the loss alone when no run has validation records).

    Args:
        runs: the records of one run (a list) or ``{label: records}`` of several, drawn together.
        save: the PNG to write.
    """
    from hforge.analysis.plots import new_figure, save_figure

    if not isinstance(runs, Mapping):
        runs = {title or "training": runs}
    has_val = any("val" in r for records in runs.values() for r in records)
    if has_val:
        fig, (ax_loss, ax_val) = new_figure(2, size=(5.0, 3.8))
    else:  # no validation records: the loss alone
        fig, ax_loss = new_figure(1, size=(5.0, 3.8))
    for colour, (label, records) in enumerate(runs.items()):
        steps = [r for r in records if "loss" in r]
        vals = [r for r in records if "val" in r]
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=f"C{colour}", lw=0.8, label=label)
        if has_val and vals:
            x = [r["step"] for r in vals]
            ax_val.plot(x, [r["val"]["mean"]["h_mae_meV"] for r in vals], "o-", color=f"C{colour}", ms=3, label=f"{label}")
            ax_val.plot(x, [r["val"]["mean"]["h_mae_shifted_meV"] for r in vals], "s--", color=f"C{colour}", ms=3,
                        label=f"{label}, shift removed", alpha=0.7)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    axes = [ax_loss]
    if has_val:
        ax_val.set_yscale("log")
        ax_val.set_xlabel("step")
        ax_val.set_ylabel("validation H MAE (meV)")
        axes.append(ax_val)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, save)
