"""Action repeat: every action chosen is held for K environment steps and their rewards are summed. The one home
of that rule, shared by recording (`wm-collect --action-repeat K`) and control (`wm-control` makes the
environment with the model's K), so a model plans at the rate its data was recorded at.

Imports gymnasium: wm_core.envs.make_env imports this module only when it makes an environment.
"""

from __future__ import annotations

import gymnasium as gym

from .actions import check_action_repeat


class ActionRepeat(gym.Wrapper):
    """`step(action)` takes `action` for `repeat` steps of the wrapped environment (fewer when one of them ends
    the episode) and returns the last observation, the sum of the rewards, whether any step terminated or was
    truncated, and the last step's info with `info["frames"]`: the environment steps taken. `repeat` 1 passes
    every step through unchanged (info aside). ALE's v5 environments already repeat each action 4 frames inside
    (their `frameskip`); this repeat multiplies on top."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = check_action_repeat(repeat)

    def step(self, action):
        return self.hold(action, self.repeat)

    def hold(self, action, frames: int):
        """Take `action` for `frames` environment steps, or until one ends the episode; the return of `step`.
        For steps that are not a decision (CarRacing's zoom at the start, the last frames of a budget)."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        total, taken, ended = 0.0, 0, False
        while taken < frames and not ended:
            observation, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            taken += 1
            ended = terminated or truncated
        return observation, total, terminated, truncated, {**info, "frames": taken}
