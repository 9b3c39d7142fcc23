"""The benchmarks' shared reporting: what machine and software a measurement ran on, its table (printed as
markdown and written as a results file, benchmarks/results.py), plots, and progress lines. The measuring side
is benchmarks/timing.py; the scripts beside both import them (`from report import ...`).

A benchmark builds its table once, as `columns` (name and format, see results.py) and `rows` of raw numbers
(seconds, counts), and hands the same pair to `markdown_table` to print and to `save_results` for
`--results FILE`, so that the printed table and the docs' table cannot disagree.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from results import cpu_name, format_time, markdown_table, write_results

__all__ = [
    "add_results_option",
    "cpu_name",
    "environment",
    "format_time",
    "format_us",
    "machine_line",
    "markdown_table",
    "new_axes",
    "progress",
    "save_figure",
    "save_results",
]

OPTIONAL = ("onnxruntime", "tensorrt", "triton")
"""backend packages whose versions an environment names where they are installed"""


def environment(device: str = "cpu") -> dict:
    """Versions, processor, threads and (on a CUDA `device`) the GPU: what a timing means little without."""
    import numpy as np
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env_threads": {key: os.environ[key] for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if key in os.environ},
    }
    for module in OPTIONAL:
        try:
            version = getattr(importlib.import_module(module), "__version__", None)
        except ImportError:
            continue
        if version is not None:  # None: a namespace package of type stubs (typings/tensorrt), not the runtime
            env[module] = version
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        driver = nvidia_driver()
        if driver:
            env["driver"] = driver
    return env


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it, or None where there is no nvidia-smi."""
    try:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = completed.stdout.split()
    return lines[0] if completed.returncode == 0 and lines else None


def machine_line(env: dict) -> str:
    """One line for a results file's `machine`: the GPU or the processor, and the versions that matter."""
    where = env["gpu"] if env.get("gpu") else f"{env['cpu']}, {env['cpu_count']} cores"
    where += f" (driver {env['driver']})" if env.get("driver") else ""
    software = [f"torch {env['torch']} ({env['torch_threads']} threads)"]
    software += [f"CUDA {env['cuda']}"] if env.get("gpu") and env.get("cuda") else []
    software += [f"{module} {env[module]}" for module in OPTIONAL if module in env]
    return f"{where}; {', '.join(software)}"


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        help="also write the table as a results file here (docs/results/NAME.json: `python benchmarks/results.py` "
        "renders it into the page that names it)",
    )


def save_results(
    path: Path, title: str, columns: Sequence[dict], rows: Sequence[Sequence[Any]], env: dict, **extra: Any
) -> Path:
    """Write `--results` (results.write_results), stamped with this machine (`machine_line(env)`)."""
    path = Path(path)
    return write_results(path.name, title, columns, rows, machine=machine_line(env), out_dir=path.parent, **extra)


def format_us(us: float) -> str:
    """Microseconds, as a table shows seconds (644 µs, 9.6 ms, 1.2 s)."""
    return format_time(us * 1e-6)


def progress(message: str) -> None:
    """A progress line, on stderr so that stdout stays the report."""
    print(message, file=sys.stderr, flush=True)


def new_axes(figsize: tuple[float, float] = (7, 5)):
    """-> (figure, axes) drawn off-screen, without pyplot's global state. ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_figure(figure, path: Path, dpi: int = 120) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path
