"""Put the TensorRT type stubs that mypy checks the TensorRT code against into ./typings (pyproject's mypy_path).

    python tools/tensorrt_stubs.py      # `make lint` runs it; does nothing when typings/ holds this version

The stubs are PyPI's tensorrt-stubs, the TensorRT Python API as pybind11-stubgen wrote it. They go into a folder
of their own rather than into the virtual environment: their one dependency is the TensorRT runtime, which
installs from NVIDIA's index only (hence --no-deps), and in site-packages their `tensorrt/__init__.pyi` makes
`import tensorrt` succeed, as an empty namespace package, on a machine without TensorRT. Five of their
signatures are not valid Python (a parameter named `in`, a required parameter after defaults), which stops mypy
before it checks anything; they are repaired here, in APIs this project does not call, and every stub file is
parsed afterwards to prove it.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "10.13.0.35.1"
"""tensorrt-stubs version: the TensorRT 10.13 Python API (docs/export.md)"""
TARGET = Path(__file__).resolve().parents[1] / "typings"
MARKER = TARGET / f".tensorrt-stubs-{VERSION}"

REPAIRS = [
    # IPluginV2DynamicExt / IPluginV3 methods: `in` is a keyword
    (re.compile(r"(\(self(?:: \w+)?, )in: "), r"\1in_: ", 4),
    # INetworkDefinition.add_scale_nd: channel_axis follows three parameters with defaults
    (re.compile(r"(power: Weights = None, channel_axis: int)\)"), r"\1 = ...)", 1),
]
"""(pattern, replacement, how many times it must match in this version)"""


def repair(text: str) -> tuple[str, list[int]]:
    counts = []
    for pattern, replacement, _ in REPAIRS:
        text, count = pattern.subn(replacement, text)
        counts.append(count)
    return text, counts


def main() -> None:
    if MARKER.is_file():
        return
    shutil.rmtree(TARGET, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(TARGET),
            f"tensorrt-stubs=={VERSION}",
        ],
        check=True,
    )
    totals = [0] * len(REPAIRS)
    for path in sorted(TARGET.rglob("*.pyi")):
        text, counts = repair(path.read_text())
        path.write_text(text)
        totals = [a + b for a, b in zip(totals, counts)]
        try:
            ast.parse(text, str(path))
        except SyntaxError as error:
            sys.exit(f"tensorrt_stubs: {path}:{error.lineno} is still not valid Python: {error.msg}")
    expected = [count for _, _, count in REPAIRS]
    if totals != expected:
        sys.exit(f"tensorrt_stubs: repairs matched {totals} times, expected {expected}; update REPAIRS for {VERSION}")
    MARKER.touch()


if __name__ == "__main__":
    main()
