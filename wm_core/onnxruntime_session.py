"""The one place onnxruntime sessions are made, for the export parity gate and the deploy backend alike.

onnxruntime is imported lazily: it is an extra (`cpu`, or `gpu` for onnxruntime-gpu).

On CUDA, onnxruntime lists CUDAExecutionProvider wherever onnxruntime-gpu is installed, even when the cuDNN or
cuBLAS it needs cannot be loaded; the session then silently runs on the CPU provider. So every CUDA session is
checked after it is made, and one that fell back raises `ProviderUnavailableError`.

A graph of an artifact folder is handed over as the bytes whose sha256 was checked (`wm_core.manifest.
read_verified`), never as a path onnxruntime would open again; a graph with external data is refused (its
tensors would be read from other files, unchecked), and a session's inputs and outputs are checked against the
graph spec, as a TensorRT engine's are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .graphs import GraphSpec

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
    model: str | Path | bytes,
    device: torch.device | None = None,
    *,
    threads: int = 1,
    spinning: bool = True,
    stream: int | None = None,
    tf32: bool = False,
    name: str | Path | None = None,
) -> Any:
    """An InferenceSession of `model` (a path, or the bytes of a graph: checked by `refuse_external_data`;
    `name`: the file they came from, for messages) on `device`: the CPU provider with `threads` intra-op
    threads (0: one per core), which spin between calls unless `spinning` is off, or the CUDA provider on
    device N (on the CUDA stream `stream` when given, TF32 off unless `tf32`). Raises ProviderUnavailableError
    when the CUDA provider is missing or fell back to the CPU."""
    ort = require_onnxruntime()
    name = name if name is not None else ("<bytes>" if isinstance(model, bytes) else model)
    if isinstance(model, bytes):
        refuse_external_data(model, name)
    source = model if isinstance(model, bytes) else str(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the "some nodes were not assigned" notes are expected
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device is None or device.type != "cuda":
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

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
    session = ort.InferenceSession(source, options, providers=[(CUDA_PROVIDER, cuda_options)])
    check_provider_in_use(session, name)
    return session


def check_provider_in_use(session: Any, path: str | Path) -> None:
    """Raise ProviderUnavailableError unless `session` really runs on the CUDA provider."""
    in_use = session.get_providers()
    if not in_use or in_use[0] != CUDA_PROVIDER:
        raise ProviderUnavailableError(
            f"onnxruntime could not load {CUDA_PROVIDER} for {Path(path).name} (providers in use: {in_use}); "
            "its CUDA libraries (cuDNN, cuBLAS) are probably missing or of another CUDA version"
        )


def refuse_external_data(data: bytes, path: str | Path) -> None:
    """Raise ValueError if the ONNX graph `data` (from `path`) keeps any tensor in external data: onnxruntime
    would read it from another file, which no manifest hash covers and which may lie outside the folder."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError, whose module has no type stubs here
        raise ValueError(f"{path}: not an ONNX model ({error})") from None
    external = [t.name for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data]
    if external:
        raise ValueError(
            f"{path}: the graph keeps {len(external)} tensor(s) in external data (e.g. {external[0]!r}); an "
            "artifact graph must be one self-contained file"
        )


def _tensors(model) -> Iterator[Any]:
    """Every TensorProto of `model`: initializers, sparse initializers and node attributes, subgraphs and
    functions included."""

    def of_nodes(nodes) -> Iterator[Any]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
                for graph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                    yield from of_graph(graph)

    def of_graph(graph) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        yield from of_nodes(graph.node)

    yield from of_graph(model.graph)
    for function in model.functions:
        yield from of_nodes(function.node)


ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}


def check_session_io(session: Any, spec: GraphSpec, path: str | Path) -> None:
    """Raise ValueError unless the session's inputs and outputs are the graph spec's (names, dtypes, shapes
    with the batch axis named `batch`)."""
    actual = {
        arg.name: (mode, ORT_DTYPES.get(arg.type, arg.type), tuple(arg.shape))
        for mode, args in (("input", session.get_inputs()), ("output", session.get_outputs()))
        for arg in args
    }
    expected = {
        t.name: (mode, t.dtype, tuple(t.shape))
        for mode, tensors in (("input", spec.inputs), ("output", spec.outputs))
        for t in tensors
    }
    if actual != expected:
        raise ValueError(f"{path}: graph inputs and outputs {actual}, expected {expected} (docs/artifacts.md)")
