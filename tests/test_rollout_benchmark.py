"""benchmarks/rollout_latency.py end to end: the --quick path on a tiny random model, torch and onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wm_core.config import MODEL_PRESETS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_latency.py"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (the cpu extra)")
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "out.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--batches",
            "1,4",
            "--horizons",
            "2",
            "--backends",
            "torch,onnxruntime,torch-cudagraphs",
            "--json",
            str(out),
            "--results",
            str(folder / "rollout_latency_test.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(out.read_text()), completed.stdout, folder / "rollout_latency_test.json"


def test_quick_benchmark_times_every_cell_with_positive_numbers(quick_report):
    report, _, _ = quick_report
    cells = {(r["backend"], r["call"], r["batch"], r["horizon"]): r for r in report["results"]}
    expected = {(b, "imagine", batch, 2) for b in ("torch", "onnxruntime") for batch in (1, 4)}
    expected |= {
        (b, call, 1, h) for b in ("torch", "onnxruntime") for call, h in (("imagine-trusted", 2), ("observe", 1))
    }
    assert set(cells) == expected
    for r in cells.values():
        assert r["calls"] >= 3
        assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"]
        assert r["steps_per_s"] == pytest.approx(r["batch"] * r["horizon"] / (r["p50_us"] * 1e-6))
        assert r["speedup"] > 0
        if r["call"] == "imagine":
            assert r["gflops"] > 0 and r["peak_fraction"] > 0
    assert all(r["speedup"] == 1.0 for r in cells.values() if r["backend"] == "torch")
    assert report["matmul_peak"]["float32"]["gflops"] > 0


def test_quick_benchmark_counts_flops_from_layer_sizes(quick_report):
    report, _, _ = quick_report
    p = MODEL_PRESETS["tiny"]
    S, D, K, A = p["latent_dim"], p["deter_dim"], p["hidden_dim"], 3
    expected = 2 * (S + A) * K + 2 * 3 * (K * D + D * D) + 2 * D * K + 2 * K * 2 * S
    assert report["flops"]["per_step"] == expected


def test_quick_benchmark_lists_unavailable_backends_as_skipped(quick_report):
    report, stdout, _ = quick_report
    assert "CUDA" in report["skipped"]["torch-cudagraphs"]
    assert "skipped torch-cudagraphs" in stdout
    assert "| onnxruntime | imagine | 4 | 2 |" in stdout
    for key in ("torch", "onnxruntime", "torch_threads", "cpu"):
        assert key in report["environment"]
    assert len(report["load_average"]["start"]) == 3


def test_quick_benchmark_writes_a_results_file_that_renders_its_table(quick_report, benchmark_script):
    report, _, path = quick_report
    results = benchmark_script("results")
    data = results.load_results(path.name, path.parent)
    assert [c["name"] for c in data["columns"]][:5] == ["backend", "call", "B", "H", "p50"]
    assert len(data["rows"]) == len(report["results"]) and "rollout_latency.py --quick" in data["command"]
    cell = next(r for r in data["rows"] if r[:4] == ["onnxruntime", "imagine", 4, 2])
    raw = next(r for r in report["results"] if (r["backend"], r["batch"], r["horizon"]) == ("onnxruntime", 4, 2))
    assert cell[4] == pytest.approx(raw["p50_us"] * 1e-6)  # seconds, formatted by the renderer
    assert f"| onnxruntime | imagine | 4 | 2 | {results.format_time(cell[4])} |" in results.render_table(data)
