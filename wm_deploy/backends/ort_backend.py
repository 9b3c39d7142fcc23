"""onnxruntime backend: the exported ONNX graphs, on the CPU execution provider or, with onnxruntime-gpu and a
CUDA device, the CUDA execution provider.

Every graph runs through IO binding on the workspace's preallocated buffers: for each step t of a workspace
one binding is made ahead of time, reading (h[t], z[t], action[t]) and writing (h[t+1], z[t+1], prior_std[t],
and reward[t], cont[t] for a model with heads) in place, so a step is a single `run_with_iobinding` call with
no per-step allocation, copy or rebinding. Binding a CPU buffer by address makes onnxruntime read and write
that memory directly.

On CUDA the buffers are torch tensors and onnxruntime runs on a stream of ours (`user_compute_stream`), so its
kernels and the loop's own tensor ops are ordered on one stream without a host sync per step.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import torch

from wm_core.graphs import graph_specs_of
from wm_core.manifest import VerifiedFile
from wm_core.onnxruntime_session import check_session_io, create_session, require_onnxruntime

from .base import ArrayOps, Dims, NumpyOps, TorchOps, Workspace, on_stream

STEP_THREADS = 1
"""intra-op threads of the prior step: a chain of small GEMVs gains nothing from a thread pool and pays for
waking it at every step"""

WIDE_STEP_BATCH = 16
"""on CPU, from this batch on the prior step runs on a session with one thread per core: its GEMMs are then
large enough to pay for the thread pool (measurements: docs/deployment.md)"""

FRAME_THREADS = 1
"""default intra-op threads of the encoder and decoder: right for the small batches of a control loop; the
convolutions of large batches of frames do parallelise, so raise it (`frame_threads`) for those"""


class OrtBackend:
    name = "onnxruntime"

    def __init__(
        self,
        files: dict[str, VerifiedFile],
        dims: Dims,
        device: torch.device,
        max_batch: int,
        frame_threads: int | None = None,
        precision: str = "fp32",
        heads: bool = False,
        thread_spinning: bool = True,
        value: bool = False,
    ):
        """`files`: graph name -> its .onnx file as read and verified (`read_verified`; `decoder` optional): the
        sessions are made from those bytes, and their inputs and outputs checked against the graph specs.
        precision: `fp32`, or `tf32` on CUDA (the graphs are float32; TF32 is the CUDA provider's opt-in).
        heads: the prior step outputs reward and cont; value: also the critic's value. thread_spinning: see
        Rollout.load. A `policy` file adds the actor's graph."""
        ort = require_onnxruntime()
        self.dims = dims
        self.device = device
        self.max_batch = max_batch
        self.has_decoder = "decoder" in files
        self.has_heads = heads
        self.has_value = value
        self.has_policy = "policy" in files
        # No RunOptions on CPU: onnxruntime's Python wrapper looks up the `gpu_graph_id` entry of any RunOptions it
        # is given, and an absent entry costs a C++ exception per call, more than a whole small step.
        self.run_options = None
        frame_threads = frame_threads or FRAME_THREADS
        threads = {name: STEP_THREADS if name == "prior_step" else frame_threads for name in files}
        if device.type == "cuda":
            self.ops: ArrayOps = TorchOps(device)
            # A stream of our own: onnxruntime treats torch's default stream (handle 0) as "no stream".
            self.stream: torch.cuda.Stream | None = torch.cuda.Stream(device)
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.binding_device = ("cuda", index)
            self.sessions = {
                name: create_session(
                    file.data, device, stream=self.stream.cuda_stream, tf32=precision == "tf32", name=file.path
                )
                for name, file in files.items()
            }
            # The loop's next op is ordered after onnxruntime's kernels by the shared stream; a host sync per
            # step would only add latency. gpu_graph_id is set (-1: no onnxruntime CUDA graph) so that the
            # wrapper's lookup of it finds an entry instead of raising (see above).
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self.run_options.add_run_config_entry("gpu_graph_id", "-1")
            self.detail = f"onnxruntime {ort.__version__}, CUDAExecutionProvider on {device}, {precision}, IO binding"
        else:
            self.ops = NumpyOps()
            self.stream = None
            self.binding_device = ("cpu", 0)
            self.sessions = {
                name: create_session(file.data, threads=threads[name], spinning=thread_spinning, name=file.path)
                for name, file in files.items()
            }
            cores = os.cpu_count() or 1
            if cores > 1:
                self.sessions["prior_step_wide"] = create_session(
                    files["prior_step"].data, threads=cores, spinning=thread_spinning, name=files["prior_step"].path
                )
            self.detail = f"onnxruntime {ort.__version__}, CPUExecutionProvider, IO binding"

        specs = graph_specs_of(dims.frame[0], dims.latent, dims.deter, dims.action, heads=heads, actor_critic=value)
        for name, file in files.items():
            check_session_io(self.sessions[name], specs[name], file.path)

    def _bind(self, session, inputs: dict, outputs: dict):
        binding = session.io_binding()
        kind, index = self.binding_device
        for names, bind in ((inputs, binding.bind_input), (outputs, binding.bind_output)):
            for name, array in names.items():
                if isinstance(array, torch.Tensor):
                    dtype, pointer = np.dtype(str(array.dtype).removeprefix("torch.")), array.data_ptr()
                else:
                    dtype, pointer = array.dtype, array.ctypes.data
                bind(name, kind, index, dtype, tuple(array.shape), pointer)
        return binding

    def _runner(self, graph: str, inputs: dict, outputs: dict):
        """A call that runs `graph` on these bound buffers.

        It calls the session's native run_with_iobinding directly: the Python wrapper adds per-call bookkeeping
        for WebGPU graph capture (a noticeable share of a small step; docs/deployment.md) that the CPU and CUDA
        providers never use. Where a future onnxruntime renames those internals, the public method is used."""
        session = self.sessions[graph]
        binding = self._bind(session, inputs, outputs)
        native_session, native_binding = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
        if native_session is None or native_binding is None:
            return functools.partial(session.run_with_iobinding, binding, self.run_options)
        return functools.partial(native_session.run_with_iobinding, native_binding, self.run_options)

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        ws = Workspace.allocate(self.ops, self.dims, batch, steps, frames)
        wide = batch >= WIDE_STEP_BATCH and "prior_step_wide" in self.sessions
        ws.private["steps"] = [
            self._runner(
                "prior_step_wide" if wide else "prior_step",
                {"h": ws.hs[t], "z": ws.zs[t], "action": ws.actions[t]},
                {"h_next": ws.hs[t + 1], "prior_mean": ws.zs[t + 1], "prior_std": ws.stds[t]}
                | ({"reward": ws.rewards[t], "cont": ws.conts[t]} if self.has_heads else {})
                | ({"value": ws.values[t]} if self.has_value else {}),
            )
            for t in range(steps)
        ]
        if self.has_policy:
            ws.private["policy"] = self._runner("policy", {"h": ws.hs[0], "z": ws.zs[0]}, {"action": ws.policy_action})
        if frames:
            ws.private["encoder"] = self._runner(
                "encoder", {"obs": ws.obs}, {"z_mean": ws.post_mean, "z_std": ws.post_std}
            )
            if self.has_decoder:
                ws.private["decoder"] = self._runner("decoder", {"z": ws.post_mean}, {"frames": ws.recon})
        return ws

    def encode_into(self, ws: Workspace) -> None:
        ws.private["encoder"]()

    def step_into(self, ws: Workspace, t: int) -> None:
        ws.private["steps"][t]()

    def decode_into(self, ws: Workspace) -> None:
        ws.private["decoder"]()

    def policy_into(self, ws: Workspace) -> None:
        ws.private["policy"]()

    def compile(self, loop, ws: Workspace):
        return loop

    def scope(self):
        if self.stream is None:
            return contextlib.nullcontext()
        return on_stream(self.stream)
