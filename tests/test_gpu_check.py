"""`make gpu-check`'s entry point in its CPU dry run, so that it cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_writes_every_report(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--budget-s", "0.05", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    names = {"gpu_tests.log", "rollout_latency.json", "rollout_latency.md", "train_throughput.json", "gpu_check.md"}
    names |= {"planner_speed.json"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and [p["exit_code"] for p in report["parts"]] == [0] * 5
    assert "SKIPPED" in (tmp_path / "gpu_tests.log").read_text()  # the CUDA tests skip here, with their reason
    latency = json.loads((tmp_path / "rollout_latency.json").read_text())
    assert {r["backend"] for r in latency["results"]} == {"torch", "torch-bf16", "onnxruntime"}
    assert "torch-cudagraphs" in latency["skipped"]
    assert [t["measured"] for t in report["targets"]] == [None] * 4  # no CUDA rows on a CPU
    assert "Control ticks with the planner" in (tmp_path / "gpu_check.md").read_text()
