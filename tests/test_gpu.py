"""The CUDA paths against the CPU reference (run by `make gpu-check`; every test skips without a CUDA device).

The torch backend on CUDA, with and without CUDA graphs, at B = 1, 33, 256: single prior steps, `observe`, and
50-step `imagine` with the mean and with shared noise, each against the same checkpoint on CPU in float32.
Single steps must agree to the export gate's 1e-4; a 50-step open loop to the larger of 1e-4 and DRIFT_FACTOR
times float32's own drift from float64 over that rollout (the gate's rule, wm_export/parity.py). Half
precision (bf16, fp16) gets TensorRT fp16's 1e-2 on latents over 15 steps. The reward and continuation heads
follow the same rules, and the planner, computing with torch tensors on the GPU, picks the CPU's actions; with
its tick captured as one CUDA graph, the same actions as without.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from wm_core import ActionCodec, Config, WorldModel, load_checkpoint, save_checkpoint
from wm_deploy import LatentState, Planner, Rollout
from wm_deploy.backends.torch_backend import TorchBackend
from wm_deploy.loading import Options, open_source, resolve_device, unavailable
from wm_export.parity import DRIFT_FACTOR

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason=f"needs a CUDA device (torch {torch.__version__})"),
]

LATENT_TOLERANCE = 1e-4
HALF_TOLERANCE = 1e-2
TF32_TOLERANCE = 1e-2
BATCHES = (1, 33, 256)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised default-size model (what runs is the same whatever the weights)."""
    torch.manual_seed(0)
    cfg = Config()
    path = tmp_path_factory.mktemp("gpu") / "default.pt"
    save_checkpoint(path, WorldModel(cfg.model), cfg, ActionCodec("continuous", 3, (0.0,) * 3, (1.0,) * 3))
    return path


@pytest.fixture(scope="module")
def heads_checkpoint(tmp_path_factory):
    """The same, with reward and continuation heads."""
    torch.manual_seed(0)
    cfg = Config.from_dict({"model": {"heads": True}})
    path = tmp_path_factory.mktemp("gpu") / "heads.pt"
    save_checkpoint(path, WorldModel(cfg.model), cfg, ActionCodec("continuous", 3, (0.0,) * 3, (1.0,) * 3))
    return path


@pytest.fixture(scope="module")
def cpu(checkpoint):
    return Rollout.load(checkpoint, backend="torch", device="cpu")


def inputs(batch: int, horizon: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "next_frames": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "h": np.tanh(rng.standard_normal((batch, 256))).astype(np.float32),
        "z": rng.standard_normal((batch, 32)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (batch, horizon, 3)).astype(np.float32),
        "noise": rng.standard_normal((batch, horizon, 32)).astype(np.float32),
    }


def float64_drift(checkpoint, x: dict[str, np.ndarray]) -> float:
    """Largest |float32 - float64| over the mean rollout of `x` on CPU: how far rounding alone moves it."""
    rssm = load_checkpoint(checkpoint)[0].rssm
    results = []
    for module, dtype in ((rssm, torch.float32), (copy.deepcopy(rssm).double(), torch.float64)):
        h, z, actions = (torch.from_numpy(x[k]).to(dtype) for k in ("h", "z", "actions"))
        with torch.no_grad():
            results.append(module.imagine(h, z, actions)[0].double())
    return float((results[0] - results[1]).abs().max())


def close(actual, expected, tolerance: float, what: str) -> None:
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    error = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert error <= tolerance, f"{what}: max abs error {error:.3g} > {tolerance:.1e}"


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cudagraphs"])
@pytest.mark.parametrize("batch", BATCHES)
def test_cuda_matches_the_cpu_reference(checkpoint, cpu, batch, cuda_graphs):
    gpu = Rollout.load(checkpoint, backend="torch", device="cuda", cuda_graphs=cuda_graphs)
    x = inputs(batch, 50)
    rollout_tolerance = max(LATENT_TOLERANCE, DRIFT_FACTOR * float64_drift(checkpoint, x))

    for name, got, want in zip(
        ("h_next", "prior_mean", "prior_std"),
        gpu.prior_step(x["h"], x["z"], x["actions"][:, 0]),
        cpu.prior_step(x["h"], x["z"], x["actions"][:, 0]),
    ):
        close(got, want, LATENT_TOLERANCE, f"prior_step {name}")

    states = {}
    for name, ro in (("gpu", gpu), ("cpu", cpu)):
        first = ro.observe(ro.initial(batch), x["frames"])
        states[name] = ro.observe(first, x["next_frames"], x["actions"][:, 0])
    close(states["gpu"].h, states["cpu"].h, LATENT_TOLERANCE, "observe h")
    close(states["gpu"].z, states["cpu"].z, LATENT_TOLERANCE, "observe z")

    state = LatentState(x["h"], x["z"])
    for kwargs in ({}, {"sample": True, "noise": x["noise"]}):
        got, want = gpu.imagine(state, x["actions"], **kwargs), cpu.imagine(state, x["actions"], **kwargs)
        label = "imagine sampled" if kwargs else "imagine mean"
        close(got.z, want.z, rollout_tolerance, f"{label} z (50 steps)")
        close(got.h, want.h, rollout_tolerance, f"{label} h (50 steps)")


