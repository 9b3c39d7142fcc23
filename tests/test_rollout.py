"""Rollout semantics (they must be training's), output kinds and ownership, buffer reuse, backend choice."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from wm_core.checkpoint import load_checkpoint
from wm_deploy import LatentState, Rollout
from wm_deploy.actions import ActionWriter
from wm_deploy.backends.base import NumpyOps, TorchOps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXACT = 1e-5  # same backend, same arithmetic: only float32 rounding of reordered ops


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def rollout(request, tiny_artifacts):
    return Rollout.load(tiny_artifacts("continuous"), backend=request.param, device="cpu")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    model, _, _ = load_checkpoint(tiny_checkpoint("continuous"))
    return model


def _frames_as_model_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]


def test_observe_follows_training_teacher_forcing(rollout, model, codecs, random_frames, random_actions, max_abs):
    """observe over a sequence gives training's teacher-forced priors: h_0 = 0 with the first frame,
    h_t+1 = GRU(h_t, [z_t, a_t]) with the posterior mean z_t."""
    codec = codecs["continuous"]
    B, T = 3, 5
    frames = [random_frames(B, seed=t) for t in range(T)]
    actions = random_actions("continuous", B, T, seed=1)
    state = rollout.initial(B)
    priors = []
    for t in range(T):
        if t > 0:
            priors.append(rollout.prior_step(state.h, state.z, actions[:, t - 1])[1])
        state = rollout.observe(state, frames[t], actions[:, t - 1] if t > 0 else None)

    with torch.no_grad():
        obs = torch.stack([_frames_as_model_input(f) for f in frames], 1)  # T x [B, 3, H, W] -> [B, T, 3, H, W]
        mean, _ = model.encode(obs)
        expected_priors, _ = model.rssm.observe(mean, codec.encode(torch.from_numpy(actions)))
    assert max_abs(state.z, mean[:, -1]) < EXACT
    assert max_abs(np.stack(priors, 1), expected_priors) < EXACT


def test_first_observe_keeps_h_zero_and_ignores_the_action(rollout, random_frames, random_actions, max_abs):
    frames = random_frames(2)
    state = rollout.observe(rollout.initial(2), frames, random_actions("continuous", 2, None))
    assert np.all(state.h == 0) and not state.is_initial
    assert max_abs(state.z, rollout.encode(frames)[0]) == 0


def test_imagine_with_the_mean_matches_training_imagine(rollout, model, codecs, random_frames, random_actions, max_abs):
    codec = codecs["continuous"]
    state = rollout.observe(rollout.initial(4), random_frames(4))
    actions = random_actions("continuous", 4, 15)
    traj = rollout.imagine(state, actions)
    with torch.no_grad():
        z, std, h = model.rssm.imagine(
            torch.from_numpy(state.h), torch.from_numpy(state.z), codec.encode(torch.from_numpy(actions))
        )
    assert traj.z.shape == (4, 15, rollout.dims.latent) and traj.h.shape == (4, 15, rollout.dims.deter)
    assert max_abs(traj.z, z) < EXACT and max_abs(traj.h, h) < EXACT and max_abs(traj.prior_std, std) < EXACT
    assert max_abs(traj.z, traj.prior_mean) == 0


def test_sampled_z_is_mean_plus_std_times_the_given_noise(rollout, random_frames, random_actions, max_abs):
    state = rollout.observe(rollout.initial(2), random_frames(2))
    actions = random_actions("continuous", 2, 6)
    noise = np.random.default_rng(3).standard_normal((2, 6, rollout.dims.latent)).astype(np.float32)
    traj = rollout.imagine(state, actions, sample=True, noise=noise)
    assert max_abs(traj.z, traj.prior_mean + traj.prior_std * noise) < EXACT
    # The sampled z is what the next step was fed: its prior differs from the mean rollout's.
    assert max_abs(traj.prior_mean[:, 1:], rollout.imagine(state, actions).prior_mean[:, 1:]) > 1e-3


def test_seeded_sampling_is_reproducible_and_the_default_generator_advances(
    rollout, random_frames, random_actions, max_abs
):
    state = rollout.observe(rollout.initial(2), random_frames(2))
    actions = random_actions("continuous", 2, 6)
    a = rollout.imagine(state, actions, sample=True, seed=11)
    b = rollout.imagine(state, actions, sample=True, seed=11)
    c = rollout.imagine(state, actions, sample=True, seed=12)
    d, e = (rollout.imagine(state, actions, sample=True) for _ in range(2))
    assert max_abs(a.z, b.z) == 0 and max_abs(a.z, c.z) > 1e-3 and max_abs(d.z, e.z) > 1e-3


def test_outputs_are_owned_by_the_caller_and_buffers_are_reused(rollout, random_frames, random_actions, max_abs):
    state = rollout.observe(rollout.initial(1), random_frames(1))
    actions = random_actions("continuous", 1, 15)
    first = rollout.imagine(state, actions)
    kept = first.z.copy()
    buckets = dict(rollout._workspaces)
    second = rollout.imagine(state, actions * 2)
    assert np.array_equal(first.z, kept), "a later call overwrote an earlier result"
    assert max_abs(first.z, second.z) > 1e-4
    assert dict(rollout._workspaces) == buckets, "a repeated (batch, horizon) allocated new buffers"


def test_torch_inputs_give_torch_outputs_and_numpy_gives_numpy(rollout, random_frames, random_actions):
    state = rollout.observe(rollout.initial(2, kind="torch"), torch.from_numpy(random_frames(2)))
    traj = rollout.imagine(state, torch.from_numpy(random_actions("continuous", 2, 3)))
    assert all(isinstance(x, torch.Tensor) for x in (state.h, state.z, traj.z, traj.h))
    frames = rollout.decode(traj.z[:, -1].numpy())
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32


def test_decode_gives_frames_in_unit_range_for_any_leading_shape(rollout, random_frames, random_actions, max_abs):
    state = rollout.observe(rollout.initial(2), random_frames(2))
    traj = rollout.imagine(state, random_actions("continuous", 2, 4))
    last = rollout.decode(traj.z[:, -1])
    every = rollout.decode(traj.z)
    assert last.shape == (2, 64, 64, 3) and every.shape == (2, 4, 64, 64, 3)
    assert 0 <= every.min() and every.max() <= 1
    assert max_abs(every[:, -1], last) < EXACT


def test_imagine_continues_from_the_last_state(rollout, random_frames, random_actions, max_abs):
    state = rollout.observe(rollout.initial(2), random_frames(2))
    actions = random_actions("continuous", 2, 8)
    whole = rollout.imagine(state, actions)
    first = rollout.imagine(state, actions[:, :5])
    rest = rollout.imagine(first.last, actions[:, 5:])
    assert max_abs(whole.z[:, 5:], rest.z) < EXACT and max_abs(whole.h[:, 5:], rest.h) < EXACT


def test_discrete_actions_are_one_hot_encoded_as_in_training(
    tiny_artifacts, tiny_checkpoint, random_frames, random_actions, max_abs
):
    rollout = Rollout.load(tiny_artifacts("discrete"), backend="onnxruntime", device="cpu")
    model, _, extras = load_checkpoint(tiny_checkpoint("discrete"))
    state = rollout.observe(rollout.initial(3), random_frames(3))
    actions = random_actions("discrete", 3, 7)
    traj = rollout.imagine(state, actions)
    with torch.no_grad():
        z, _, _ = model.rssm.imagine(
            torch.from_numpy(state.h),
            torch.from_numpy(state.z),
            extras["action_codec"].encode(torch.from_numpy(actions)),
        )
    assert max_abs(traj.z, z) < 1e-4


def test_warmup_prepares_buckets_that_later_calls_reuse(rollout, random_frames, random_actions):
    rollout.warmup(5, 9)
    buckets = set(rollout._workspaces)
    state = rollout.observe(rollout.initial(5), random_frames(5))
    rollout.imagine(state, random_actions("continuous", 5, 9), sample=True)
    assert (5, 9, False) in buckets and set(rollout._workspaces) == buckets


def test_auto_picks_onnxruntime_for_artifacts_on_cpu_and_says_so(caplog, tiny_artifacts):
    with caplog.at_level(logging.INFO, logger="wm_deploy"):
        rollout = Rollout.load(tiny_artifacts("continuous"), backend="auto", device="cpu")
    assert rollout.backend_name == "onnxruntime"
    assert [r for r in caplog.records if "backend auto -> onnxruntime" in r.getMessage()]
    assert "fastest available on cpu" in rollout.backend_reason


def test_a_checkpoint_loads_on_the_torch_backend(tiny_checkpoint, random_frames):
    rollout = Rollout.load(tiny_checkpoint("continuous"), device="cpu")
    assert rollout.backend_name == "torch"
    state = rollout.observe(rollout.initial(1), random_frames(1))
    assert isinstance(state, LatentState) and state.z.shape == (1, rollout.dims.latent)


def test_importing_and_running_wm_deploy_leaves_the_trainer_unimported(tiny_artifacts):
    script = (
        "import sys, numpy as np\n"
        "from wm_deploy import Rollout\n"
        f"ro = Rollout.load({str(tiny_artifacts('continuous'))!r}, device='cpu')\n"
        "ro.imagine(ro.observe(ro.initial(1), np.zeros((1, 64, 64, 3), np.uint8)), np.zeros((1, 2, 3), np.float32))\n"
        "print(sorted(m for m in sys.modules if m in ('wm_train.trainer', 'wm_train.data')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"wm_deploy imported {result.stdout.strip()}"


def test_from_model_runs_a_model_in_memory_like_its_checkpoint(
    model, codecs, tiny_checkpoint, random_frames, random_actions, max_abs
):
    in_memory = Rollout.from_model(model, codecs["continuous"], device="cpu")
    from_file = Rollout.load(tiny_checkpoint("continuous"), backend="torch", device="cpu")
    frames, actions = random_frames(2), random_actions("continuous", 2, 6)
    a, b = (ro.imagine(ro.observe(ro.initial(2), frames), actions) for ro in (in_memory, from_file))
    assert in_memory.backend_name == "torch" and max_abs(a.z, b.z) == 0


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_actions_are_encoded_bit_for_bit_as_the_training_codec_does(mode, kind, dtype, codecs, random_actions):
    codec = codecs[mode]
    if (mode == "discrete") != (dtype == "int64"):
        pytest.skip("discrete actions are integers, continuous ones real")
    raw = random_actions(mode, 4, 6, seed=2).astype(dtype)  # [B, H, ...]
    ops = NumpyOps() if kind == "numpy" else TorchOps(torch.device("cpu"))
    written = ops.zeros((6, 4, codec.dim), "float32")  # time-major [H, B, A]
    ActionWriter(codec, ops).write(written, raw if kind == "numpy" else torch.from_numpy(raw), swap01=True)
    expected = codec.encode_numpy(raw) if kind == "numpy" else codec.encode(torch.from_numpy(raw)).numpy()
    assert np.array_equal(np.asarray(written).swapaxes(0, 1), expected)


def test_read_only_inputs_are_accepted_without_warnings(rollout, random_frames, random_actions):
    frames, actions = random_frames(2), random_actions("continuous", 2, 4)
    for array in (frames, actions):
        array.setflags(write=False)  # as frames from PIL (np.asarray of an image) are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = rollout.observe(rollout.initial(2), frames)
        rollout.imagine(state, actions)
