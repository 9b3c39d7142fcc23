"""The isolation ablation benchmark: its coupled baseline really is coupled, both variants start alike, and the
--quick run produces the table end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from wm_train import Config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "isolation_ablation.py"


def _ablation():
    spec = importlib.util.spec_from_file_location("isolation_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_coupled_baseline_sends_the_pixel_loss_through_the_rssm_into_the_encoder(random_batch):
    ablation = _ablation()
    torch.manual_seed(0)
    model = ablation.CoupledWorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    out = model(*random_batch)
    (out.loss - out.recon_loss - out.kld).backward()  # everything but the VAE's own terms
    for module in (model.encoder, model.decoder, model.rssm):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_both_variants_start_from_the_same_weights_and_rng(carracing_dir, tmp_path, tiny_config):
    ablation = _ablation()
    isolated = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "a"), "isolated")
    state = torch.get_rng_state()
    coupled = ablation.make_trainer(tiny_config(carracing_dir, tmp_path / "b"), "coupled")
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(coupled.model, ablation.CoupledWorldModel)
    for name, tensor in isolated.model.state_dict().items():
        assert torch.equal(coupled.model.state_dict()[name], tensor)
    assert coupled.optimizer.param_groups[0]["params"][0] is next(coupled.model.parameters())


def test_quick_ablation_writes_the_table(carracing_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data", str(carracing_dir), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [("isolated", 0), ("coupled", 0)]
    for variant in ("isolated", "coupled"):
        summary = results["summary"][variant]
        assert {"loss_gap_pct", "rssm_gap_pct", "mse@1", "mse@5", "ratio_shuffled"} <= set(summary)
        assert "mse@10" not in summary  # beyond the quick horizon of 5
    table = (tmp_path / "results.md").read_text()
    assert "| isolated |" in table and "| coupled |" in table and "MSE@5" in table
    assert (tmp_path / "runs" / "coupled_seed0" / "eval" / "report.json").is_file()
