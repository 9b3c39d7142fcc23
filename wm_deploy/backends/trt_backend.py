"""TensorRT backend: the `.plan` engines of an artifact folder, run through the name-based tensor API
(set_input_shape / set_tensor_address / execute_async_v3) on preallocated torch CUDA tensors, with the H-step
imagine loop of each (batch, horizon) bucket captured in a CUDA graph.

TensorRT is imported lazily, when this backend is built. Written against the TensorRT 10/11 Python API
documentation; it has not been run on a GPU in this repository's CI.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .base import Dims, TorchOps, Workspace, capture_cuda_graph

# Engine tensors by graph, with the dtype each must have: the artifact contract (docs/artifacts.md). FP16
# engines keep float32 inputs and outputs, so this holds for both precisions.
TENSORS = {
    "encoder": {"obs": "uint8", "z_mean": "float32", "z_std": "float32"},
    "prior_step": {
        "h": "float32",
        "z": "float32",
        "action": "float32",
        "h_next": "float32",
        "prior_mean": "float32",
        "prior_std": "float32",
    },
    "decoder": {"z": "float32", "frames": "float32"},
}


def check_engine_compatible(section: dict, device: torch.device, trt_version: str) -> None:
    """Engines only load in the TensorRT version and on the GPU model that built them: refuse others with a
    message saying which was expected and which is here, before TensorRT fails on them."""
    if section["version"] != trt_version:
        raise ValueError(
            f"the TensorRT engines were built with TensorRT {section['version']}, this is TensorRT {trt_version}; "
            "rebuild them here with `wm-export --trt`, or use backend='onnxruntime'"
        )
    major, minor = torch.cuda.get_device_capability(device)
    here = (torch.cuda.get_device_name(device), f"{major}.{minor}")
    built = (section["gpu"], section["compute_capability"])
    if built != here:
        raise ValueError(
            f"the TensorRT engines were built for {built[0]} (compute capability {built[1]}), this GPU is "
            f"{here[0]} (compute capability {here[1]}); rebuild them here with `wm-export --trt`, "
            "or use backend='onnxruntime'"
        )


class TrtBackend:
    name = "tensorrt"

    def __init__(
        self,
        plans: dict[str, Path],
        section: dict,
        dims: Dims,
        device: torch.device,
        max_batch: int,
        cuda_graphs: bool = True,
    ):
        """`plans`: graph name -> verified .plan path (`decoder` optional); `section`: the manifest's
        `tensorrt` entry."""
        from wm_export.tensorrt_build import require_tensorrt

        trt = require_tensorrt()
        check_engine_compatible(section, device, trt.__version__)
        self.trt = trt
        self.dims = dims
        self.device = device
        self.ops = TorchOps(device)
        self.max_batch = max_batch
        self.has_decoder = "decoder" in plans
        self.capture = cuda_graphs
        self.detail = (
            f"TensorRT {trt.__version__} {section['precision']} on {section['gpu']}, "
            f"name-based tensor API, {'CUDA graphs' if cuda_graphs else 'one enqueue per step'}"
        )
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        self.input_shapes = {}  # graph -> input name -> its shape without the batch axis
        self._shape_batch = {}  # graph -> batch its context's input shapes are set for
        with torch.cuda.device(device):
            for name, path in plans.items():
                engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise ValueError(f"TensorRT {trt.__version__} could not deserialise {path} (see its log above)")
                self._check_tensors(name, engine, path)
                self.engines[name] = engine
                self.contexts[name] = engine.create_execution_context()
                self.input_shapes[name] = {
                    n: tuple(engine.get_tensor_shape(n))[1:]
                    for n in TENSORS[name]
                    if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
                }
                self._shape_batch[name] = None

    def _check_tensors(self, graph: str, engine, path: Path) -> None:
        trt = self.trt
        dtypes = {trt.float32: "float32", trt.uint8: "uint8", trt.float16: "float16", trt.int32: "int32"}
        actual = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            actual[name] = dtypes.get(engine.get_tensor_dtype(name), str(engine.get_tensor_dtype(name)))
        if actual != TENSORS[graph]:
            raise ValueError(f"{path}: engine tensors {actual}, expected {TENSORS[graph]} (docs/artifacts.md)")

    def _run(self, graph: str, batch: int, addresses: list[tuple[str, int]]) -> None:
        context = self.contexts[graph]
        if self._shape_batch[graph] != batch:
            for name, fixed in self.input_shapes[graph].items():
                shape = (batch, *fixed)
                if not context.set_input_shape(name, shape):
                    raise ValueError(
                        f"TensorRT {graph}: input {name} shape {shape} is outside the engine's "
                        f"profile (batch 1..{self.max_batch})"
                    )
            self._shape_batch[graph] = batch
        for name, address in addresses:
            context.set_tensor_address(name, address)
        # The current stream: the caller's, or the capture stream while a CUDA graph is being recorded.
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue the {graph} engine")

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        ws = Workspace.allocate(self.ops, self.dims, batch, steps, frames)
        ws.private["steps"] = [
            [
                ("h", ws.hs[t].data_ptr()),
                ("z", ws.zs[t].data_ptr()),
                ("action", ws.actions[t].data_ptr()),
                ("h_next", ws.hs[t + 1].data_ptr()),
                ("prior_mean", ws.zs[t + 1].data_ptr()),
                ("prior_std", ws.stds[t].data_ptr()),
            ]
            for t in range(steps)
        ]
        if frames:
            ws.private["encoder"] = [
                ("obs", ws.obs.data_ptr()),
                ("z_mean", ws.post_mean.data_ptr()),
                ("z_std", ws.post_std.data_ptr()),
            ]
            ws.private["decoder"] = [("z", ws.post_mean.data_ptr()), ("frames", ws.recon.data_ptr())]
        return ws

    def encode_into(self, ws: Workspace) -> None:
        self._run("encoder", ws.batch, ws.private["encoder"])

    def step_into(self, ws: Workspace, t: int) -> None:
        self._run("prior_step", ws.batch, ws.private["steps"][t])

    def decode_into(self, ws: Workspace) -> None:
        self._run("decoder", ws.batch, ws.private["decoder"])

    def compile(self, loop, ws: Workspace):
        # The warm-up runs inside capture_cuda_graph also flush TensorRT's deferred shape-dependent work, which
        # the TensorRT guide asks for (one enqueue after set_input_shape) before a capture.
        return capture_cuda_graph(loop, self.device) if self.capture else loop

    def scope(self):
        return contextlib.nullcontext()
