"""Model-predictive control with a world model: observe every frame, imagine candidate futures, act.

    python examples/control_loop.py                                    # fresh random model, exported on the fly
    python examples/control_loop.py --artifacts runs/carracing/artifacts
    python examples/control_loop.py --checkpoint runs/carracing/best.pt    # torch backend

Each tick of CarRacing-v3: the 96x96 frame is resized to the model's frame size and `observe`d (encoder and
one prior step); `imagine` rolls out `--candidates` random action sequences of `--horizon` steps from the
current state in one batched call (random shooting); each candidate's last imagined latent is decoded and
scored; the car takes the first action of the best candidate. Every tick prints its time, split into those
parts.

The model has no reward head, so the score is a stand-in: how road-like (grey, not green) the decoded frame
is just ahead of the car. With the freshly initialised model used when no path is given the choice is
meaningless, but every call, and so the timing, is what a trained model would cost.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from wm_deploy import LatentState, Rollout

ENV_ID = "CarRacing-v3"
ZOOM_FRAMES = 50  # CarRacing zooms in on the car for its first 50 frames


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
    parser.add_argument("--ticks", type=int, default=40, help="control ticks to run")
    parser.add_argument("--candidates", type=int, default=64, help="action sequences imagined per tick")
    parser.add_argument("--horizon", type=int, default=15, help="imagined steps per candidate")
    parser.add_argument("--seed", type=int, default=0, help="seeds the environment and the candidates")
    return parser.parse_args()


def fresh_artifacts(size: str, folder: Path) -> Path:
    """Save a freshly initialised model with CarRacing's action space and export it: runs on a fresh machine."""
    import torch

    from wm_export import export_artifacts
    from wm_train import ActionCodec, Config, WorldModel, save_checkpoint

    torch.manual_seed(0)
    cfg = Config.from_dict({"model": {"size": size, "frame_size": 64, "action_dim": 3}})
    # Statistics of uniform random actions in CarRacing's box: steer [-1, 1], gas and brake [0, 1].
    codec = ActionCodec("continuous", 3, (0.0, 0.5, 0.5), (0.577, 0.289, 0.289))
    checkpoint = folder / "fresh.pt"
    save_checkpoint(checkpoint, WorldModel(cfg.model), cfg, codec)
    print(f"exporting a fresh {size} model to {folder / 'artifacts'} ...")
    return export_artifacts(checkpoint, folder / "artifacts")


def road_score(frames: np.ndarray) -> np.ndarray:
    """frames [N, H, W, 3] in [0, 1] -> [N]: higher where the patch ahead of the car is grey rather than green."""
    H, W = frames.shape[1:3]
    ahead = frames[:, int(0.4 * H) : int(0.65 * H), int(0.375 * W) : int(0.625 * W)]  # the car sits near (0.75H, W/2)
    red, green, blue = ahead[..., 0], ahead[..., 1], ahead[..., 2]
    return -(np.abs(green - red) + np.abs(green - blue)).mean(axis=(1, 2))


def random_sequences(rng: np.random.Generator, count: int, horizon: int) -> np.ndarray:
    """[N, H, 3] actions held for 5 steps at a time: steer in [-1, 1], gas and brake in [0, 1]."""
    held = -(-horizon // 5)
    low, high = np.array([-1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
    knots = rng.uniform(low, high, (count, held, 3)).astype(np.float32)
    knots[..., 2] *= rng.random((count, held)) < 0.2  # brake rarely
    return np.repeat(knots, 5, axis=1)[:, :horizon]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # shows the backend `auto` picked
    import gymnasium as gym

    from wm_core.envs import resize

    with tempfile.TemporaryDirectory(prefix="wm-control-") as scratch:
        path = args.artifacts or args.checkpoint or fresh_artifacts(args.size, Path(scratch))
        rollout = Rollout.load(path, backend=args.backend, device=args.device, seed=args.seed)
        print(rollout)
        N, H = args.candidates, args.horizon
        frame_size = rollout.dims.frame[0]
        rollout.warmup(N, H)
        rollout.warmup(1, 1)

        env = gym.make(ENV_ID)
        rng = np.random.default_rng(args.seed)
        observation, _ = env.reset(seed=args.seed)
        for _ in range(ZOOM_FRAMES):
            observation, *_ = env.step(np.zeros(3, np.float32))
        resize(observation, frame_size)  # its first call imports PIL: keep that out of tick 0
        state, prev_action = rollout.initial(1), None
        ticks = []
        for tick in range(args.ticks):
            t0 = time.perf_counter()
            frame = resize(observation, frame_size)[None]  # [1, H, W, 3] uint8
            state = rollout.observe(state, frame, prev_action)
            t1 = time.perf_counter()
            candidates = random_sequences(rng, N, H)
            start = LatentState(np.repeat(state.h, N, axis=0), np.repeat(state.z, N, axis=0))
            trajectory = rollout.imagine(start, candidates)
            t2 = time.perf_counter()
            best = int(np.argmax(road_score(rollout.decode(trajectory.z[:, -1]))))
            action = candidates[best, 0]
            t3 = time.perf_counter()
            observation, reward, terminated, truncated, _ = env.step(action)
            ticks.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
            print(
                f"tick {tick:3d}  observe {1e3 * ticks[-1][0]:6.2f} ms  imagine {N}x{H} {1e3 * ticks[-1][1]:6.2f} ms"
                f"  decode+score {1e3 * ticks[-1][2]:6.2f} ms  tick {1e3 * ticks[-1][3]:6.2f} ms"
                f"  action [{action[0]:+.2f} {action[1]:.2f} {action[2]:.2f}]  reward {reward:+.2f}"
            )
            prev_action = action[None]  # [1, 3]
            if terminated or truncated:
                observation, _ = env.reset()
                state, prev_action = rollout.initial(1), None
        env.close()

    median = 1e3 * np.median(np.asarray(ticks), axis=0)
    print(
        f"median over {len(ticks)} ticks ({rollout.backend_name}): observe {median[0]:.2f} ms, imagine "
        f"{median[1]:.2f} ms, decode+score {median[2]:.2f} ms, whole tick {median[3]:.2f} ms "
        "(excluding the environment step)"
    )


if __name__ == "__main__":
    main()
