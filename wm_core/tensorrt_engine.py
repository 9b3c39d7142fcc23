"""The one place TensorRT is imported and engines are loaded, for the export (build, parity gate) and the
deploy backend alike. Written against the TensorRT 10/11 Python API (type-checked with tensorrt-stubs
10.13); TensorRT cannot be installed where this project's CI runs, so this path is kept thin.

An engine's tensors are checked against the graph specs (`wm_core.graphs`), the single statement of the
tensor contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .graphs import GraphSpec

INSTALL_HINT = 'install the GPU extra: pip install ".[gpu]"'


class TensorRTUnavailableError(RuntimeError):
    """TensorRT, a CUDA device, or a driver TensorRT works with is missing. `artifacts`: the ONNX-only folder
    written anyway, if any."""

    def __init__(self, message: str, artifacts: Path | None = None):
        super().__init__(message)
        self.artifacts = artifacts


def require_tensorrt() -> Any:
    """-> the tensorrt module, after checking that a CUDA device is usable; else TensorRTUnavailableError."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({error}); {INSTALL_HINT}") from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA device: TensorRT engines need an NVIDIA GPU and a CUDA build of torch "
            f"(torch {torch.__version__} sees none); {INSTALL_HINT} on a machine with a GPU"
        )
    return tensorrt


def _created(factory: Any, what: str, trt: Any) -> Any:
    """`factory(logger)`. TensorRT reports a CUDA driver it cannot use as a TypeError from the constructor
    (its pybind11 binding got a null object): that is an unavailable TensorRT, not a bug."""
    try:
        return factory(trt.Logger(trt.Logger.WARNING))
    except TypeError as error:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} could not create a {what} ({error}); the CUDA driver is probably too old "
            f"for this TensorRT; {INSTALL_HINT} matching the driver"
        ) from None


def create_builder(trt: Any) -> Any:
    return _created(trt.Builder, "builder", trt)


def create_runtime(trt: Any) -> Any:
    return _created(trt.Runtime, "runtime", trt)


TRT_DTYPES = ("float32", "float16", "uint8", "int32")


def load_engine(runtime: Any, path: Path) -> Any:
    """Deserialise the engine in `path`; ValueError when TensorRT refuses it."""
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ValueError(f"TensorRT could not deserialise {path} (see its log above)")
    return engine


def engine_tensors(trt: Any, engine: Any) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """name -> (`input` | `output`, dtype name, shape with -1 for the dynamic batch axis)."""
    dtypes = {getattr(trt, name): name for name in TRT_DTYPES}
    tensors = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = engine.get_tensor_dtype(name)
        tensors[name] = (mode, dtypes.get(dtype, str(dtype)), tuple(engine.get_tensor_shape(name)))
    return tensors


def check_engine_tensors(trt: Any, engine: Any, spec: GraphSpec, path: Path) -> None:
    """Raise ValueError unless the engine's inputs and outputs are the graph spec's (names, dtypes, shapes;
    FP16 engines keep float32 inputs and outputs, so this holds for both precisions)."""
    expected = {
        t.name: (mode, t.dtype, tuple(-1 if isinstance(d, str) else d for d in t.shape))
        for mode, tensors in (("input", spec.inputs), ("output", spec.outputs))
        for t in tensors
    }
    actual = engine_tensors(trt, engine)
    if actual != expected:
        raise ValueError(f"{path}: engine tensors {actual}, expected {expected} (docs/artifacts.md)")
