"""The small-objects benchmark: its --quick run generates the dot scene, trains, measures and writes the table."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "small_objects.py"


def test_quick_run_writes_a_row_per_option(tmp_path, benchmark_script):
    table = tmp_path / "small_objects_test.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--options", "plain loss,default"]
        + ["--results", str(table)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| plain loss | " in result.stdout and "| default | " in result.stdout
    rows = json.loads((tmp_path / "quick" / "results.json").read_text())["rows"]
    assert [r["option"] for r in rows] == ["plain loss", "default"]
    assert all(0 <= r["dot_mse"] <= 1 and r["position_r2_train"] <= 1 for r in rows)
    results = benchmark_script("results")
    data = results.load_results(table.name, tmp_path)
    assert [r[0] for r in data["rows"]] == ["plain loss", "default"] and data["rows"][0][1] == rows[0]["dot_mse"]
    assert "| plain loss | " in results.render_table(data)
