"""wm-loop's settings: the `loop` and `planner` sections of the training config file (wm_core.config ignores them
for every other command)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wm_core.config import Config, build_section, read_config_file
from wm_deploy.control import DRIVERS
from wm_deploy.planner import PlannerSettings


@dataclass(frozen=True)
class LoopConfig:
    out_dir: str = "runs/loop"
    """the loop's folder: loop.json (its state), episodes/ (the data every round trains on), round_NN/ (each round's
    training run, artifacts and evaluation), curve.jsonl, curve.md and curve.png"""
    rounds: int = 3
    """rounds after round 0 (which trains on the recorded data, or starts from `start_from`)"""
    episodes: int = 4
    """episodes each round collects with the model of the round before"""
    steps: int = 1000
    """most environment steps per episode, collected and evaluated alike"""
    exploration: float = 0.3
    """noise on the collecting policy's actions, in half-ranges of the action bounds (PlaNet's 0.3;
    wm_deploy.control.explore)"""
    policy: str = "planner"
    """what collects and is evaluated: `planner` or `actor` (a model with model.actor_critic)"""
    epochs: int = 4
    """fine-tuning epochs of each round, from the last round's checkpoint on all data (train.init_from)"""
    start_from: str = ""
    """a checkpoint trained on the config's data, used as round 0 instead of training one (train.epochs)"""
    env_id: str = ""
    """gymnasium environment id; empty: the recorded data's meta.json"""
    collect_seed: int = 10_000
    """round r's episode i runs on environment seed collect_seed + (r - 1) * episodes + i"""
    eval_seed: int = 20_000
    """every round is evaluated on environment seeds eval_seed, eval_seed + 1, ... (keep them apart from the
    collection's and from any seed you chose settings on)"""
    eval_episodes: int = 3
    """evaluation episodes per round"""
    backend: str = "onnxruntime"
    """backend of the collecting and evaluating Rollout: torch, onnxruntime or tensorrt"""

    def check(self) -> None:
        """ValueError naming the first setting out of its range."""
        checks = [
            (self.rounds >= 0, f"loop.rounds must be >= 0, got {self.rounds}"),
            (self.episodes >= 1, f"loop.episodes must be >= 1, got {self.episodes}"),
            (self.steps >= 1, f"loop.steps must be >= 1, got {self.steps}"),
            (0 <= self.exploration <= 1, f"loop.exploration must be in [0, 1], got {self.exploration}"),
            (self.policy in DRIVERS, f"loop.policy must be one of {DRIVERS}, got {self.policy!r}"),
            (self.epochs >= 1, f"loop.epochs must be >= 1, got {self.epochs}"),
            (self.eval_episodes >= 1, f"loop.eval_episodes must be >= 1, got {self.eval_episodes}"),
            (
                self.backend in ("torch", "onnxruntime", "tensorrt"),
                f"loop.backend must be torch, onnxruntime or tensorrt, got {self.backend!r}",
            ),
        ]
        collected = range(self.collect_seed, self.collect_seed + self.rounds * self.episodes)
        evaluated = range(self.eval_seed, self.eval_seed + self.eval_episodes)
        checks.append(
            (
                not set(collected) & set(evaluated),
                f"loop.eval_seed: evaluation seeds {evaluated.start}..{evaluated.stop - 1} overlap the collection's "
                f"{collected.start}..{collected.stop - 1}",
            )
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def collect_seeds(self, round_: int) -> range:
        """The environment seeds round `round_` (>= 1) collects on."""
        first = self.collect_seed + (round_ - 1) * self.episodes
        return range(first, first + self.episodes)


@dataclass(frozen=True)
class LoopSettings:
    """Everything a wm-loop run is made of, from one config file."""

    train: Config
    """the training config (round 0 as written; later rounds with train.init_from and loop.epochs)"""
    loop: LoopConfig
    planner: PlannerSettings


def load_loop_config(path: str | Path, overrides: Sequence[str] = ()) -> LoopSettings:
    """Read the config file at `path` with `overrides` (`section.key=value`, e.g. `loop.rounds=5` or
    `planner.horizon=10`) -> its training config and its `loop` and `planner` sections, each checked."""
    raw = read_config_file(path, overrides)
    source = str(path)
    loop = build_section(LoopConfig, "loop", dict(raw.get("loop") or {}), source)
    planner = build_section(PlannerSettings, "planner", dict(raw.get("planner") or {}), source)
    train = Config.from_dict(raw, source=source)
    loop.check()
    planner.check()
    if loop.policy == "actor" and not train.model.actor_critic:
        raise ValueError(f"{source}: loop.policy actor needs model.actor_critic")
    return LoopSettings(train, loop, planner)
