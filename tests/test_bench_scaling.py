"""benchmarks/scaling.py, the inference scaling harness: tiling, the log-log fit, table, goals and plot
(fast); two real sizes of two models end to end through its command line (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.scaling import (
    _output_floor_run,
    _tiles,
    fit_loglog,
    heads_share,
    main,
    output_floor_seconds,
    plot_scaling,
    scaling_table,
    scaling_tables,
)

STAGES = ("graphs", "trunk", "heads", "assembly")


def fake_rows(slope: float) -> list[dict]:
    rows = []
    for n in (100, 1000, 2000, 4000, 8000):
        wall = 0.01 * n**slope
        rows.append({
            "n_atoms": n, "wall_s": wall, "stages_s": dict.fromkeys(STAGES, wall / 4), "mode": "whole", "n_parts": 1,
            "nnz": 21000 * n, "csr_bytes": 420_000 * n, "peak_rss_bytes": 420_000 * n + 10**9,
            "output_floor_s": wall / 2, "floor_ratio": 2.0,
        })
    return rows


def test_tiles_are_as_cubic_as_possible():
    assert _tiles(1) == (1, 1, 1) and _tiles(8) == (2, 2, 2) and _tiles(20) == (5, 2, 2) and _tiles(10) == (5, 2, 1)
    for n in range(1, 30):
        assert np.prod(_tiles(n)) == n


@pytest.mark.parametrize("slope", [1.0, 1.3])
def test_fit_recovers_a_power_law_above_the_threshold(slope):
    rows = fake_rows(slope)
    rows[0]["wall_s"] = 50.0  # below min_atoms: ignored
    fit = fit_loglog(rows, min_atoms=1000)
    assert fit["slope"] == pytest.approx(slope, abs=1e-9)
    assert np.isnan(fit_loglog(rows[:2])["slope"])  # one point above the threshold


def test_table_and_plot(tmp_path):
    rows = fake_rows(1.05)
    results = {"rows": rows + [{"n_atoms": 20000, "error": "killed"}], "fit": fit_loglog(rows),
               "graph2mat": {"wall_s": 100.0, "parameters": 104097}, "speedup_vs_graph2mat": 12.5}
    table = scaling_table(results)
    assert table.count("\n| ") == 6 and "| 20000 | failed |" in table and "| nan |" in table  # no CPU time given
    assert "| 25% | whole x1 |" in table and "| 2.0 |\n" in table  # heads share; wall / output floor
    assert "slope of wall time vs atoms (>= 1000 atoms): 1.050" in table and "speed-up 12.5x" in table
    assert "104097 parameters" in table
    goals = "goals: heads <= 25% of the wall time (met, goal 30 %); peak RSS <= CSR + 1.00 GB (met, goal 2 GB); slope 1.05"
    assert goals in table
    path = plot_scaling(results["rows"], results["fit"], tmp_path / "scaling.png")
    assert path.stat().st_size > 10_000


def test_heads_share_and_baseline_table():
    """The heads' share counts the pair pass / D_k and the separable contraction; a baseline-code run
    gets a table of wall times and ratios against the current code's run of the same model."""
    row = {"wall_s": 10.0, "stages_s": {"trunk": 5.0, "heads": 1.0, "separable": 2.0}}
    assert heads_share(row) == pytest.approx(0.3)
    current, baseline = fake_rows(1.0), fake_rows(1.1)
    runs = [
        {"model": "operator", "device": "cpu", "code": "new", "rows": current, "fit": fit_loglog(current)},
        {"model": "operator", "device": "cpu", "code": "old", "baseline": True, "rows": baseline, "fit": fit_loglog(baseline)},
    ]
    text = scaling_tables({"runs": runs})
    assert "## operator on cpu, code old (baseline)" in text and "baseline code old against new" in text
    expected = baseline[-1]["wall_s"] / current[-1]["wall_s"]
    assert f"| 8000 | {baseline[-1]['wall_s']:.1f} | {current[-1]['wall_s']:.1f} | {expected:.2f} |" in text


def test_output_floor_writes_the_bytes_in_a_fresh_process():
    here = _output_floor_run(8 * 3 * (1 << 20))  # 3 MiB-strided samples of ones
    assert here["checksum"] == 3.0 and here["floor_s"] > 0
    seconds = output_floor_seconds(8 * 10**6)
    assert 0 < seconds < 60


@pytest.mark.slow
def test_scaling_command_runs_real_sizes(tmp_path):
    main(["--sizes", "100,200", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--no-graph2mat",
          "--model", "operator,abn-dzp", "--threads", "1"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [run["model"] for run in results["runs"]] == ["operator", "abn-dzp"]
    for run in results["runs"]:
        assert [r["n_atoms"] for r in run["rows"]] == [100, 200]
        assert all(r["nnz"] > 0 and r["peak_rss_bytes"] > r["csr_bytes"] and r["stages_cpu_s"]["trunk"] > 0 for r in run["rows"])
        assert all(0 < r["output_floor_s"] < r["wall_s"] and r["floor_ratio"] > 1 and r["threads"] == 1 for r in run["rows"])
    assert "## abn-dzp on cpu" in (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "out" / "scaling.png").is_file()
