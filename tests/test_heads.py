"""Reward and continuation heads from the model to every backend: the exported prior step outputs them, the
parity gate covers them, `Rollout.imagine` returns them, and folders and checkpoints without heads still
load (without rewards)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wm_core.config import Config
from wm_core.graphs import build_graphs, graph_specs
from wm_core.manifest import has_heads, load_manifest
from wm_deploy import LatentState, Rollout
from wm_export import export_artifacts
from wm_export.triton import write_triton_repository
from wm_train.trainer import train


@pytest.fixture(scope="module")
def heads_artifacts(untrained_checkpoint, tmp_path_factory):
    checkpoint = untrained_checkpoint(heads=True)
    return export_artifacts(checkpoint, tmp_path_factory.mktemp("heads") / "artifacts")


def test_prior_step_graph_outputs_reward_and_continuation_of_the_new_state(untrained_model):
    model, cfg, _ = untrained_model(heads=True)
    spec = graph_specs(cfg.model)["prior_step"]
    assert spec.output_names == ["h_next", "prior_mean", "prior_std", "reward", "cont"]
    h, z, action = torch.zeros(4, cfg.model.deter_dim), torch.randn(4, cfg.model.latent_dim), torch.randn(4, 3)
    with torch.no_grad():
        h_next, mean, _, reward, cont = build_graphs(model)["prior_step"](h, z, action)
        expected_reward, cont_logit = model.heads(torch.cat([h_next, mean], dim=-1))
    torch.testing.assert_close(reward, expected_reward)
    torch.testing.assert_close(cont, torch.sigmoid(cont_logit))
    assert reward.shape == cont.shape == (4,)


def test_export_with_heads_is_format_3_and_gates_the_head_outputs(heads_artifacts):
    manifest = load_manifest(heads_artifacts)
    assert manifest["format_version"] == 3 and has_heads(manifest)
    assert manifest["graphs"]["prior_step"]["outputs"]["reward"] == {"dtype": "float32", "shape": ["batch"]}
    gate = manifest["parity"]["onnxruntime"]
    assert {"prior_step.reward", "prior_step.cont"} <= set(gate)  # the head outputs are gated at all


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_imagine_returns_reward_and_continuation_per_step(heads_artifacts, untrained_model, backend):
    model, _, codec = untrained_model(heads=True)
    rollout = Rollout.load(heads_artifacts, backend=backend, device="cpu")
    assert rollout.has_heads
    rng = np.random.default_rng(0)
    state = rollout.initial(5)
    state = rollout.observe(state, rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8))
    actions = rng.uniform(-1, 1, (5, 7, 3)).astype(np.float32)
    trajectory = rollout.imagine(state, actions)
    assert trajectory.reward.shape == trajectory.cont.shape == (5, 7)
    assert ((trajectory.cont > 0) & (trajectory.cont < 1)).all()
    # the heads of the model itself, on the imagined states
    with torch.no_grad():
        features = torch.cat([torch.from_numpy(trajectory.h), torch.from_numpy(trajectory.z)], dim=-1)
        reward, cont_logit = model.heads(features)
    np.testing.assert_allclose(trajectory.reward, reward.numpy(), atol=1e-4)
    np.testing.assert_allclose(trajectory.cont, torch.sigmoid(cont_logit).numpy(), atol=1e-4)


def test_torch_and_onnxruntime_predict_the_same_rewards(heads_artifacts):
    rollouts = [Rollout.load(heads_artifacts, backend=name, device="cpu") for name in ("torch", "onnxruntime")]
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (3, 12, 3)).astype(np.float32)
    torch_run, ort_run = (r.imagine(r.observe(r.initial(3), frames), actions) for r in rollouts)
    np.testing.assert_allclose(ort_run.reward, torch_run.reward, atol=1e-4)
    np.testing.assert_allclose(ort_run.cont, torch_run.cont, atol=1e-4)


def test_half_precision_torch_backend_predicts_rewards_close_to_fp32(untrained_model):
    model, _, codec = untrained_model(heads=True)
    rng = np.random.default_rng(2)
    state_h = np.tanh(rng.standard_normal((4, model.cfg.deter_dim))).astype(np.float32)
    state_z = rng.standard_normal((4, model.cfg.latent_dim)).astype(np.float32)
    actions = rng.uniform(-1, 1, (4, 5, 3)).astype(np.float32)

    runs = {
        precision: Rollout.from_model(model, codec, precision=precision).imagine(LatentState(state_h, state_z), actions)
        for precision in ("fp32", "bf16")
    }
    np.testing.assert_allclose(runs["bf16"].reward, runs["fp32"].reward, atol=5e-2)


def test_a_model_without_heads_imagines_no_rewards(tiny_artifacts):
    rollout = Rollout.load(tiny_artifacts("continuous"), backend="onnxruntime", device="cpu")
    state = rollout.observe(rollout.initial(2), np.zeros((2, 64, 64, 3), np.uint8))
    trajectory = rollout.imagine(state, np.zeros((2, 3, 3), np.float32))
    assert not rollout.has_heads and trajectory.reward is None and trajectory.cont is None


def test_triton_repository_of_a_model_with_heads_declares_reward_and_cont(heads_artifacts, tmp_path):
    repository = write_triton_repository(heads_artifacts, tmp_path / "triton", max_batch=64)
    config = (repository / "prior_step" / "config.pbtxt").read_text()
    assert 'name: "reward" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] }' in config
    assert 'name: "cont"' in config


def test_training_with_heads_fits_the_heads_and_logs_their_losses(carracing_config, capsys):
    cfg = dataclasses.replace(carracing_config, model=dataclasses.replace(carracing_config.model, heads=True))
    cfg.train.reward_window = 4
    history = train(cfg, progress=True)
    assert all(m.train["reward_loss"] > 0 and m.val["cont_loss"] > 0 for m in history)
    assert "rew=" in history[-1].log_line("val") and "rew=" in capsys.readouterr().out
    rollout = Rollout.load(cfg.train.out_dir + "/best.pt", backend="torch", device="cpu")
    assert rollout.has_heads and rollout.codec.low and rollout.codec.high


def test_head_overshooting_trains_the_heads_on_the_states_a_planner_imagines(untrained_model):
    """head losses at distance K = the mean over k = 1..K of each head's loss on the state k steps open loop
    after every start, checked against a plain loop over starts and RSSM.imagine (what Rollout.imagine runs)."""
    model, _, _ = untrained_model(heads=True)
    torch.manual_seed(0)
    B, T, K = 2, 7, 3
    z = torch.randn(B, T, model.cfg.latent_dim)
    actions = torch.randn(B, T, model.cfg.action_dim)
    rewards, continues = torch.randn(B, T), (torch.rand(B, T) > 0.2).float()
    with torch.no_grad():
        prior_mean, _, hs = model.rssm.observe(z, actions, states=True)
        reward_loss, cont_loss = model.head_losses(hs, prior_mean, actions, rewards, continues, distance=K)
        per_k = []
        for k in range(1, K + 1):
            rewards_k, logits_k, targets = [], [], []
            for t in range(T - k):  # from the teacher-forced state after action t, actions t+1..t+k-1 open loop
                h, mean = hs[:, t], prior_mean[:, t]
                if k > 1:
                    means, _, h_ahead = model.rssm.imagine(h, mean, actions[:, t + 1 : t + k])
                    h, mean = h_ahead[:, -1], means[:, -1]
                reward, logit = model.heads(torch.cat([h, mean], -1))
                rewards_k.append(reward)
                logits_k.append(logit)
                targets.append(t + k - 1)  # the state follows action t + k - 1
            reward, logit = torch.stack(rewards_k, 1), torch.stack(logits_k, 1)
            per_k.append(
                (
                    (reward - rewards[:, targets]).pow(2).mean(),
                    F.binary_cross_entropy_with_logits(logit, continues[:, targets]),
                )
            )
    torch.testing.assert_close(reward_loss, torch.stack([r for r, _ in per_k]).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cont_loss, torch.stack([c for _, c in per_k]).mean(), rtol=1e-5, atol=1e-6)
    one = model.head_losses(hs, prior_mean, actions, rewards, continues, distance=1)
    assert not torch.allclose(one[0], reward_loss)  # the open-loop states do add terms


def test_head_overshooting_longer_than_a_window_is_refused():
    with pytest.raises(ValueError, match=r"train.head_overshooting must be in \[1, data.seq_len - 1 = 7\], got 8"):
        Config.from_dict({"data": {"seq_len": 8}, "train": {"head_overshooting": 8}})
