"""Bad input is refused with ValueError / FileNotFoundError naming the expected and the actual value, before
it reaches a runtime: never a silent wrong answer or a crash inside onnxruntime or TensorRT. A tampered
artifact file: test_faults.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from wm_deploy import LatentState, Rollout
from wm_deploy.backends.trt_backend import check_engine_compatible

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def rollout(request, tiny_artifacts):
    return Rollout.load(tiny_artifacts("continuous"), backend=request.param, device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def discrete(tiny_artifacts):
    return Rollout.load(tiny_artifacts("discrete"), backend="onnxruntime", device="cpu")


@pytest.fixture
def state(rollout, random_frames):
    return rollout.observe(rollout.initial(2), random_frames(2))


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 3, 64, 64), np.uint8), r"expected frames of shape \[B, 64, 64, 3\].*got shape \[2, 3, 64, 64\]"),
        (np.zeros((2, 32, 32, 3), np.uint8), r"got shape \[2, 32, 32, 3\]"),
        (np.zeros((64, 64, 3), np.uint8), r"got shape \[64, 64, 3\]"),
        (np.zeros((2, 64, 64, 3), np.float32), r"expected dtype uint8.*got float32"),
        (torch.zeros((2, 64, 64, 3)), r"expected dtype uint8.*got float32"),
        ([[0]], r"expected a numpy array or a torch tensor, got list"),
    ],
)
def test_bad_frames_are_refused(rollout, frames, message):
    with pytest.raises(ValueError, match=message):
        rollout.observe(rollout.initial(2), frames)
    with pytest.raises(ValueError, match=message):
        rollout.encode(frames)


def test_wrong_action_width_is_refused(rollout, state, random_frames):
    with pytest.raises(ValueError, match=r"expected continuous actions of shape \[B, H, 3\] with B=2, got \[2, 5, 4\]"):
        rollout.imagine(state, np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"prev_action: expected continuous actions of shape \[B, 3\].*got \[2, 2\]"):
        rollout.observe(state, random_frames(2), np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(rollout, state, bad, random_actions):
    actions = random_actions("continuous", 2, 4)
    actions[1, 2, 0] = bad
    with pytest.raises(ValueError, match="actions: actions contain NaN or infinite values"):
        rollout.imagine(state, actions)
    h = state.h.copy()
    h[0, 0] = bad
    with pytest.raises(ValueError, match="state.h: contains NaN or infinite values"):
        rollout.imagine(LatentState(h, state.z), random_actions("continuous", 2, 4))
    noise = np.zeros((2, 4, rollout.dims.latent), np.float32)
    noise[0, 0, 0] = bad
    with pytest.raises(ValueError, match="noise: contains NaN or infinite values"):
        rollout.imagine(state, random_actions("continuous", 2, 4), sample=True, noise=noise)
    z = np.zeros((1, rollout.dims.latent), np.float32)
    z[0, 0] = bad
    with pytest.raises(ValueError, match="z: contains NaN or infinite values"):
        rollout.decode(z)


def test_discrete_actions_out_of_range_or_not_integers_are_refused(discrete, random_frames):
    state = discrete.observe(discrete.initial(2), random_frames(2))
    with pytest.raises(ValueError, match=r"discrete actions must lie in \[0, 5\], got \[0, 6\]"):
        discrete.imagine(state, np.array([[0, 6], [1, 2]]))
    with pytest.raises(ValueError, match=r"discrete actions must lie in \[0, 5\], got \[-1, 2\]"):
        discrete.observe(state, random_frames(2), np.array([-1, 2]))
    with pytest.raises(ValueError, match="discrete actions must be integers, got dtype float32"):
        discrete.imagine(state, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected discrete actions of shape \[B, H\] with B=2, got \[2, 3, 6\]"):
        discrete.imagine(state, np.zeros((2, 3, 6), np.int64))


def test_a_batch_above_the_maximum_is_refused(rollout, random_frames, random_actions):
    with pytest.raises(ValueError, match=r"batch must be in \[1, 8\].*got 9"):
        rollout.initial(9)
    with pytest.raises(ValueError, match=r"obs: batch must be in \[1, 8\].*got 9"):
        rollout.encode(random_frames(9))
    big = LatentState(np.zeros((9, rollout.dims.deter), np.float32), np.zeros((9, rollout.dims.latent), np.float32))
    with pytest.raises(ValueError, match=r"state: batch must be in \[1, 8\].*got 9"):
        rollout.imagine(big, random_actions("continuous", 9, 3))
    with pytest.raises(ValueError, match=r"batch must be in \[1, 8\].*got 0"):
        rollout.initial(0)


def test_a_horizon_of_zero_is_refused(rollout, state):
    with pytest.raises(ValueError, match=r"the horizon \(axis 1\) must be >= 1, got 0"):
        rollout.imagine(state, np.zeros((2, 0, 3), np.float32))
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        rollout.warmup(2, 0)


def test_a_state_from_another_batch_size_is_refused(rollout, state, random_frames, random_actions):
    with pytest.raises(ValueError, match="state: batch size 2 does not match the batch size 4"):
        rollout.observe(state, random_frames(4), random_actions("continuous", 4, None))
    with pytest.raises(ValueError, match=r"expected continuous actions of shape \[B, H, 3\] with B=2, got \[3, 5, 3\]"):
        rollout.imagine(state, random_actions("continuous", 3, 5))
    with pytest.raises(ValueError, match=r"noise: expected shape \[2, 5, 8\], got \[2, 4, 8\]"):
        rollout.imagine(state, random_actions("continuous", 2, 5), sample=True, noise=np.zeros((2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="h and z disagree on the batch size: 2 vs 1"):
        rollout.imagine(LatentState(state.h, state.z[:1]), random_actions("continuous", 2, 5))


def test_bad_state_shapes_and_missing_previous_action_are_refused(rollout, state, random_frames, random_actions):
    with pytest.raises(ValueError, match=r"state.h: expected shape \[B, 32\], got \[2, 31\]"):
        rollout.imagine(LatentState(state.h[:, :31], state.z), random_actions("continuous", 2, 3))
    with pytest.raises(ValueError, match="state.z: expected a float array, got dtype int64"):
        rollout.imagine(LatentState(state.h, state.z.astype(np.int64)), random_actions("continuous", 2, 3))
    with pytest.raises(ValueError, match="prev_action: required to advance a state that has seen a frame"):
        rollout.observe(state, random_frames(2))
    with pytest.raises(ValueError, match="noise and seed only apply with sample=True"):
        rollout.imagine(state, random_actions("continuous", 2, 3), seed=1)


def test_missing_artifacts_are_refused(tmp_path, artifact_copy):
    folder = artifact_copy("continuous", tmp_path / "artifacts")
    (folder / "encoder.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.onnx is listed in the manifest but missing"):
        Rollout.load(folder, backend="onnxruntime", device="cpu")
    with pytest.raises(FileNotFoundError, match="no artifact folder or checkpoint at"):
        Rollout.load(tmp_path / "nowhere", device="cpu")
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="is not an artifact folder: no manifest.json"):
        Rollout.load(folder, device="cpu")


def test_the_torch_backend_of_a_folder_needs_its_unchanged_checkpoint(tmp_path, artifact_copy, tiny_checkpoint):
    folder = artifact_copy("continuous", tmp_path / "artifacts")
    manifest = json.loads((folder / "manifest.json").read_text())
    checkpoint = tmp_path / "moved.pt"
    manifest["checkpoint"]["path"] = str(checkpoint)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=f"needs the checkpoint this folder was exported from, {checkpoint}"):
        Rollout.load(folder, backend="torch", device="cpu")
    shutil.copy(tiny_checkpoint("discrete"), checkpoint)
    with pytest.raises(ValueError, match="does not match the manifest's"):
        Rollout.load(folder, backend="torch", device="cpu")


def test_decode_without_an_exported_decoder_is_refused(tmp_path, artifact_copy):
    folder = artifact_copy("continuous", tmp_path / "artifacts")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["graphs"]["decoder"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "decoder.onnx").unlink()
    rollout = Rollout.load(folder, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match="no decoder"):
        rollout.decode(np.zeros((1, rollout.dims.latent), np.float32))


def test_unknown_backends_devices_and_mismatched_sources_are_refused(tiny_artifacts, tiny_checkpoint):
    with pytest.raises(ValueError, match=r"unknown backend 'openvino'; expected 'auto' or one of"):
        Rollout.load(tiny_artifacts("continuous"), backend="openvino", device="cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        Rollout.load(tiny_artifacts("continuous"), device="gpu")
    with pytest.raises(ValueError, match="runs an artifact folder; .* is a checkpoint"):
        Rollout.load(tiny_checkpoint("continuous"), backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match="TensorRT engines run on CUDA devices only"):
        Rollout.load(tiny_artifacts("continuous"), backend="tensorrt", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda asked for, but torch .* sees no CUDA device"):
            Rollout.load(tiny_artifacts("continuous"), device="cuda")


def test_engines_from_another_tensorrt_version_are_refused_before_loading():
    section = {"version": "10.0.1", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(ValueError, match=r"built with TensorRT 10.0.1, this is TensorRT 11.0.0; rebuild"):
        check_engine_compatible(section, torch.device("cuda"), "11.0.0")


def test_engines_for_another_gpu_are_refused_before_loading():
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA device to compare GPUs; torch {torch.__version__} sees none")
    section = {"version": "10.0.1", "gpu": "Some Other GPU", "compute_capability": "1.0"}
    with pytest.raises(ValueError, match=r"built for Some Other GPU \(compute capability 1.0\), this GPU is"):
        check_engine_compatible(section, torch.device("cuda"), "10.0.1")


def test_large_finite_values_are_not_mistaken_for_infinite_ones(rollout, state):
    h = np.full_like(state.h, 3e38)  # finite float32, though its sum is not
    h_next, _, _ = rollout.prior_step(h, state.z, np.full((2, 3), 1e30, np.float32))
    assert h_next.shape == state.h.shape
