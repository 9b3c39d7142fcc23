"""The one place onnxruntime sessions are made, for the export parity gate and the deploy backend alike.

onnxruntime is imported lazily: it is an extra (`cpu`, or `gpu` for onnxruntime-gpu).

On CUDA, onnxruntime lists CUDAExecutionProvider wherever onnxruntime-gpu is installed, even when the cuDNN or
cuBLAS it needs cannot be loaded; the session then silently runs on the CPU provider. So every CUDA session is
checked after it is made, and one that fell back raises `ProviderUnavailableError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = 'install onnxruntime: pip install ".[cpu]" (or ".[gpu]" for onnxruntime-gpu)'
CUDA_PROVIDER = "CUDAExecutionProvider"


class ProviderUnavailableError(ValueError):
    """onnxruntime cannot run on the device asked for (no CUDA provider, or it fell back to the CPU)."""


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"onnxruntime is not installed ({error}); {INSTALL_HINT}") from None
    return onnxruntime


def cuda_provider_listed() -> bool:
    """onnxruntime-gpu is installed and torch sees a CUDA device (whether the provider loads is checked when a
    session is made)."""
    try:
        ort = require_onnxruntime()
    except ImportError:
        return False
    return CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available()


def create_session(
    path: str | Path,
    device: torch.device | None = None,
    *,
    threads: int = 1,
    spinning: bool = True,
    stream: int | None = None,
    tf32: bool = False,
) -> Any:
    """An InferenceSession of `path` on `device`: the CPU provider with `threads` intra-op threads (0: one per
    core), which spin between calls unless `spinning` is off, or the CUDA provider on device N (on the CUDA
    stream `stream` when given, TF32 off unless `tf32`). Raises ProviderUnavailableError when the CUDA provider
    is missing or fell back to the CPU."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the "some nodes were not assigned" notes are expected
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device is None or device.type != "cuda":
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    if not cuda_provider_listed():
        raise ProviderUnavailableError(
            f"onnxruntime on {device} needs onnxruntime-gpu ({CUDA_PROVIDER}) and a CUDA build of torch; "
            f"available providers: {ort.get_available_providers()}, torch.cuda.is_available()="
            f"{torch.cuda.is_available()}; {INSTALL_HINT}"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    cuda_options = {"device_id": str(index), "use_tf32": "1" if tf32 else "0"}
    if stream is not None:
        cuda_options["user_compute_stream"] = str(stream)
    session = ort.InferenceSession(str(path), options, providers=[(CUDA_PROVIDER, cuda_options)])
    check_provider_in_use(session, path)
    return session


def check_provider_in_use(session: Any, path: str | Path) -> None:
    """Raise ProviderUnavailableError unless `session` really runs on the CUDA provider."""
    in_use = session.get_providers()
    if not in_use or in_use[0] != CUDA_PROVIDER:
        raise ProviderUnavailableError(
            f"onnxruntime could not load {CUDA_PROVIDER} for {Path(path).name} (providers in use: {in_use}); "
            "its CUDA libraries (cuDNN, cuBLAS) are probably missing or of another CUDA version"
        )
