"""The GPU-path defects of issue 15 whose mechanism runs on a CPU: call ordering, tensor addresses, precision
flags and error mapping. The rest is in tests/test_gpu.py, which `make gpu-check` runs on a GPU."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from wm_core import ActionCodec, Config, WorldModel, save_checkpoint
from wm_core.onnxruntime_session import ProviderUnavailableError, check_provider_in_use, create_session
from wm_core.tensorrt_engine import TensorRTUnavailableError, create_builder, create_runtime
from wm_deploy import LatentState, Rollout
from wm_deploy.backends.base import TorchOps, Workspace
from wm_deploy.backends.torch_backend import TorchBackend, float32_matmul
from wm_deploy.backends.trt_backend import TENSOR_ALIGNMENT, tensor_addresses
from wm_deploy.loading import Dims
from wm_export import export_artifacts
from wm_export.cli import EXIT_NO_TENSORRT, main


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
    bindings = tensor_addresses(ws)
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
