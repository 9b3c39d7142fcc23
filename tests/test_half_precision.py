"""The torch backend's half-precision path on the CPU: the same step code the GPU runs (with the gate arithmetic
written out instead of the fused CUDA kernel), against float32, and the precision argument's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_deploy import LatentState, Rollout
from wm_deploy.backends.half_precision import HalfPrecisionPriorStep
from wm_deploy.backends.torch_backend import TorchBackend

HALF_TOLERANCE = 1e-2  # TensorRT fp16's tolerance on latents


@pytest.fixture(scope="module")
def default_model(untrained_model):
    return untrained_model("default")


def test_the_written_out_gru_step_is_torchs_gru_cell_in_float32(default_model):
    model, _, _ = default_model
    step = HalfPrecisionPriorStep(model.rssm, torch.float32)
    rng = np.random.default_rng(0)
    h, z, a = (torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for shape in ((5, 256), (5, 32), (5, 3)))
    with torch.no_grad():
        for got, want in zip(step(torch.tanh(h), z, a), model.rssm.step(torch.tanh(h), z, a)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_stays_within_1e_2_of_float32_over_15_steps(default_model, precision):
    model, _, codec = default_model
    rng = np.random.default_rng(1)
    state = LatentState(np.tanh(rng.standard_normal((16, 256))).astype(np.float32),
                        rng.standard_normal((16, 32)).astype(np.float32))  # fmt: skip
    actions = rng.uniform(-1, 1, (16, 15, 3)).astype(np.float32)
    frames = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    half = Rollout.from_model(model, codec, precision=precision)
    full = Rollout.from_model(model, codec)
    got, want = half.imagine(state, actions), full.imagine(state, actions)
    assert np.abs(got.z - want.z).max() <= HALF_TOLERANCE
    assert np.abs(got.h - want.h).max() <= HALF_TOLERANCE
    assert got.z.dtype == np.float32 and got.h.dtype == np.float32
    assert np.abs(half.encode(frames)[0] - full.encode(frames)[0]).max() <= HALF_TOLERANCE
    assert precision in half.backend_detail


def test_unknown_or_unsupported_precisions_are_refused(default_model, tiny_artifacts):
    model, _, _ = default_model
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchBackend(model, torch.device("cpu"), 8, precision="int8")
    with pytest.raises(ValueError, match="onnxruntime on cpu runs precision fp32"):
        Rollout.load(tiny_artifacts("continuous"), backend="onnxruntime", device="cpu", precision="bf16")
