"""One helper that exports a graph wrapper to a single, checked ONNX file with a dynamic `batch` axis.

Exporter: the TorchScript exporter (`dynamo=False`), chosen deliberately. The project's default opset is 17
(`ExportConfig.opset`); the torch.export-based exporter implements opset 18 and up only, and its
down-conversion to 17 writes an invalid graph for this model (`Split` keeps the opset-18 `num_outputs`
attribute, rejected by `onnx.checker`). The TorchScript exporter writes opsets up to 20 natively, exports
these small graphs in well under a second, and behaves the same across the torch versions the project
accepts. It is deprecated in recent torch; if it is removed, switch this one function to `dynamo=True` with
`dynamic_shapes` and an opset of 18 or more.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from wm_core.graphs import BATCH, GraphSpec

MIN_OPSET = 14
MAX_OPSET = 20  # the TorchScript exporter's newest opset
EXAMPLE_BATCH = 2  # a batch of 1 lets the tracer treat the batch axis as broadcastable and bake it in


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")


def example_inputs(spec: GraphSpec, batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's input shapes with the batch axis set to `batch`."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for tensor in spec.inputs:
        shape = tuple(batch if isinstance(dim, str) else dim for dim in tensor.shape)  # the one str is BATCH
        if tensor.dtype == "uint8":
            inputs.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))
        else:
            inputs.append(torch.randn(shape, generator=generator))
    return tuple(inputs)


def export_onnx(
    graph: nn.Module, spec: GraphSpec, path: str | Path, opset: int, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Export `graph` to `path` as one self-contained file (no external data) whose inputs and outputs are
    exactly `spec`'s, with `metadata` as model properties; run the full ONNX checker. -> the saved model."""
    check_opset(opset)
    path = Path(path)
    names = spec.input_names + spec.output_names
    with torch.no_grad(), warnings.catch_warnings():
        # The choice of exporter is explained in the module docstring; its deprecation notices are noise here.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            graph.eval(),
            example_inputs(spec),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes={name: {0: BATCH} for name in names},
        )

    model = onnx.load(str(path))
    _set_declared_shapes(model, spec)
    onnx.helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    check_io(model, spec)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return model


def _set_declared_shapes(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Write the contract's shapes onto the graph outputs. The exporter names the batch axis but leaves
    placeholder names (e.g. `Slicez_mean_dim_1`) on fixed axes after a `chunk`. ONNX shape inference does
    not check declared output shapes, so the parity gate checks the shapes the graph really produces."""
    declared = {t.name: t for t in spec.outputs}
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, declared[value.name].shape):
            if isinstance(size, int):
                dim.ClearField("dim_param")
                dim.dim_value = size


def _io_table(values) -> dict[str, tuple[str, tuple]]:
    table = {}
    for value in values:
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        shape = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim)
        table[value.name] = (dtype, shape)
    return table


def check_io(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Raise ValueError unless the model's inputs and outputs are exactly `spec`'s (names, order, dtypes,
    shapes with the batch axis named `batch`)."""
    for kind, values, tensors in (
        ("inputs", model.graph.input, spec.inputs),
        ("outputs", model.graph.output, spec.outputs),
    ):
        actual = _io_table(values)
        expected = {t.name: (t.dtype, tuple(t.shape)) for t in tensors}
        if list(actual.items()) != list(expected.items()):
            raise ValueError(f"{spec.name}: graph {kind} are {actual}, expected {expected}")
