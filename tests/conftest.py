"""Shared fixtures. Tests get everything they share from here, as fixtures; no test module imports another.

- Data: a few short episodes recorded from real environments, and tiny configs over them.
- Models: an untrained model or checkpoint of any size preset and action mode, and the artifact folder of the
  tiny ones, exported once per session.
- Deployment: the backends this machine can run (or a skip saying what it lacks), their tolerances, random
  frames and actions.
- Benchmarks: a script of benchmarks/ loaded as a module.

Factories are fixtures that return a function, so a test or a module-scoped fixture can ask for several.
Dimensions: B batch, H horizon, A action width.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_core.actions import ActionCodec
from wm_core.checkpoint import save_checkpoint
from wm_core.config import Config
from wm_core.model import WorldModel
from wm_train.collect import record_episode
from wm_train.data import save_episode

# The action codec of every untrained model, by action mode: continuous 3-d (CarRacing), discrete 6 (Pong).
CODECS = {
    "continuous": ActionCodec("continuous", 3, (0.1, 0.2, 0.3), (1.0, 2.0, 0.5)),
    "discrete": ActionCodec("discrete", 6),
}

# Largest accepted absolute difference from the torch reference on latents (h, z, means, stds) and frames.
TOLERANCES = {
    "onnxruntime": (1e-4, 1e-3),
    "tensorrt-fp32": (1e-3, 2e-3),
    "tensorrt-fp16": (1e-2, 2e-2),
    "torch-cuda": (1e-4, 1e-3),
}


# --- data ---------------------------------------------------------------------------------------------------


def _record(folder, env_id: str, episodes: int, steps: int):
    for i in range(episodes):
        obs, action, reward, terminated = record_episode(env_id, seed=i, steps=steps, frame_size=64)
        save_episode(folder / f"episode_{i:05d}.npz", obs, action, reward=reward, terminated=terminated)
    return folder


@pytest.fixture(scope="session")
def carracing_dir(tmp_path_factory):
    """4 CarRacing-v3 episodes of 24 frames: continuous 3-d actions, rewards and terminations (no meta.json)."""
    return _record(tmp_path_factory.mktemp("carracing"), "CarRacing-v3", 4, 24)


@pytest.fixture(scope="session")
def pong_dir(tmp_path_factory):
    """4 ALE/Pong-v5 episodes of 24 frames: 6 discrete actions, rewards and terminations (no meta.json)."""
    return _record(tmp_path_factory.mktemp("pong"), "ALE/Pong-v5", 4, 24)


def _tiny_config(data_dir, out_dir, action_mode: str = "continuous", action_dim: int = 3, **train) -> Config:
    return Config.from_dict(
        {
            "data": {"path": str(data_dir), "action_mode": action_mode, "seq_len": 8, "val_fraction": 0.25},
            "model": {"size": "tiny", "action_dim": action_dim},
            "train": {"out_dir": str(out_dir), "epochs": 2, "batch_size": 4, **train},
        }
    )


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: tiny_config(data_dir, out_dir, action_mode="continuous", action_dim=3, **train) -> a Config of
    the tiny model over `data_dir` (8-frame windows, a quarter of the episodes for validation, 2 epochs of
    batch 4); `train` overrides train keys."""
    return _tiny_config


@pytest.fixture
def carracing_config(carracing_dir, tmp_path):
    return _tiny_config(carracing_dir, tmp_path / "run")


@pytest.fixture(scope="session")
def brightness_dir(tmp_path_factory):
    """8 episodes of 48 grey frames (with pixel noise) whose brightness is drawn per frame, continuous 3-d
    actions, and per-step arrays `level` (the brightness in [0.1, 0.9]: a known function of the frames) and
    `shuffled` (the same values in another order: no function of them)."""
    folder = tmp_path_factory.mktemp("brightness")
    rng = np.random.default_rng(0)
    for i in range(8):
        level = rng.uniform(0.1, 0.9, 48)
        noise = rng.normal(0, 20, (48, 64, 64, 3))
        obs = np.clip(level[:, None, None, None] * 255 + noise, 0, 255).astype(np.uint8)
        action = rng.normal(size=(48, 3)).astype(np.float32)
        save_episode(folder / f"episode_{i:05d}.npz", obs, action, level=level, shuffled=rng.permutation(level))
    return folder


