"""benchmarks/report.py, the benchmarks' shared reporting: one table for printing and for the results file, and
the machine a results file names."""

from __future__ import annotations

import json


def test_the_printed_table_and_the_results_file_render_the_same_rows(benchmark_script, tmp_path):
    report, results = benchmark_script("report"), benchmark_script("results")
    columns = [{"name": "backend"}, {"name": "p50", "format": "time"}, {"name": "calls", "format": "d"}]
    rows = [["onnxruntime", 6.44e-4, 12], ["torch", None, 3]]
    env = report.environment("cpu")
    path = report.save_results(tmp_path / "x.json", "a title", columns, rows, env, notes="kept")
    data = json.loads(path.read_text())
    assert data["rows"] == rows and data["notes"] == "kept" and data["machine"] == report.machine_line(env)
    printed = report.markdown_table(columns, rows)
    assert printed.splitlines()[2] == "| onnxruntime | 644 µs | 12 |"
    assert results.render_table(data).startswith(printed + "\n\n*a title. Measured with")


def test_the_machine_line_names_the_gpu_where_there_is_one(benchmark_script):
    report = benchmark_script("report")
    env = {"cpu": "Some CPU", "cpu_count": 2, "torch": "2.13.0", "torch_threads": 2, "cuda": "13.0"}
    assert report.machine_line({**env, "onnxruntime": "1.32.0"}) == (
        "Some CPU, 2 cores; torch 2.13.0 (2 threads), onnxruntime 1.32.0"
    )
    assert report.machine_line({**env, "gpu": "NVIDIA H100"}) == "NVIDIA H100; torch 2.13.0 (2 threads), CUDA 13.0"
    assert report.format_us(2500) == "2.5 ms" and report.format_us(644) == "644 µs"


def test_a_cell_may_carry_its_own_format(benchmark_script):
    results = benchmark_script("results")
    columns = [{"name": "target"}, {"name": "measured", "format": ".3g"}]
    rows = [["latency", {"value": 6.44e-4, "format": "time"}], ["rate", 2.1e7]]
    assert results.markdown_table(columns, rows).splitlines()[2:] == ["| latency | 644 µs |", "| rate | 2.1e+07 |"]
