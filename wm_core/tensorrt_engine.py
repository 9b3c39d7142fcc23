"""The one place TensorRT's presence is checked and engines are loaded, for the export (build, parity gate) and
the deploy backend alike. Written against the TensorRT 10/11 Python API (type-checked with tensorrt-stubs
10.13); TensorRT cannot be installed where this project's CI runs, so this path is kept thin.

An engine's tensors are checked against the graph specs (`wm_core.graphs`), the single statement of the
tensor contract.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import torch

from .errors import EXIT_NO_TENSORRT, WmError
from .graphs import GraphSpec

if TYPE_CHECKING:
    # For mypy only, which reads the TensorRT API from tensorrt-stubs (tools/tensorrt_stubs.py). At run time each
    # function imports TensorRT itself, after `require_tensorrt` has checked that it can.
    import tensorrt as trt

INSTALL_HINT = 'install the GPU extra: pip install ".[gpu]"'


class TensorRTUnavailableError(WmError, RuntimeError):
    """TensorRT, a CUDA device, or a driver TensorRT works with is missing. `artifacts`: the ONNX-only folder
    written anyway, if any."""

    exit_code = EXIT_NO_TENSORRT

    def __init__(self, message: str, artifacts: Path | None = None):
        super().__init__(message)
        self.artifacts = artifacts


def require_tensorrt() -> ModuleType:
    """-> the tensorrt module, after checking that a CUDA device is usable; else TensorRTUnavailableError.
    Call it before the other functions here, which import TensorRT themselves."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({error}); {INSTALL_HINT}") from None
    if hasattr(tensorrt, "__path__") and getattr(tensorrt, "__file__", None) is None:
        # A folder `tensorrt` without an __init__.py imports as an empty namespace package: tensorrt-stubs
        # installed into site-packages leaves one.
        raise TensorRTUnavailableError(
            f"TensorRT is not installed (found only {list(tensorrt.__path__)}, no code: type stubs?); {INSTALL_HINT}"
        )
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA device: TensorRT engines need an NVIDIA GPU and a CUDA build of torch "
            f"(torch {torch.__version__} sees none); {INSTALL_HINT} on a machine with a GPU"
        )
    return tensorrt


Made = TypeVar("Made")


def _created(factory: Callable[[trt.ILogger], Made], what: str) -> Made:
    """`factory(logger)`. TensorRT reports a CUDA driver it cannot use as a TypeError from the constructor
    (its pybind11 binding got a null object): that is an unavailable TensorRT, not a bug."""
    import tensorrt as trt

    try:
        return factory(trt.Logger(trt.Logger.WARNING))
    except TypeError as error:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} could not create a {what} ({error}); the CUDA driver is probably too old "
            f"for this TensorRT; {INSTALL_HINT} matching the driver"
        ) from None


def create_builder() -> trt.Builder:
    import tensorrt as trt

    return _created(trt.Builder, "builder")


def create_runtime() -> trt.Runtime:
    import tensorrt as trt

    return _created(trt.Runtime, "runtime")


TRT_DTYPES = ("float32", "float16", "uint8", "int32")


def load_engine(runtime: trt.Runtime, data: bytes, path: Path) -> trt.ICudaEngine:
    """Deserialise the engine `data` (the bytes read and verified from `path`, never `path` read again: it may
    have changed since); ValueError when TensorRT refuses it."""
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ValueError(f"TensorRT could not deserialise {path} (see its log above)")
    return engine


def engine_tensors(engine: trt.ICudaEngine) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """name -> (`input` | `output`, dtype name, shape with -1 for the dynamic batch axis)."""
    import tensorrt as trt

    dtypes = {getattr(trt, name): name for name in TRT_DTYPES}
    tensors: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = engine.get_tensor_dtype(name)
        # Dims iterate (through __getitem__); the stubs declare no __iter__
        shape: tuple[int, ...] = tuple(engine.get_tensor_shape(name))  # type: ignore[arg-type]
        tensors[name] = (mode, dtypes.get(dtype, str(dtype)), shape)
    return tensors


def check_engine_tensors(engine: trt.ICudaEngine, spec: GraphSpec, path: Path) -> None:
    """Raise ValueError unless the engine's inputs and outputs are the graph spec's (names, dtypes, shapes;
    FP16 engines keep float32 inputs and outputs, so this holds for both precisions)."""
    expected = {
        t.name: (mode, t.dtype, tuple(-1 if isinstance(d, str) else d for d in t.shape))
        for mode, tensors in (("input", spec.inputs), ("output", spec.outputs))
        for t in tensors
    }
    actual = engine_tensors(engine)
    if actual != expected:
        raise ValueError(f"{path}: engine tensors {actual}, expected {expected} (docs/artifacts.md)")