def test_each_bucket_is_warmed_up_and_captured_before_its_inputs_are_written(checkpoint, cpu):
    """The first sampled call of every (batch, horizon) bucket, in an order that revisits buckets."""
    gpu = Rollout.load(checkpoint, backend="torch", device="cuda", cuda_graphs=True)
    for batch, horizon in ((8, 15), (4, 15), (8, 15), (8, 20), (4, 15)):
        x = inputs(batch, horizon, seed=batch * 100 + horizon)
        state = LatentState(x["h"], x["z"])
        got = gpu.imagine(state, x["actions"], sample=True, noise=x["noise"])
        want = cpu.imagine(state, x["actions"], sample=True, noise=x["noise"])
        close(got.z, want.z, 1e-3, f"sampled imagine B={batch} H={horizon}")


def test_fp32_ignores_the_callers_tf32_setting_and_restores_it(checkpoint, cpu):
    matmul = torch.backends.cuda.matmul
    knob = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, knob)
    setattr(matmul, knob, "tf32" if knob == "fp32_precision" else True)
    try:
        gpu = Rollout.load(checkpoint, backend="torch", device="cuda")
        x = inputs(256, 1)
        got = gpu.prior_step(x["h"], x["z"], x["actions"][:, 0])
        want = cpu.prior_step(x["h"], x["z"], x["actions"][:, 0])
        for a, b in zip(got, want):
            close(a, b, LATENT_TOLERANCE, "prior_step under a caller's TF32")
        close(gpu.encode(x["frames"])[0], cpu.encode(x["frames"])[0], LATENT_TOLERANCE, "encoder under TF32")
        assert getattr(matmul, knob) == ("tf32" if knob == "fp32_precision" else True)
        tf32 = Rollout.load(checkpoint, backend="torch", device="cuda", precision="tf32")
        close(tf32.prior_step(x["h"], x["z"], x["actions"][:, 0])[1], want[1], TF32_TOLERANCE, "tf32 opt-in")
    finally:
        setattr(matmul, knob, before)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_stays_within_1e_2_over_15_steps(checkpoint, cpu, precision):
    gpu = Rollout.load(checkpoint, backend="torch", device="cuda", precision=precision)
    x = inputs(256, 15)
    state = LatentState(x["h"], x["z"])
    got, want = gpu.imagine(state, x["actions"]), cpu.imagine(state, x["actions"])
    close(got.z, want.z, HALF_TOLERANCE, f"{precision} z (15 steps)")
    close(got.h, want.h, HALF_TOLERANCE, f"{precision} h (15 steps)")
    close(gpu.encode(x["frames"])[0], cpu.encode(x["frames"])[0], HALF_TOLERANCE, f"{precision} encoder")


