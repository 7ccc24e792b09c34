"""benchmarks/scaling.py, the inference scaling harness: tiling, the log-log fit, table, goals and plot
(fast); two real sizes of two models end to end through its command line (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.scaling import _output_floor_run, _tiles, fit_loglog, main, output_floor_seconds, plot_scaling, scaling_table

STAGES = ("graphs", "descriptors", "blocks", "assembly")


def fake_rows(slope: float) -> list[dict]:
    rows = []
    for n in (100, 1000, 2000, 4000, 8000):
        wall = 0.01 * n**slope
        rows.append({
            "n_atoms": n, "wall_s": wall, "stages_s": dict.fromkeys(STAGES, wall / 4), "mode": "whole", "n_parts": 1,
            "nnz": 21000 * n, "csr_bytes": 420_000 * n, "peak_rss_bytes": 420_000 * n + 10**9,
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
               "graph2mat": {"wall_s": 100.0}, "speedup_vs_graph2mat": 12.5}
    table = scaling_table(results)
    assert table.count("\n| ") == 6 and "| 20000 | failed |" in table and "| nan |" in table  # no CPU time given
    assert "slope of wall time vs atoms (>= 1000 atoms): 1.050" in table and "speed-up 12.5x" in table
    assert "goals: peak RSS <= CSR + 1.00 GB (met, goal 2 GB); slope 1.05 (met, goal 1.1)" in table
    path = plot_scaling(results["rows"], results["fit"], tmp_path / "scaling.png")
    assert path.stat().st_size > 10_000


def test_output_floor_writes_the_bytes_in_a_fresh_process():
    here = _output_floor_run(8 * 3 * (1 << 20))  # 3 MiB-strided samples of ones
    assert here["checksum"] == 3.0 and here["floor_s"] > 0
    seconds = output_floor_seconds(8 * 10**6)
    assert 0 < seconds < 60


@pytest.mark.slow
def test_scaling_command_runs_real_sizes(tmp_path):
    main(["--sizes", "100,200", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--no-graph2mat",
          "--model", "default,abn-dzp"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [run["model"] for run in results["runs"]] == ["default", "abn-dzp"]
    for run in results["runs"]:
        assert [r["n_atoms"] for r in run["rows"]] == [100, 200]
        assert all(r["nnz"] > 0 and r["peak_rss_bytes"] > r["csr_bytes"] and r["stages_cpu_s"]["trunk"] > 0 for r in run["rows"])
        assert all(0 < r["output_floor_s"] < r["wall_s"] for r in run["rows"])
    assert "## abn-dzp on cpu" in (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "out" / "scaling.png").is_file()
