"""The isolation ablation benchmark: its coupled baseline really is coupled, every variant starts alike and only
the overshooting one trains with K > 1, the regimes keep their promises, the targets are read the right way
round, and the --quick run produces the table and the plot end to end on a continuous and a discrete
environment."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wm_core.losses import PLAIN_LOSS
from wm_train import Config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "isolation_ablation.py"


@pytest.fixture
def ablation(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports isolation_report beside it
    spec = importlib.util.spec_from_file_location("isolation_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_coupled_baseline_sends_the_pixel_loss_through_the_rssm_into_the_encoder(ablation, random_batch):
    torch.manual_seed(0)
    model = ablation.CoupledWorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    out = model(*random_batch)
    (out.loss - out.recon_loss - out.kld).backward()  # everything but the VAE's own terms
    for module in (model.encoder, model.decoder, model.rssm):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_every_variant_starts_from_the_same_weights_and_rng(ablation, carracing_dir, tmp_path, tiny_config):
    isolated = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "a"), "isolated")
    state = torch.get_rng_state()
    coupled = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "b"), "coupled")
    assert torch.equal(torch.get_rng_state(), state)
    overshooting = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "c", overshooting=3), "overshooting")
    assert isinstance(coupled.model, ablation.CoupledWorldModel)
    for name, tensor in isolated.model.state_dict().items():
        assert torch.equal(coupled.model.state_dict()[name], tensor)
        assert torch.equal(overshooting.model.state_dict()[name], tensor)
    assert coupled.optimizer.param_groups[0]["params"][0] is next(coupled.model.parameters())


@pytest.mark.parametrize("variant", ["isolated", "coupled"])
def test_heads_for_the_closed_loop_change_no_other_weight_nor_the_training_noise(
    ablation, variant, carracing_dir, tmp_path, tiny_config
):
    plain = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "a"), variant)
    noise = torch.get_rng_state()
    cfg = tiny_config(carracing_dir, tmp_path / "b")
    headed = ablation.make_trainer(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, heads=True)), variant)
    assert torch.equal(torch.get_rng_state(), noise)
    weights = headed.model.state_dict()
    assert any(name.startswith("heads.") for name in weights)
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(weights[name], tensor)


def test_coupled_trainer_steps_the_coupled_model(ablation, carracing_dir, tmp_path, tiny_config):
    trainer = ablation.make_trainer(tiny_config(carracing_dir, tmp_path, **dataclasses.asdict(PLAIN_LOSS)), "coupled")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    out = trainer.train_step()
    assert out.loss > out.recon_loss + out.kld + out.rssm_loss  # the coupled objective: its pixel prediction term
    for name, p in trainer.model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not move"


def test_only_the_overshooting_variant_trains_with_k(ablation, tmp_path):
    args = ablation.parse_args(["--overshooting", "4", "--out", str(tmp_path)])
    ks = {v: ablation.run_config(args, tmp_path, "continuous", 3, v, 0).train.overshooting for v in ablation.VARIANTS}
    assert ks == {"isolated": 1, "overshooting": 4, "coupled": 1}


def test_every_variant_trains_on_the_plain_vae_loss(ablation, tmp_path):
    """The coupled design has no anti-collapse options: the study compares designs on the plain loss."""
    args = ablation.parse_args(["--out", str(tmp_path)])
    for variant in ablation.VARIANTS:
        train = ablation.run_config(args, tmp_path, "continuous", 3, variant, 0).train
        assert train.loss == dataclasses.replace(
            PLAIN_LOSS, overshooting=train.overshooting, reward_window=ablation.REWARD_WINDOW
        )


def test_small_regime_trains_longer_on_at_most_8_episodes_and_refuses_more(ablation, carracing_dir, tmp_path):
    budget, small = ablation.parse_args([]), ablation.parse_args(["--regime", "small"])
    assert small.epochs > budget.epochs and small.episodes < budget.episodes
    assert small.out.endswith("carracing_small") and ablation.parse_args(["--env", "ALE/Pong-v5"]).out.endswith(
        "pong_budget"
    )
    assert ablation.parse_args(["--regime", "small", "--epochs", "5"]).epochs == 5  # an explicit flag wins
    assert ablation.parse_args(["--policy", "carracing-explorer"]).out.endswith("carracing_budget_carracing-explorer")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):  # the regime's 12 episodes hold 8 out of 12 for training; 12 with a tenth held out: 11
        (folder / f"episode_{i:05d}.npz").symlink_to(next(carracing_dir.glob("*.npz")))
    ablation.check_regime(small, folder)
    with pytest.raises(ValueError, match="at most 8 episodes, got 11"):
        ablation.check_regime(ablation.parse_args(["--regime", "small", "--val-fraction", "0.1"]), folder)
    with pytest.raises(ValueError, match="--regime must be one of"):
        ablation.parse_args(["--regime", "tiny"])


def test_closed_loop_refuses_an_environment_of_other_actions_before_training(ablation):
    ablation.check_closed_loop_env("ALE/Pong-v5", "discrete", 6)
    with pytest.raises(ValueError, match="--env CarRacing-v3 takes continuous actions of width 3, the episodes hold"):
        ablation.check_closed_loop_env("CarRacing-v3", "discrete", 6)


def test_closed_loop_column_trains_heads_only_when_asked(ablation, tmp_path):
    assert ablation.closed_loop_return(tmp_path / "last.pt", "CarRacing-v3", 0, 10) is None
    for flags, heads in (([], False), (["--closed-loop-episodes", "2"], True)):
        args = ablation.parse_args(["--out", str(tmp_path), *flags])
        assert all(
            ablation.run_config(args, tmp_path, "continuous", 3, v, 0).model.heads == heads for v in ablation.VARIANTS
        )


def test_targets_compare_means_and_count_gaps_by_their_size(ablation):
    import isolation_report

    def run(variant, seed, **metrics):
        return dict(variant=variant, seed=seed, metrics=metrics)

    args = dict(regime="budget", overshooting=3, horizon=30)
    budget = [
        run("overshooting", 0, **{"mse@30": 0.010, "ratio_shuffled": 0.80, "loss_val": 60.0}),
        run("overshooting", 1, **{"mse@30": 0.014, "ratio_shuffled": 0.90, "loss_val": 62.0}),
        run("coupled", 0, **{"mse@30": 0.011, "ratio_shuffled": 0.70, "loss_val": 61.0}),
        run("coupled", 1, **{"mse@30": 0.012, "ratio_shuffled": 0.70, "loss_val": 63.0}),
    ]
    found = {t["name"]: t for t in isolation_report.targets(dict(args=args, runs=budget))}
    mse = found["isolated + overshooting K=3 beats coupled on MSE@30"]
    assert not mse["met"] and mse["wins"] == 1 and "NOT met, 0.0120 vs 0.0115 (1/2 seeds)" in mse["text"]
    assert isolation_report.number(0.000467, "") == "0.000467"  # Pong's pixel MSEs keep their digits
    assert not found["isolated + overshooting K=3 beats coupled on the action ratio (true/shuffled)"]["met"]
    assert found["isolated + overshooting K=3 keeps a lower validation loss than coupled"]["met"]

    gaps = dict(open_loop_gap_pct=1.0)
    small = [
        run("isolated", 0, loss_gap_pct=-3.0, **gaps),  # |-3| < 4: a smaller gap, though coupled's is positive
        run("overshooting", 0, loss_gap_pct=-5.0, **gaps),
        run("coupled", 0, loss_gap_pct=4.0, **gaps),
    ]
    found = {t["name"]: t for t in isolation_report.targets(dict(args={**args, "regime": "small"}, runs=small))}
    assert found["isolated has a smaller validation gap than coupled (loss, |gap| %)"]["met"]
    assert not found["isolated + overshooting K=3 has a smaller validation gap than coupled (loss, |gap| %)"]["met"]
    assert not found["isolated has a smaller validation gap than coupled (open-loop MSE, |gap| %)"]["met"]  # a tie


@pytest.mark.parametrize(
    ("env", "episodes", "closed_loop"), [("CarRacing-v3", "carracing_dir", 0), ("ALE/Pong-v5", "pong_dir", 2)]
)
def test_quick_ablation_writes_the_table_and_the_plot(env, episodes, closed_loop, request, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--env",
            env,
            "--data",
            str(request.getfixturevalue(episodes)),
            "--out",
            str(tmp_path),
            "--closed-loop-episodes",
            str(closed_loop),
            "--closed-loop-steps",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    variants = ("isolated", "overshooting", "coupled")
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [(v, 0) for v in variants]
    for variant in variants:
        summary = results["summary"][variant]
        assert {"loss_gap_pct", "rssm_gap_pct", "mse@1", "mse@5", "ratio_shuffled"} <= set(summary)
        assert "mse@10" not in summary  # beyond the quick horizon of 5
        assert ("closed_loop_return" in summary) == bool(closed_loop)
    table = (tmp_path / "results.md").read_text()
    assert "| isolated |" in table and "| coupled |" in table and "| isolated + overshooting K=5 |" in table
    assert "MSE@5" in table and "closed-loop return" in table and "**Targets**" in table
    if closed_loop:  # the planner's return beside the random policy's on the same episodes
        assert set(results["closed_loop_references"]) == {"random"}  # Pong's recording policy is random too
        assert "on the same episodes: random " in table
    assert (tmp_path / "open_loop.png").stat().st_size > 0
    assert (tmp_path / "runs" / "overshooting_seed0" / "eval" / "report.json").is_file()
