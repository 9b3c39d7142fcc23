"""benchmarks/imagine_overhead.py end to end on a tiny random model, a few short rounds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "imagine_overhead.py"


def test_imagine_overhead_reports_the_speed_up_and_each_backend_s_loop_overhead():
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (the cpu extra)")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--rounds", "3", "--calls", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    assert "per call, median over rounds of 2 back-to-back calls" in out
    speed_up = re.search(r"torch eager .*: ([\d.]+)x faster than torch Rollout.imagine, ([\d.]+)x than", out)
    assert speed_up and float(speed_up[1]) > 0 and float(speed_up[2]) > 0, out
    for backend in ("onnxruntime", "torch"):
        line = re.search(rf"loop overhead, {backend}: imagine ([\d.]+) us, the backend's 15 steps ([\d.]+) us", out)
        assert line and float(line[1]) > 0 and float(line[2]) > 0, out