@pytest.mark.parametrize("variant", ["eager", "cudagraphs", "bf16"])
def test_reward_and_continuation_on_cuda_match_the_cpu_reference(heads_checkpoint, variant):
    options = {"eager": {"cuda_graphs": False}, "cudagraphs": {}, "bf16": {"precision": "bf16"}}[variant]
    gpu = Rollout.load(heads_checkpoint, backend="torch", device="cuda", **options)
    cpu = Rollout.load(heads_checkpoint, backend="torch", device="cpu")
    tolerance = HALF_TOLERANCE if variant == "bf16" else LATENT_TOLERANCE
    for batch in (1, 256):
        x = inputs(batch, 15, seed=batch)
        state = LatentState(x["h"], x["z"])
        got, want = gpu.imagine(state, x["actions"]), cpu.imagine(state, x["actions"])
        assert got.reward is not None and got.cont is not None and got.reward.shape == (batch, 15)
        close(got.reward, want.reward, tolerance, f"{variant} reward B={batch} (15 steps)")
        close(got.cont, want.cont, tolerance, f"{variant} continuation B={batch} (15 steps)")


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cudagraphs"])
def test_the_planner_on_cuda_acts_as_on_the_cpu(planner_model, planner_targets, mode, cuda_graphs):
    """Torch tensors on the GPU against numpy on the CPU, from the same host-side draws."""
    model, _, codec = planner_model(mode)
    bounds = None if mode == "discrete" else ([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    actions = {}
    for device in ("cpu", "cuda"):
        rollout = Rollout.from_model(model.to(device), codec, device, cuda_graphs=cuda_graphs)
        planner = Planner(rollout, bounds=bounds, horizon=3, samples=256, iterations=6, seed=0)
        assert planner.xp.kind == ("torch" if device == "cuda" else "numpy")
        state = rollout.observe(rollout.initial(1), frame)
        actions[device] = np.asarray([planner.act(state) for _ in range(3)])
    np.testing.assert_allclose(actions["cuda"], actions["cpu"], atol=1e-4)
    np.testing.assert_allclose(actions["cuda"][-1], planner_targets[mode], atol=0.1)


@pytest.mark.parametrize("warmup", [False, True], ids=["captured-at-tick-2", "captured-at-warmup"])
def test_the_tick_graph_plans_as_the_planner_without_cuda_graphs(untrained_model, warmup):
    """The whole tick as one CUDA graph (wm_deploy.tick_graph) against the same planner on the same GPU without
    graphs: two episodes of closed-loop ticks with a reset between, the actor's plan mixed in."""
    model, _, codec = untrained_model("default", heads=True, actor_critic=True)
    frames = np.random.default_rng(0).integers(0, 256, (6, 1, 64, 64, 3), dtype=np.uint8)
    plans = {}
    for graphs in (False, True):
        rollout = Rollout.from_model(model, codec, "cuda", cuda_graphs=graphs)
        planner = Planner(rollout, bounds=([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]), seed=0)
        assert (planner._tick_graph is not None) == graphs
        if warmup:
            planner.warmup()
        plans[graphs] = []
        for episode in range(2):
            planner.reset(seed=episode)
            state = rollout.observe(rollout.initial(1), frames[0])
            for frame in frames[1:4]:
                plans[graphs].append(planner.plan(state))
                state = rollout.observe(state, frame, plans[graphs][-1].actions[:1])
        assert not graphs or planner._tick_graph.captured
    for eager, graph in zip(plans[False], plans[True]):
        np.testing.assert_allclose(graph.actions, eager.actions, atol=1e-4)
        np.testing.assert_allclose(graph.z, eager.z, atol=1e-4)
        assert graph.value == pytest.approx(eager.value, abs=1e-4)


class SyncingBackend(TorchBackend):
    """A step that reads a value back to the host: fine eagerly, impossible inside a CUDA graph capture."""

    def step_into(self, ws, t):
        super().step_into(ws, t)
        float(ws.hs[t + 1].sum())


def test_a_failed_capture_falls_back_to_the_eager_loop_with_a_warning(checkpoint, cpu):
    model, _, extras = load_checkpoint(checkpoint)
    # the torch loop (not the fused kernel, which never calls step_into)
    rollout = Rollout(SyncingBackend(model, torch.device("cuda"), 256, fused=False), extras["action_codec"])
    x = inputs(4, 6)
    state = LatentState(x["h"], x["z"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = rollout.imagine(state, x["actions"])
    assert any("CUDA graph capture failed" in str(w.message) for w in caught), [str(w.message) for w in caught]
    close(got.z, cpu.imagine(state, x["actions"]).z, 1e-3, "eager fallback")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (cuda:1 while cuda:0 is current)")
def test_a_device_that_is_not_the_current_one_captures_and_computes(checkpoint, cpu):
    assert torch.cuda.current_device() == 0
    gpu = Rollout.load(checkpoint, backend="torch", device="cuda:1")
    x = inputs(8, 15)
    state = LatentState(x["h"], x["z"])
    close(gpu.imagine(state, x["actions"]).z, cpu.imagine(state, x["actions"]).z, 1e-3, "imagine on cuda:1")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.update(actions=x["actions"][:, :, :2]), "actions"),
        (lambda x: x["actions"].__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda x: x.update(h=x["h"].astype(np.int32)), "float"),
        (lambda x: x.update(z=x["z"][:3]), "batch"),
    ],
)
def test_bad_inputs_on_cuda_fail_before_reaching_the_device(checkpoint, change, message):
    gpu = Rollout.load(checkpoint, backend="torch", device="cuda")
    x = inputs(4, 5)
    change(x)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in x.items()}
    with pytest.raises(ValueError, match=message):
        gpu.imagine(LatentState(tensors["h"], tensors["z"]), tensors["actions"])
    with pytest.raises(ValueError, match="batch must be in"):
        gpu.imagine(LatentState(*(torch.zeros(5000, n, device="cuda") for n in (256, 32))), torch.zeros(5000, 2, 3))


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_other_cuda_backends_match_the_cpu_reference(checkpoint, cpu, tmp_path, backend):
    from wm_export import TensorRTUnavailableError, export_artifacts

    try:
        folder = export_artifacts(checkpoint, tmp_path / "artifacts", trt=backend == "tensorrt")
    except TensorRTUnavailableError as error:  # a parity error or a bug is a failure, not a skip
        pytest.skip(f"{backend}: TensorRT or its CUDA device missing: {error}")
    except ImportError as error:
        if error.name is None or not error.name.startswith("tensorrt"):
            raise
        pytest.skip(f"{backend}: TensorRT is not installed ({error})")
    reason = unavailable(backend, open_source(folder), resolve_device("cuda"), Options())
    if reason is not None:
        pytest.skip(f"{backend} on cuda unavailable: {reason}")
    gpu = Rollout.load(folder, backend=backend, device="cuda")
    # One context per batch size: a batch-8 bucket replayed after a batch-4 call computes batch 8.
    for batch in (8, 4, 8):
        x = inputs(batch, 15, seed=batch)
        state = LatentState(x["h"], x["z"])
        close(gpu.imagine(state, x["actions"]).z, cpu.imagine(state, x["actions"]).z, 1e-3, f"{backend} B={batch}")
