"""TensorRT backend: the `.plan` engines of an artifact folder, run through the name-based tensor API
(set_input_shape / set_tensor_address / execute_async_v3) on preallocated torch CUDA tensors, with the H-step
imagine loop of each (batch, horizon) bucket captured in a CUDA graph.

- One execution context per (graph, batch size): a captured graph is tied to the state of the context it was
  captured on, and `set_input_shape` with another batch would change that state under it.
- Workspaces pad every per-step slice to TENSOR_ALIGNMENT bytes (TensorRT refuses other tensor addresses), and
  a refused shape or address raises instead of leaving the previous buffer bound.
- Eager calls run on a stream of the backend's, never on the device-wide legacy default stream.

TensorRT is imported lazily, when this backend is built. Written against the TensorRT 10/11 Python API
documentation and type-checked with tensorrt-stubs; it has not been run on a GPU in this repository's CI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from wm_core.graphs import graph_specs_of
from wm_core.manifest import VerifiedFile
from wm_core.tensorrt_engine import (
    check_engine_tensors,
    create_runtime,
    load_engine,
    require_tensorrt,
)

from .base import ArrayOps, Dims, TorchOps, Workspace, capture_cuda_graph, on_stream

if TYPE_CHECKING:  # the stubs, for mypy; TensorRT itself is loaded by require_tensorrt when a backend is built
    import tensorrt as trt

TENSOR_ALIGNMENT = 256
"""bytes: TensorRT's required alignment of every tensor address"""


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


def tensor_addresses(ws: Workspace, heads: bool = False, value: bool = False, policy: bool = False) -> dict[str, Any]:
    """The engine tensor addresses of a workspace: `steps` [t] -> [(name, address)] for prior step t (reading
    h[t], z[t], action[t], writing h[t+1], z[t+1], prior_std[t], with `heads` also reward[t], cont[t]); with
    frames, `encoder` and `decoder`; with `value` the prior step also writes value[t]; with `policy`, `policy`."""

    def step(t: int) -> list[tuple[str, int]]:
        addresses = [
            ("h", ws.hs[t].data_ptr()),
            ("z", ws.zs[t].data_ptr()),
            ("action", ws.actions[t].data_ptr()),
            ("h_next", ws.hs[t + 1].data_ptr()),
            ("prior_mean", ws.zs[t + 1].data_ptr()),
            ("prior_std", ws.stds[t].data_ptr()),
        ]
        if heads:
            addresses += [("reward", ws.rewards[t].data_ptr()), ("cont", ws.conts[t].data_ptr())]
        if value:
            addresses.append(("value", ws.values[t].data_ptr()))
        return addresses

    bindings: dict[str, Any] = {"steps": [step(t) for t in range(ws.steps)]}
    if policy:
        bindings["policy"] = [
            ("h", ws.hs[0].data_ptr()),
            ("z", ws.zs[0].data_ptr()),
            ("action", ws.policy_action.data_ptr()),
        ]
    if ws.obs is not None:
        bindings["encoder"] = [
            ("obs", ws.obs.data_ptr()),
            ("z_mean", ws.post_mean.data_ptr()),
            ("z_std", ws.post_std.data_ptr()),
        ]
        bindings["decoder"] = [("z", ws.post_mean.data_ptr()), ("frames", ws.recon.data_ptr())]
    return bindings


class TrtBackend:
    name = "tensorrt"

    def __init__(
        self,
        plans: dict[str, VerifiedFile],
        section: dict,
        dims: Dims,
        device: torch.device,
        max_batch: int,
        cuda_graphs: bool = True,
        heads: bool = False,
        value: bool = False,
    ):
        """`plans`: graph name -> its .plan file as read and verified (`read_verified`; `decoder` optional), whose
        bytes are deserialised; `section`: the manifest's
        `tensorrt` entry; `heads`: the prior step outputs reward and cont; `value`: also the critic's value. A
        `policy` plan adds the actor's graph."""
        version = require_tensorrt().__version__
        check_engine_compatible(section, device, version)
        self.dims = dims
        self.device = device
        self.ops: ArrayOps = TorchOps(device)
        self.max_batch = max_batch
        self.has_decoder = "decoder" in plans
        self.has_heads = heads
        self.has_value = value
        self.has_policy = "policy" in plans
        self.capture = cuda_graphs
        self.precision = section["precision"]
        self.detail = (
            f"TensorRT {version} {section['precision']} on {section['gpu']}, "
            f"name-based tensor API, {'CUDA graphs' if cuda_graphs else 'one enqueue per step'}"
        )
        specs = graph_specs_of(dims.frame[0], dims.latent, dims.deter, dims.action, heads=heads, actor_critic=value)
        self.stream = torch.cuda.Stream(device)
        self.runtime = create_runtime()
        self.engines: dict[str, trt.ICudaEngine] = {}
        self.contexts: dict[tuple[str, int], trt.IExecutionContext] = {}
        self.input_shapes: dict[str, dict[str, tuple]] = {}  # graph -> input name -> shape without the batch axis
        with torch.cuda.device(device):
            for name, plan in plans.items():
                engine = load_engine(self.runtime, plan.data, plan.path)
                check_engine_tensors(engine, specs[name], plan.path)
                self.engines[name] = engine
                self.input_shapes[name] = {t.name: tuple(t.shape[1:]) for t in specs[name].inputs}

    def _context(self, graph: str, batch: int) -> trt.IExecutionContext:
        """The execution context of `graph` at `batch`, its input shapes set once, when it is made."""
        context = self.contexts.get((graph, batch))
        if context is None:
            with torch.cuda.device(self.device):
                context = self.engines[graph].create_execution_context()
            for name, fixed in self.input_shapes[graph].items():
                shape = (batch, *fixed)
                if not context.set_input_shape(name, shape):
                    raise ValueError(
                        f"TensorRT {graph}: input {name} shape {shape} is outside the engine's profile "
                        f"(batch 1..{self.max_batch})"
                    )
            self.contexts[(graph, batch)] = context
        return context

    def _run(self, graph: str, batch: int, addresses: list[tuple[str, int]]) -> None:
        context = self._context(graph, batch)
        for name, address in addresses:
            if not context.set_tensor_address(name, address):
                raise RuntimeError(f"TensorRT {graph}: the address of {name} ({address:#x}) was refused")
        # The current stream: the backend's (see `scope`), or the capture stream while a graph is recorded.
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue the {graph} engine")

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        ws = Workspace.allocate(self.ops, self.dims, batch, steps, frames, align=TENSOR_ALIGNMENT)
        ws.private.update(tensor_addresses(ws, self.has_heads, self.has_value, self.has_policy))
        return ws

    def encode_into(self, ws: Workspace) -> None:
        self._run("encoder", ws.batch, ws.private["encoder"])

    def step_into(self, ws: Workspace, t: int) -> None:
        self._run("prior_step", ws.batch, ws.private["steps"][t])

    def decode_into(self, ws: Workspace) -> None:
        self._run("decoder", ws.batch, ws.private["decoder"])

    def policy_into(self, ws: Workspace) -> None:
        self._run("policy", ws.batch, ws.private["policy"])

    def compile(self, loop, ws: Workspace):
        # The warm-up runs inside capture_cuda_graph also flush TensorRT's deferred shape-dependent work, which
        # the TensorRT guide asks for (one enqueue after set_input_shape) before a capture.
        return capture_cuda_graph(loop, self.device) if self.capture else loop

    def scope(self):
        return on_stream(self.stream)