def _collapse(model: WorldModel) -> WorldModel:
    with torch.no_grad():
        head = model.encoder.posterior_head
        head.weight.zero_()
        head.bias.zero_()
        # softplus(raw) + POSTERIOR_MIN_STD = 1: the posterior is N(0, I), the prior, whatever the frame.
        head.bias[model.cfg.latent_dim :] = float(torch.tensor(1.0 - 1e-3).expm1().log())
    return model


@pytest.fixture(scope="session")
def collapse_encoder():
    """Factory: collapse_encoder(model) -> the same model with its encoder's posterior fixed at N(0, I) whatever
    the frame (posterior collapse, constructed: KL 0, posterior means identical)."""
    return _collapse


@pytest.fixture
def random_batch():
    """obs [B=2, T=6, 3, 64, 64] in [0, 1] and encoded actions [2, 6, 3]."""
    rng = np.random.default_rng(0)
    obs = torch.from_numpy(rng.random((2, 6, 3, 64, 64), dtype=np.float32))
    actions = torch.from_numpy(rng.standard_normal((2, 6, 3)).astype(np.float32))
    return obs, actions


# --- untrained models, checkpoints and artifact folders -----------------------------------------------------


def _untrained_model(
    size: str = "tiny", action_mode: str = "continuous", heads: bool = False, actor_critic: bool = False
) -> tuple[WorldModel, Config, ActionCodec]:
    codec = CODECS[action_mode]
    model = {"size": size, "frame_size": 64, "action_dim": codec.dim, "heads": heads or actor_critic}
    model["actor_critic"] = actor_critic
    cfg = Config.from_dict({"data": {"action_mode": action_mode}, "model": model})
    with torch.random.fork_rng(devices=[]):  # the same weights for every caller, the caller's RNG untouched
        torch.manual_seed(0)
        built = WorldModel(cfg.model)
    if built.actor is not None:
        built.actor.set_actions(codec)
    return built, cfg, codec


@pytest.fixture(scope="session")
def untrained_model():
    """Factory: untrained_model(size="tiny", action_mode="continuous", heads=False, actor_critic=False) -> (model,
    cfg, codec): a freshly initialised WorldModel of a size preset (64x64 frames, seed 0, a new object each call;
    with reward and continuation heads when `heads`, and also a critic and an actor when `actor_critic`), its
    Config and CODECS[action_mode]."""
    return _untrained_model


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """Factory: untrained_checkpoint(size="tiny", action_mode="continuous", path=None, heads=False,
    actor_critic=False) -> the checkpoint of untrained_model(size, action_mode, heads, actor_critic). Without
    `path`, one shared file per (size, action_mode, heads, actor_critic), written once per session: treat it as
    read-only. With `path`, a new file there."""
    folder = tmp_path_factory.mktemp("untrained")

    @functools.cache
    def shared(size: str, action_mode: str, heads: bool, actor_critic: bool) -> Path:
        name = f"{size}_{action_mode}{'_heads' if heads else ''}{'_ac' if actor_critic else ''}.pt"
        return write(size, action_mode, heads, actor_critic, folder / name)

    def write(size: str, action_mode: str, heads: bool, actor_critic: bool, path: Path) -> Path:
        model, cfg, codec = _untrained_model(size, action_mode, heads, actor_critic)
        save_checkpoint(path, model, cfg, codec)
        return Path(path)

    def make(
        size: str = "tiny",
        action_mode: str = "continuous",
        path: str | Path | None = None,
        heads: bool = False,
        actor_critic: bool = False,
    ) -> Path:
        if path is None:
            return shared(size, action_mode, heads, actor_critic)
        return write(size, action_mode, heads, actor_critic, Path(path))

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(untrained_checkpoint):
    """Factory: tiny_checkpoint(mode) -> the shared untrained_checkpoint("tiny", mode) (read-only)."""
    return functools.partial(untrained_checkpoint, "tiny")


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoint, tmp_path_factory):
    """Factory: tiny_artifacts(mode) -> the artifact folder of tiny_checkpoint(mode), exported once per session
    (treat it as read-only: copy it with artifact_copy before changing anything)."""
    from wm_export import export_artifacts

    folder = tmp_path_factory.mktemp("artifacts")

    @functools.cache
    def make(mode: str) -> Path:
        return export_artifacts(tiny_checkpoint(mode), folder / mode)

    return make


