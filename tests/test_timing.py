"""benchmarks/timing.py, the benchmarks' shared harness: what `time_calls` times and how often."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "timing.py"


@pytest.fixture(scope="module")
def timing():
    """The module, loaded from its file: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location("timing", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["timing"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["timing"]
    return module


def test_fixed_sampling_times_rounds_of_blocks_after_one_untimed_block(timing):
    order, syncs = [], []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    seconds = timing.time_calls(calls, lambda: syncs.append(1), timing.Sampling.fixed(rounds=3, block_calls=4))
    assert {name: len(s) for name, s in seconds.items()} == {"a": 12, "b": 12}
    assert all((s > 0).all() for s in seconds.values())
    # warm-up: 4 calls each, taking turns one by one; then 3 rounds of a block of 4 calls each
    assert order == ["a", "b"] * 4 + (["a"] * 4 + ["b"] * 4) * 3
    assert len(syncs) == 2 * 4 + 2 * 2 * 12  # once after each warm-up call, before and after each timed one
    means = timing.block_means(seconds["a"], 4)
    assert means.shape == (3,) and np.allclose(means, seconds["a"].reshape(3, 4).mean(axis=1))


def test_summarise_reports_percentiles_in_microseconds(timing):
    stats = timing.summarise(np.array([1e-3, 2e-3, 3e-3, 4e-3]))
    assert stats["calls"] == 4 and stats["min_us"] == pytest.approx(1000) and stats["mean_us"] == pytest.approx(2500)
    assert stats["p50_us"] == pytest.approx(2500) and stats["p50_us"] <= stats["p90_us"] <= stats["p99_us"] <= 4000
