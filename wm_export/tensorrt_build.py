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

import numpy as np
import torch
from tqdm import tqdm

from wm_core.manifest import sha256_file
from wm_core.publish import atomic_write_bytes

INSTALL_HINT = 'install the GPU extra: pip install ".[gpu]"'


class TensorRTUnavailableError(RuntimeError):
    """TensorRT or a CUDA device is missing. `artifacts`: the ONNX-only folder written anyway, if any."""

    def __init__(self, message: str, artifacts: Path | None = None):
        super().__init__(message)
        self.artifacts = artifacts


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build an engine."""


def require_tensorrt():
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
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    engines = {}
    for name, onnx_path in tqdm(onnx_files.items(), desc="tensorrt", disable=not progress, leave=False):
        plan_path = out_folder / f"{name}.plan"
        cache_blob = _build_engine(trt, logger, onnx_path, plan_path, profile, cache_blob)
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


def _build_engine(trt, logger, onnx_path: Path, plan_path: Path, profile: dict[str, int], cache_blob: bytes) -> bytes:
    """Parse, build and serialise one engine -> the updated timing cache."""
    builder = trt.Builder(logger)
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
        shapes.set_shape(tensor.name, *profile_shapes(tuple(tensor.shape), profile))
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
    """Engines as a parity runner; batches larger than the profile's max run in chunks."""

    def __init__(self, plans: dict[str, Path], max_batch: int):
        trt = require_tensorrt()
        self.trt = trt
        self.max_batch = max_batch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        for name, path in plans.items():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineBuildError(f"TensorRT could not load {path.name}")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()
        self.dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.uint8: torch.uint8,
            trt.int32: torch.int32,
        }

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(inputs.values())))
        chunks = [
            self._run(graph, {k: v[i : i + self.max_batch] for k, v in inputs.items()})
            for i in range(0, batch, self.max_batch)
        ]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def _run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        engine, context = self.engines[graph], self.contexts[graph]
        device_inputs = {name: torch.from_numpy(np.ascontiguousarray(x)).cuda() for name, x in inputs.items()}
        for name, tensor in device_inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != self.trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {graph} engine")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
