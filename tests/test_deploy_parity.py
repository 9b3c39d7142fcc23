"""Every available backend against the torch reference on the same artifacts: single steps, observe, 50-step
imagine with the prior mean and with shared noise, decode; at batch sizes 1, 33 and 256.

Backends this machine cannot run (TensorRT, anything on CUDA without a GPU) skip with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_deploy import Rollout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCHES = (1, 33, 256)
HORIZON = 50

CANDIDATES = [("onnxruntime", "cpu"), ("onnxruntime", "cuda"), ("torch", "cuda"), ("tensorrt", "cuda")]


@pytest.fixture(scope="module", params=["continuous", "discrete"])
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def reference(mode, tiny_artifacts):
    return Rollout.load(tiny_artifacts(mode), backend="torch", device="cpu")


@pytest.fixture(scope="module", params=CANDIDATES, ids=lambda c: f"{c[0]}-{c[1]}")
def candidate(request, mode, tiny_artifacts, backend_or_skip, tolerances):
    name, device = request.param
    rollout = backend_or_skip(name, tiny_artifacts(mode), device)
    key = name if name != "tensorrt" else f"tensorrt-{rollout.backend_detail.split()[2]}"  # precision
    if name != "tensorrt" and device == "cuda":
        key = "torch-cuda" if name == "torch" else name
    return rollout, tolerances[key]


@pytest.fixture
def close(max_abs):
    def check(actual, expected, tolerance, what):
        difference = max_abs(actual, expected)
        assert difference <= tolerance, f"{what}: max |difference| {difference:.3g} > {tolerance:g}"

    return check


@pytest.mark.parametrize("batch", BATCHES)
def test_single_steps_match_reference(reference, candidate, mode, batch, close, random_frames, random_actions):
    rollout, (latent_tol, _) = candidate
    rng = np.random.default_rng(batch)
    h = rng.standard_normal((batch, reference.dims.deter)).astype(np.float32)
    z = rng.standard_normal((batch, reference.dims.latent)).astype(np.float32)
    action = random_actions(mode, batch, None, seed=batch)
    for name, actual, expected in zip(
        ("h_next", "prior_mean", "prior_std"), rollout.prior_step(h, z, action), reference.prior_step(h, z, action)
    ):
        close(actual, expected, latent_tol, name)
    frames = random_frames(batch, seed=batch)
    for name, actual, expected in zip(("z_mean", "z_std"), rollout.encode(frames), reference.encode(frames)):
        close(actual, expected, latent_tol, name)


@pytest.mark.parametrize("batch", BATCHES)
def test_observe_and_imagine_match_reference(reference, candidate, mode, batch, close, random_frames, random_actions):
    rollout, (latent_tol, frame_tol) = candidate
    frames = [random_frames(batch, seed=s) for s in range(2)]
    first_action = random_actions(mode, batch, None, seed=7)
    actions = random_actions(mode, batch, HORIZON, seed=8)
    noise = np.random.default_rng(9).standard_normal((batch, HORIZON, reference.dims.latent)).astype(np.float32)

    states = {}
    for name, ro in (("candidate", rollout), ("reference", reference)):
        state = ro.observe(ro.initial(batch), frames[0])
        states[name] = ro.observe(state, frames[1], first_action)
    for field in ("h", "z"):
        close(getattr(states["candidate"], field), getattr(states["reference"], field), latent_tol, f"observe {field}")

    mean = rollout.imagine(states["candidate"], actions), reference.imagine(states["reference"], actions)
    sampled = (
        rollout.imagine(states["candidate"], actions, sample=True, noise=noise),
        reference.imagine(states["reference"], actions, sample=True, noise=noise),
    )
    for what, (actual, expected) in (("mean", mean), ("shared noise", sampled)):
        for field in ("z", "h", "prior_mean", "prior_std"):
            close(getattr(actual, field), getattr(expected, field), latent_tol, f"imagine {what} {field}")

    close(rollout.decode(mean[0].z[:, -1]), reference.decode(mean[1].z[:, -1]), frame_tol, "decode frames")


def test_seeded_noise_is_shared_by_backends_on_one_device(
    reference, mode, tiny_artifacts, backend_or_skip, tolerances, max_abs, random_frames, random_actions
):
    """Same seed, same device: the same draws, so backends compare on identical noise without passing it."""
    rollout = backend_or_skip("onnxruntime", tiny_artifacts(mode), "cpu")
    state = reference.observe(reference.initial(4), random_frames(4))
    actions = random_actions(mode, 4, 10)
    a = rollout.imagine(state, actions, sample=True, seed=5)
    b = reference.imagine(state, actions, sample=True, seed=5)
    assert max_abs(a.z, b.z) <= tolerances["onnxruntime"][0]
    assert max_abs(a.z, a.prior_mean) > 1e-2  # the draws were used


def test_outputs_come_back_as_torch_for_torch_inputs(candidate, mode, random_frames, random_actions):
    rollout, (latent_tol, _) = candidate
    state = rollout.initial(2, kind="torch")
    state = rollout.observe(state, torch.from_numpy(random_frames(2)))
    traj = rollout.imagine(state, torch.from_numpy(random_actions(mode, 2, 5)))
    for value in (state.h, state.z, traj.z, traj.h, traj.prior_mean, traj.prior_std):
        assert isinstance(value, torch.Tensor) and value.device.type == rollout.device.type
