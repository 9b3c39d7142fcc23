"""benchmarks/planner_speed.py end to end: the --quick sampling on a tiny random model with heads, two small
cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "planner_speed.py"


def test_planner_speed_quick_times_both_backends_per_setting(tmp_path, benchmark_script):
    out = tmp_path / "out.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--size", "tiny", "--cells", "64x6x2,32x4x1", "--json", str(out)]
        + ["--results", str(tmp_path / "planner_speed_test.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    rows = json.loads(out.read_text())["rows"]
    cells = {(r["samples"], r["horizon"], r["iterations"]) for r in rows}
    assert cells == {(64, 6, 2), (32, 4, 1)}
    assert sorted(r["backend"] for r in rows) == ["onnxruntime"] * 2 + ["torch"] * 2
    assert all(r["ms_p50"] > 0 and r["ticks_per_s"] == 1e3 / r["ms_p50"] for r in rows)
    assert not any(r["default"] for r in rows)
    assert "| 64 | 6 | 2 | onnxruntime |" in completed.stdout and "| 32 | 4 | 1 | torch |" in completed.stdout
    assert all(r["speedup_vs_torch"] == 1.0 for r in rows if r["backend"] == "torch")
    results = benchmark_script("results")
    data = results.load_results("planner_speed_test.json", tmp_path)  # the layout of docs/results/planner_speed_*
    committed = results.load_results("planner_speed_cpu.json")
    assert data["columns"] == committed["columns"] and len(data["rows"]) == 4
    assert data["rows"][0][:5] == [64, 6, "2", rows[0]["backend"], rows[0]["ms_p50"]]
    assert "| 64 | 6 | 2 | " in results.render_table(data) and "untrained weights" in data["title"]


def test_planner_speed_names_a_backend_it_does_not_know():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--backends", "torch,onnx"], capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert "--backends: unknown 'onnx'" in completed.stderr and "Traceback" not in completed.stderr
