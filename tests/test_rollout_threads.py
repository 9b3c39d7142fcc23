"""Concurrency and memory of a long-lived Rollout: one Rollout hammered from several threads with mixed shapes
(every result equals a sequential run's up to last-bit rounding), and workspaces freed as they leave the cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from wm_deploy import LatentState, Rollout

THREADS = 4
CALLS = 24


def jobs(seed: int) -> list[tuple]:
    """Mixed calls (kind, inputs) at batch 1-9 and horizon 1-12, sharing workspaces across threads."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(CALLS):
        batch, horizon = int(rng.integers(1, 10)), int(rng.integers(1, 13))
        state = LatentState(np.tanh(rng.standard_normal((batch, 32))).astype(np.float32),
                            rng.standard_normal((batch, 8)).astype(np.float32))  # fmt: skip
        actions = rng.standard_normal((batch, horizon, 3)).astype(np.float32)
        kind = ("imagine", "sampled", "observe", "decode")[i % 4]
        if kind == "observe":
            out.append((kind, (state, rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8), actions[:, 0])))
        elif kind == "decode":
            out.append((kind, (state.z,)))
        elif kind == "sampled":
            out.append((kind, (state, actions, rng.standard_normal((batch, horizon, 8)).astype(np.float32))))
        else:
            out.append((kind, (state, actions)))
    return out


def call(rollout: Rollout, kind: str, args: tuple) -> list[np.ndarray]:
    if kind == "observe":
        state = rollout.observe(args[0], args[1], args[2])
        return [state.h, state.z]
    if kind == "decode":
        return [rollout.decode(args[0])]
    if kind == "sampled":
        trajectory = rollout.imagine(args[0], args[1], sample=True, noise=args[2])
    else:
        trajectory = rollout.imagine(*args)
    return [trajectory.z, trajectory.h, trajectory.prior_mean, trajectory.prior_std]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_concurrent_calls_each_see_only_their_own_inputs(tiny_artifacts, backend):
    pytest.importorskip("onnxruntime")
    rollout = Rollout.load(tiny_artifacts("continuous"), backend=backend, device="cpu")
    work = [jobs(seed) for seed in range(THREADS)]
    expected = [[call(rollout, kind, args) for kind, args in thread] for thread in work]

    def run(thread: list[tuple]) -> list[list[np.ndarray]]:
        return [call(rollout, kind, args) for kind, args in thread]

    for _ in range(3):
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(run, work))
        for thread_results, thread_expected in zip(results, expected):
            for got, want in zip(thread_results, thread_expected):
                for a, b in zip(got, want):
                    # torch may split a reduction differently on another thread or a loaded machine (last-bit
                    # differences, measured 3e-8); another call's inputs would change the results entirely
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_evicted_workspace_is_freed_at_once(tiny_artifacts):
    """Memory stays bounded by max_workspaces: an evicted workspace (and its compiled loops, which refer back to
    it) is freed when it leaves the cache, not at the garbage collector's next full pass."""
    import gc
    import weakref

    rollout = Rollout.load(tiny_artifacts("continuous"), backend="torch", device="cpu", max_workspaces=2)
    state = LatentState(np.zeros((1, 32), np.float32), np.zeros((1, 8), np.float32))
    rollout.imagine(state, np.zeros((1, 3, 3), np.float32))
    first = weakref.ref(next(iter(rollout._workspaces.values())))
    gc.disable()
    try:
        for horizon in (4, 5):
            rollout.imagine(state, np.zeros((1, horizon, 3), np.float32))
        assert len(rollout._workspaces) == 2 and first() is None
    finally:
        gc.enable()
