"""The GPU-path defects whose mechanism runs on a CPU: call ordering, tensor addresses, precision flags and
error mapping. The rest is in tests/test_gpu.py, which `make gpu-check` runs on a GPU."""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import torch

from wm_core import ActionCodec, Config, WorldModel, save_checkpoint
from wm_core.errors import EXIT_NO_TENSORRT
from wm_core.onnxruntime_session import ProviderUnavailableError, check_provider_in_use, create_session
from wm_core.tensorrt_engine import TensorRTUnavailableError, create_builder, create_runtime
from wm_deploy import LatentState, Rollout
from wm_deploy.backends.base import TorchOps, Workspace
from wm_deploy.backends.torch_backend import TorchBackend, float32_matmul
from wm_deploy.backends.trt_backend import TENSOR_ALIGNMENT, tensor_addresses
from wm_deploy.loading import Dims
from wm_export import export_artifacts
from wm_export.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = Config.from_dict({"model": {"size": "tiny"}})
    path = tmp_path_factory.mktemp("defects") / "tiny.pt"
    save_checkpoint(path, WorldModel(cfg.model), cfg, ActionCodec("continuous", 3, (0.0,) * 3, (1.0,) * 3))
    return path


class WarmingBackend(TorchBackend):
    """Compiles as `capture_cuda_graph` does: the loop runs (twice as warm-up, once captured) on whatever the
    workspace holds, then the compiled loop is returned."""

    def compile(self, loop, ws):
        for _ in range(3):
            loop()
        return loop


def test_the_first_sampled_imagine_of_a_bucket_uses_its_noise_once(tiny):
    """Defect 1: compiling after the call's noise was written scaled it by std three times."""
    from wm_core import load_checkpoint

    model, _, extras = load_checkpoint(tiny)
    plain = Rollout.load(tiny, backend="torch", device="cpu")
    warming = Rollout(WarmingBackend(model, torch.device("cpu"), 64), extras["action_codec"])
    rng = np.random.default_rng(0)
    state = LatentState(np.tanh(rng.standard_normal((4, 32))).astype(np.float32), rng.standard_normal((4, 8)))
    state = LatentState(state.h, state.z.astype(np.float32))
    actions = rng.standard_normal((4, 7, 3)).astype(np.float32)
    noise = rng.standard_normal((4, 7, 8)).astype(np.float32)
    for _ in range(2):  # the first call compiles, the second reuses
        got = warming.imagine(state, actions, sample=True, noise=noise)
        want = plain.imagine(state, actions, sample=True, noise=noise)
        np.testing.assert_allclose(got.z, want.z, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 33, 256])
@pytest.mark.parametrize("steps", [1, 5, 15])
@pytest.mark.parametrize("latent, action", [(8, 3), (30, 6), (32, 1)])
def test_every_tensorrt_tensor_address_is_256_byte_aligned(batch, steps, latent, action):
    """Defect 3: per-step slices of a time-major buffer were only 4-byte aligned at small batches."""
    dims = Dims(deter=37, latent=latent, action=action, frame=(16, 16, 3))
    ws = Workspace.allocate(TorchOps(torch.device("cpu")), dims, batch, steps, frames=True, align=TENSOR_ALIGNMENT)
    bindings = tensor_addresses(ws, heads=True)
    assert [name for name, _ in bindings["steps"][0]][-2:] == ["reward", "cont"]
    addresses = [a for step in bindings["steps"] for _, a in step] + [
        a for graph in ("encoder", "decoder") for _, a in bindings[graph]
    ]
    assert all(address % TENSOR_ALIGNMENT == 0 for address in addresses)
    # the padding leaves the views' shapes and the batch-major trajectory views intact
    assert ws.hs[0].shape == (batch, 37) and ws.trajectory["z"].shape == (batch, steps, latent)
    ws.zs[1].fill_(1.0)
    assert float(ws.trajectory["z"][:, 0].sum()) == batch * latent and float(ws.z.sum()) == batch * latent


def test_float32_scope_turns_tf32_off_and_restores_the_callers_setting():
    """Defect 6: TF32 stays off inside the fp32 scope whatever the caller set, and comes back after."""
    matmul = torch.backends.cuda.matmul
    knob, on = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, knob)
    setattr(matmul, knob, on)
    try:
        with float32_matmul("ieee"):
            assert getattr(matmul, knob) in ("ieee", False)
        assert getattr(matmul, knob) == on
    finally:
        setattr(matmul, knob, before)


def test_a_session_that_fell_back_to_the_cpu_provider_is_refused(tiny, tmp_path):
    """Defect 7: a session asked for CUDA but running on CPUExecutionProvider raises instead of running."""
    pytest.importorskip("onnxruntime")
    folder = export_artifacts(tiny, tmp_path / "artifacts")
    session = create_session(folder / "prior_step.onnx")
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailableError, match="could not load CUDAExecutionProvider"):
        check_provider_in_use(session, folder / "prior_step.onnx")


