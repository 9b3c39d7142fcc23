"""`make gpu-check`'s entry point in its CPU dry run, so that it cannot rot between GPU sessions."""

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_writes_every_report(tmp_path, benchmark_script):
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
    assert all(t["measured"] is None for t in report["targets"][:-1])  # no CUDA rows on a CPU
    parity = report["targets"][-1]  # from pytest's summary: every CUDA test skips here, so nothing is verified
    # e.g. "27 skipped, 4 deselected in 0.3s": the CPU tests of tests/test_fused_rollout.py are deselected
    assert re.match(r"\d+ skipped(, \d+ deselected)? in", parity["measured"]) and parity["met"] is False
    assert "Control ticks with the planner" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_dry_run_writes_the_tables_of_docs_gpu_md_as_results_files(tmp_path, benchmark_script):
    gpu_check, results = benchmark_script("gpu_check"), benchmark_script("results")
    tables = tmp_path / "results"
    assert gpu_check.main(["--dry-run", "--budget-s", "0.05", "--out", str(tmp_path)]) == 0
    latency = results.load_results("gpu_rollout_latency.json", tables)
    assert [c["name"] for c in latency["columns"]] == ["variant", "B=1 H=15", "B=4 H=15", "latent steps/s at B=4 H=15"]
    assert [r[0] for r in latency["rows"]] == ["torch eager", "torch bf16", "onnxruntime"]
    assert all(0 < cell < 1 for row in latency["rows"] for cell in row[1:3])  # seconds
    ticks = results.load_results("gpu_planner_ticks.json", tables)
    assert ticks["rows"][0][:2] == ["32 × 4 × 1", "torch eager"] and ticks["rows"][0][2] > 0
    targets = results.load_results("gpu_targets.json", tables)
    assert len(targets["rows"]) == 12 and "dry-run" in targets["command"]
    full = results.load_results("rollout_latency_cpu.json", tables)  # rollout_latency's own table
    assert {r[0] for r in full["rows"]} == {"torch", "torch-bf16", "onnxruntime"}
    train = results.load_results("train_throughput_cpu.json", tables)
    assert train["rows"][0][0] == 1 and train["rows"][0][1] > 0  # one process, frames/s
    for data in (latency, ticks, targets, full, train):
        assert results.render_table(data).count("\n|") >= 2
