"""TensorRT engines from the exported ONNX graphs (TensorRT 10 and 11), and a runner for the parity gate.

TensorRT is imported here only, inside the functions that use it. Networks are created strongly typed: on
TensorRT 11 that is the only mode (the precision builder flags are gone), on 10 it is opt-in. Precision
therefore comes from the graph: FP32 engines are built from the float32 ONNX files with TF32 disabled, FP16
engines from float16 versions of the graphs with float32 inputs and outputs (`graphs.HalfPrecisionGraph`).
Engines run through the name-based tensor API (set_input_shape / set_tensor_address / execute_async_v3)
on torch CUDA tensors, so no other CUDA binding is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from wm_core.errors import WmError
from wm_core.graphs import GraphSpec
from wm_core.manifest import sha256_file
from wm_core.publish import atomic_write_bytes
from wm_core.tensorrt_engine import (
    TensorRTUnavailableError,
    check_engine_tensors,
    create_builder,
    create_runtime,
    load_engine,
    require_tensorrt,
)

if TYPE_CHECKING:  # the stubs, for mypy; TensorRT itself is imported inside the functions that use it
    import tensorrt as trt

__all__ = ["EngineBuildError", "TensorRTUnavailableError", "TensorRTRunner", "build_engines", "require_tensorrt"]


class EngineBuildError(WmError, RuntimeError):
    """TensorRT could not parse a graph or build an engine."""


def optimization_profile(opt_batch: int, max_batch: int) -> dict[str, int]:
    """The batch sizes of the engines' one optimisation profile."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(
            f"TensorRT profile needs 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}"
        )
    return {"min": 1, "opt": opt_batch, "max": max_batch}


def profile_shapes(shape: tuple[int, ...], profile: dict[str, int]) -> tuple[tuple[int, ...], ...]:
    """A network input's shape (batch axis first, -1) -> its (min, opt, max) shapes."""
    fixed = tuple(shape[1:])
    return tuple((profile[key], *fixed) for key in ("min", "opt", "max"))


def build_engines(
    onnx_files: dict[str, Path],
    out_folder: Path,
    profile: dict[str, int],
    fp16: bool,
    timing_cache: Path,
    progress: bool = False,
) -> dict:
    """Build `<graph>.plan` in `out_folder` from each ONNX file (float16 graphs when `fp16`), reusing and
    updating the timing cache file. -> the manifest's `tensorrt` section, without parity."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    cache_blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    engines = {}
    for name, onnx_path in tqdm(onnx_files.items(), desc="tensorrt", disable=not progress, leave=False):
        plan_path = out_folder / f"{name}.plan"
        cache_blob = _build_engine(logger, onnx_path, plan_path, profile, cache_blob)
        engines[name] = {"file": plan_path.name, "sha256": sha256_file(plan_path)}
    atomic_write_bytes(timing_cache, cache_blob)
    major, minor = torch.cuda.get_device_capability()
    return {
        "version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "precision": "fp16" if fp16 else "fp32",
        "profile": dict(profile),
        "timing_cache": str(timing_cache),
        "engines": engines,
    }


def _build_engine(
    logger: trt.ILogger, onnx_path: Path, plan_path: Path, profile: dict[str, int], cache_blob: bytes
) -> bytes:
    """Parse, build and serialise one engine -> the updated timing cache."""
    import tensorrt as trt

    builder = create_builder()
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    # TF32 rounds float32 matmul and conv inputs to 10 mantissa bits: FP32 engines would miss their 1e-3 gate.
    config.clear_flag(trt.BuilderFlag.TF32)
    shapes = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        # Dims iterate, and tuples convert to Dims implicitly; the stubs declare neither
        shapes.set_shape(tensor.name, *profile_shapes(tuple(tensor.shape), profile))  # type: ignore[arg-type]
    config.add_optimization_profile(shapes)

    cache = config.create_timing_cache(cache_blob)
    # A cache from another GPU or TensorRT version (or a damaged file) is refused; start from an empty one.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    return bytes(config.get_timing_cache().serialize())


class TensorRTRunner:
    """Engines as a parity runner, on a stream of its own; batches larger than the profile's max run in chunks.
    Tensor names and dtypes come from the graph specs."""

    def __init__(self, plans: dict[str, Path], specs: dict[str, GraphSpec], max_batch: int):
        require_tensorrt()
        self.specs = specs
        self.max_batch = max_batch
        self.runtime = create_runtime()
        self.stream = torch.cuda.Stream()
        self.engines: dict[str, trt.ICudaEngine] = {}
        self.contexts: dict[str, trt.IExecutionContext] = {}
        for name, path in plans.items():
            try:
                engine = load_engine(self.runtime, path.read_bytes(), path)
                check_engine_tensors(engine, specs[name], path)
            except ValueError as error:
                raise EngineBuildError(str(error)) from None
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(inputs.values())))
        chunks = [
            self._run(graph, {k: v[i : i + self.max_batch] for k, v in inputs.items()})
            for i in range(0, batch, self.max_batch)
        ]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def _run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, spec = self.contexts[graph], self.specs[graph]
        batch = len(next(iter(inputs.values())))
        with torch.cuda.stream(self.stream):
            device_inputs = {name: torch.from_numpy(np.ascontiguousarray(x)).cuda() for name, x in inputs.items()}
            outputs = {
                t.name: torch.empty(
                    [batch if isinstance(d, str) else d for d in t.shape], dtype=getattr(torch, t.dtype), device="cuda"
                )
                for t in spec.outputs
            }
        for name, tensor in device_inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineBuildError(f"TensorRT {graph}: input {name} shape {tuple(tensor.shape)} refused")
        for name, tensor in {**device_inputs, **outputs}.items():
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineBuildError(f"TensorRT {graph}: address of {name} refused")
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError(f"TensorRT failed to run the {graph} engine")
        self.stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