@pytest.fixture(scope="session")
def artifact_copy(tiny_artifacts):
    """Factory: artifact_copy(mode, dest) -> a copy of tiny_artifacts(mode) at `dest`, free to change."""

    def copy(mode: str, dest: Path) -> Path:
        return Path(shutil.copytree(tiny_artifacts(mode), dest))

    return copy


# --- hand-built models for the planner ----------------------------------------------------------------------

# The action the hand-built models are made to prefer (continuous) and the preferred discrete action.
PLANNER_TARGETS = {"continuous": (0.3, 0.7, 0.2), "discrete": 4}


REWARD_AT_TARGET = 10.0
"""the reward the planner_model models predict for their target action (less for any other)"""


def _planner_model(action_mode: str = "continuous") -> tuple[WorldModel, Config, ActionCodec]:
    """A tiny model with heads whose imagined latent after an action depends on that action alone, through one
    monotone channel per encoded action dimension: z_k+1[i] = 10 f(e_i(a_k)) for i < A (0 beyond), f =
    silu(tanh(silu(.))) and e the codec's encoding. Its predicted reward is REWARD_AT_TARGET - sum_i d_i tanh(d_i /
    2), d = z - z_target (largest at the target action's latent), its continuation ~1, and its encoder maps every
    frame to z_target: whether planning for reward or towards any goal frame, the optimum is
    PLANNER_TARGETS[action_mode] at every step, and the objective is separable and well-conditioned. Built by hand:
    - the RSSM's input layer reads encoded action i into hidden unit i (identity, z ignored): silu(e_i);
    - the GRU forgets h (recurrent weights 0, update gate shut by a bias of -30), so h_k+1 is its candidate
      state tanh(x), unit i from input unit i;
    - the prior head passes unit i through (silu) and scales it by 10 into the mean of z[i]; its std is constant;
    - the reward head's hidden units 2i and 2i + 1 are silu(d_i) and silu(-d_i), whose sum is d_i tanh(d_i / 2);
      the continuation head's logit is +20 whatever the state;
    - the encoder's posterior head has zero weights and z_target as the bias of its mean."""
    model, cfg, codec = _untrained_model("tiny", action_mode, heads=True)
    S, D, A = cfg.model.latent_dim, cfg.model.deter_dim, codec.dim
    rssm, heads = model.rssm, model.heads
    assert heads is not None
    diagonal = torch.arange(A)
    with torch.no_grad():
        for parameter in [*rssm.parameters(), *heads.parameters()]:
            parameter.zero_()
        rssm.input_layer[0].weight[diagonal, S + diagonal] = 1.0
        rssm.gru.weight_ih[2 * D + diagonal, diagonal] = 1.0  # rows r | update | candidate
        rssm.gru.bias_ih[D : 2 * D] = -30.0
        rssm.prior_head[0].weight[diagonal, diagonal] = 1.0
        rssm.prior_head[2].weight[diagonal, diagonal] = 10.0
        target = PLANNER_TARGETS[action_mode]
        raw = torch.tensor([target]) if action_mode == "discrete" else torch.tensor([target], dtype=torch.float32)
        _, goal, _ = rssm.step(torch.zeros(1, D), torch.zeros(1, S), codec.encode(raw))  # [1, S]
        hidden = heads.reward[0]  # features [h (D), z (S)] -> K
        hidden.weight[2 * diagonal, D + diagonal] = 1.0
        hidden.bias[2 * diagonal] = -goal[0, :A]
        hidden.weight[2 * diagonal + 1, D + diagonal] = -1.0
        hidden.bias[2 * diagonal + 1] = goal[0, :A]
        heads.reward[2].weight[0, : 2 * A] = -1.0
        heads.reward[2].bias[0] = REWARD_AT_TARGET
        heads.cont[2].bias[0] = 20.0
        posterior = model.encoder.posterior_head
        posterior.weight.zero_()
        posterior.bias[:S] = goal[0]
    return model, cfg, codec


