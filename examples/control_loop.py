"""Model-predictive control with a world model: observe every frame, plan in imagination, act.

    python examples/control_loop.py                                    # fresh random model, exported on the fly
    python examples/control_loop.py --artifacts runs/carracing/artifacts
    python examples/control_loop.py --checkpoint runs/carracing/best.pt    # torch backend

Each tick of CarRacing-v3: the 96x96 frame is resized to the model's frame size and `observe`d (encoder and
one prior step); the planner (wm_deploy.Planner: MPPI/CEM as in TD-MPC2) imagines `--samples` action sequences
of `--horizon` steps in one batched call per iteration, scores them by the rewards the model's heads predict,
refits to the best and returns the first action of the plan; the car takes it, held for the model's action
repeat (`rollout.action_repeat` environment steps, the training data's: one imagined step is that many frames).
Every tick prints its time, split into observe and plan, and what the planner expects of its plan.

The model needs reward and continuation heads (`model: heads: true`); the fresh model made when no path is
given has untrained ones, so its choices are meaningless, but every call, and so the timing, is what a trained
model of that size would cost. `wm-control` runs whole episodes with references and writes a report.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from wm_core.envs import SKIP_START, make_env, render_frame, resize
from wm_deploy import Planner, PlannerSettings, Rollout

ENV_ID = "CarRacing-v3"
DEFAULTS = PlannerSettings()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--artifacts", type=Path, help="artifact folder written by wm-export")
    source.add_argument("--checkpoint", type=Path, help="checkpoint (runs on the torch backend)")
    parser.add_argument(
        "--size",
        default="default",
        choices=("tiny", "small", "default"),
        help="size of the fresh model made when no artifacts or checkpoint are given",
    )
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--ticks", type=int, default=40, help="control ticks (decisions) to run")
    parser.add_argument("--samples", type=int, default=DEFAULTS.samples, help="candidates per iteration")
    parser.add_argument("--horizon", type=int, default=DEFAULTS.horizon, help="imagined steps per candidate")
    parser.add_argument("--iterations", type=int, default=DEFAULTS.iterations, help="refits per tick")
    parser.add_argument("--seed", type=int, default=0, help="seeds the environment and the planner")
    return parser.parse_args()


def fresh_artifacts(size: str, folder: Path) -> Path:
    """Save a freshly initialised model with heads and CarRacing's action space, and export it: runs on a fresh
    machine."""
    import torch

    from wm_export import export_artifacts
    from wm_train import ActionCodec, Config, WorldModel, save_checkpoint

    torch.manual_seed(0)
    cfg = Config.from_dict({"model": {"size": size, "frame_size": 64, "action_dim": 3, "heads": True}})
    # Statistics of uniform random actions in CarRacing's box (steer [-1, 1], gas and brake [0, 1]), and the box.
    codec = ActionCodec("continuous", 3, (0.0, 0.5, 0.5), (0.577, 0.289, 0.289), (-1.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    checkpoint = folder / "fresh.pt"
    save_checkpoint(checkpoint, WorldModel(cfg.model), cfg, codec)
    print(f"exporting a fresh {size} model to {folder / 'artifacts'} ...")
    return export_artifacts(checkpoint, folder / "artifacts")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # shows the backend `auto` picked

    with tempfile.TemporaryDirectory(prefix="wm-control-") as scratch:
        path = args.artifacts or args.checkpoint or fresh_artifacts(args.size, Path(scratch))
        rollout = Rollout.load(path, backend=args.backend, device=args.device, seed=args.seed)
        planner = Planner(
            rollout, samples=args.samples, horizon=args.horizon, iterations=args.iterations, seed=args.seed
        )
        print(rollout)
        print(planner)
        frame_size = rollout.dims.frame[0]
        planner.warmup()
        rollout.warmup(1, 1)

        env = make_env(ENV_ID, rollout.action_repeat)  # env.step holds each action that many frames
        observation, _ = env.reset(seed=args.seed)
        for _ in range(SKIP_START["CarRacing"]):  # the zoom at the start, frame by frame: nothing to control yet
            observation, *_ = env.hold(np.zeros(3, np.float32), 1)
        resize(render_frame(env, observation), frame_size)  # its first call imports PIL: keep that out of tick 0
        state, prev_action = rollout.initial(1), None
        ticks = []
        for tick in range(args.ticks):
            t0 = time.perf_counter()
            frame = resize(render_frame(env, observation), frame_size)[None]  # [1, H, W, 3] uint8
            state = rollout.observe(state, frame, prev_action)
            t1 = time.perf_counter()
            action = planner.act(state)
            t2 = time.perf_counter()
            observation, reward, terminated, truncated, _ = env.step(action)
            plan = planner.last_plan
            assert plan is not None and plan.reward is not None
            ticks.append((t1 - t0, t2 - t1, t2 - t0))
            print(
                f"tick {tick:3d}  observe {1e3 * ticks[-1][0]:6.2f} ms  plan {1e3 * ticks[-1][1]:7.2f} ms"
                f"  tick {1e3 * ticks[-1][2]:7.2f} ms  action [{action[0]:+.2f} {action[1]:.2f} {action[2]:.2f}]"
                f"  reward {reward:+.2f} (predicted {plan.reward[0]:+.2f}, plan value {plan.value:+.2f})"
            )
            prev_action = action[None]  # [1, 3]
            if terminated or truncated:
                observation, _ = env.reset()
                state, prev_action = rollout.initial(1), None
                planner.reset()
        env.close()

    median = 1e3 * np.median(np.asarray(ticks), axis=0)
    s = planner.settings
    print(
        f"median over {len(ticks)} ticks ({rollout.backend_name}, {s.samples} samples x {s.horizon} steps x "
        f"{s.iterations} iterations): observe {median[0]:.2f} ms, plan {median[1]:.2f} ms, whole tick "
        f"{median[2]:.2f} ms (excluding the environment step)"
    )


if __name__ == "__main__":
    main()