@pytest.fixture
def tensorrt_without_a_driver(monkeypatch):
    """A TensorRT whose Builder and Runtime constructors fail as they do on a driver too old for it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    def refuse(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt.Logger, trt.Builder, trt.Runtime = Logger, refuse, refuse
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return trt


def test_a_tensorrt_driver_mismatch_is_tensorrt_unavailable(tensorrt_without_a_driver):
    """Defect 8: the TypeError of trt.Builder / trt.Runtime becomes TensorRTUnavailableError."""
    for create in (create_builder, create_runtime):
        with pytest.raises(TensorRTUnavailableError, match="driver"):
            create()


def test_wm_export_trt_keeps_the_onnx_artifacts_when_tensorrt_cannot_start(tiny, tmp_path, tensorrt_without_a_driver):
    """Defect 8: the staging folder was deleted; now the ONNX artifacts are published and the exit code is 3."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "artifacts"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny), "-o", str(out), "--trt", "--no-progress"], standalone_mode=False)
    assert exit_info.value.code == EXIT_NO_TENSORRT
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json", "prior_step.onnx"]


class RecordingContext:
    """Stands in for a TensorRT execution context (TensorRT cannot be installed here): records the input shapes
    set on it and refuses what TensorRT refuses (a batch beyond the profile, an unaligned address)."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.shapes: list[tuple] = []

    def set_input_shape(self, name, shape):
        self.shapes.append(shape)
        return shape[0] <= self.max_batch

    def set_tensor_address(self, name, address):
        return address % TENSOR_ALIGNMENT == 0

    def execute_async_v3(self, stream):
        return True


@pytest.fixture
def recording_backend(monkeypatch):
    """A TrtBackend around stand-in engines, on the CPU (no stream, no device to make current)."""
    from wm_deploy.backends.trt_backend import TrtBackend

    class Engine:
        def create_execution_context(self):
            return RecordingContext(max_batch=64)

    backend = TrtBackend.__new__(TrtBackend)
    backend.engines = {"prior_step": Engine()}
    backend.contexts = {}
    backend.input_shapes = {"prior_step": {"h": (32,), "z": (8,), "action": (3,)}}
    backend.max_batch, backend.device = 64, torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=0))
    return backend


def test_each_tensorrt_batch_size_has_its_own_context_with_its_shapes_set_once(recording_backend):
    """Defect 2: one context was shared by every bucket, so a batch-4 call re-shaped the context a batch-8 CUDA
    graph had been captured on."""
    aligned = [("h", 0), ("z", 256), ("action", 512)]
    for batch in (8, 4, 8, 4, 8):
        recording_backend._run("prior_step", batch, aligned)
    contexts = recording_backend.contexts
    assert set(contexts) == {("prior_step", 8), ("prior_step", 4)}
    assert {b: {s[0] for s in c.shapes} for (_, b), c in contexts.items()} == {8: {8}, 4: {4}}
    assert all(len(c.shapes) == 3 for c in contexts.values())  # h, z, action: set once, when it was made


def test_a_refused_tensorrt_address_or_shape_raises(recording_backend):
    """Defect 3: a False from set_tensor_address / set_input_shape left the previous buffer bound, silently."""
    with pytest.raises(RuntimeError, match="address of z"):
        recording_backend._run("prior_step", 2, [("h", 0), ("z", 4), ("action", 512)])
    with pytest.raises(ValueError, match="outside the engine's profile"):
        recording_backend._run("prior_step", 65, [("h", 0)])


def test_auto_does_not_pick_fp16_engines_unless_fp16_is_asked_for(tiny_artifacts, tmp_path):
    """Defect 8: `auto` on CUDA took whatever engines a folder held; fp16 engines are now skipped, with the
    reason, unless precision="fp16" is asked for. (Nothing else can run this folder here: its checkpoint is
    gone and onnxruntime has no CUDA provider, so the error lists every reason.)"""
    import json
    import shutil

    from wm_deploy.loading import Options, build_auto, open_source

    folder = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts("continuous"), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoint"]["path"] = str(tmp_path / "gone.pt")
    manifest["tensorrt"] = {
        "precision": "fp16",
        "version": "10.13.0",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "profile": {"min": 1, "opt": 8, "max": 64},
        "engines": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    source = open_source(folder)
    with pytest.raises(ValueError, match="tensorrt: the engines are fp16; pass precision='fp16'"):
        build_auto(source, torch.device("cuda"), Options())
    with pytest.raises(ValueError) as asked:
        build_auto(source, torch.device("cuda"), Options(precision="fp16"))
    assert "engines are fp16" not in str(asked.value) and "tensorrt:" in str(asked.value)