@pytest.fixture(scope="session")
def planner_model():
    """Factory: planner_model(action_mode="continuous") -> (model, cfg, codec): a tiny hand-built model with heads
    on which planning, for its predicted rewards or towards any goal frame, is best served by
    PLANNER_TARGETS[action_mode] at every step (see _planner_model), with the CODECS action codec."""
    return _planner_model


@pytest.fixture(scope="session")
def planner_targets():
    """PLANNER_TARGETS: the action the planner_model models are built to prefer, by action mode."""
    return PLANNER_TARGETS


# --- deployment -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def codecs():
    """CODECS: the action codec of the untrained models, by action mode."""
    return CODECS


@pytest.fixture(scope="session")
def tolerances():
    """TOLERANCES: (latents, frames) largest absolute difference from the torch reference, by backend."""
    return TOLERANCES


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch's intra-op thread pool only slows tiny batches down: the parity gate and the rollouts make hundreds
    of small torch calls, and on a busy 2-core machine two threads spend most of their time waiting for each
    other (one thread halves the time of test_export.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cuda_device_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA device; torch {torch.__version__} sees none")
    return "cuda"


@pytest.fixture(scope="session")
def cuda_device_or_skip():
    """Factory: cuda_device_or_skip() -> "cuda", or a skip saying torch sees no CUDA device."""
    return _cuda_device_or_skip


@pytest.fixture(scope="session")
def backend_or_skip():
    """Factory: backend_or_skip(name, path, device) -> the Rollout of backend `name`, or a skip that says what
    this machine lacks."""

    def load(name: str, path: Path, device: str):
        from wm_deploy import Rollout
        from wm_deploy.loading import open_source, resolve_device, unavailable

        if device == "cuda":
            _cuda_device_or_skip()
        reason = unavailable(name, open_source(path), resolve_device(device))
        if reason is not None:
            pytest.skip(f"{name} on {device} unavailable: {reason}")
        return Rollout.load(path, backend=name, device=device)

    return load


def _random_frames(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def random_frames():
    """Factory: random_frames(batch, seed=0) -> uint8 frames [B, 64, 64, 3]."""
    return _random_frames


def _random_actions(mode: str, batch: int, horizon: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lead = (batch,) if horizon is None else (batch, horizon)
    if mode == "discrete":
        return rng.integers(0, CODECS[mode].dim, lead)
    return rng.normal(0.2, 1.0, (*lead, CODECS[mode].dim)).astype(np.float32)


@pytest.fixture(scope="session")
def random_actions():
    """Factory: random_actions(mode, batch, horizon, seed=0) -> raw actions [B, H, A] (continuous) or int [B, H]
    (discrete) for the CODECS[mode] models; [B, ...] when horizon is None."""
    return _random_actions


def _max_abs(a, b) -> float:
    as_numpy = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b)]
    return float(np.abs(as_numpy[0].astype(np.float64) - as_numpy[1]).max())


@pytest.fixture(scope="session")
def max_abs():
    """Factory: max_abs(a, b) -> the largest absolute difference of two numpy arrays or torch tensors, in
    float64."""
    return _max_abs


# --- benchmarks ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def benchmark_script():
    """A factory: benchmarks/NAME.py loaded as a module. The benchmarks are scripts that import each other from
    their own folder (`from report import ...`), not a package, so that folder is on the path while one loads."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(folder))
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(folder))
        return module

    return load
