"""The loop: train on recorded episodes, then round after round drive the environment with the model (planner or
actor, plus exploration noise), add those episodes to the data, fine-tune from the last checkpoint, export and
evaluate on fixed seeds (PlaNet's and Dreamer's data loop, in rounds).

Every stage writes its files atomically and then records itself in loop.json (also atomic), so a run killed at
any point is continued by `run_loop(..., resume=True)` from the first stage not recorded, and ends as an
uninterrupted run would: a training stage resumes from its last.pt (exactly, as wm-train --resume), a collection
skips the episodes already saved (each episode is seeded by its own environment seed), an export or evaluation
is redone whole.

Layout of `loop.out_dir`:
    loop.json            the settings and the stages done (format LOOP_FORMAT)
    episodes/            the recorded episodes (copied at round 0) and every round's planner_SEED.npz
    round_NN/train/      wm-train's run folder of round NN (round 0: from scratch; later: train.init_from)
    round_NN/artifacts/  wm-export of its best.pt
    round_NN/control/    wm-control's report of the evaluation episodes
    curve.jsonl, curve.md, curve.png   the learning curve (wm_loop.curve)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from wm_core.dataset_meta import META, read_meta
from wm_core.publish import atomic_write_bytes, staged_dir

from .config import LoopSettings
from .curve import CurveRow, write_curve

LOOP_FORMAT = "wm-loop"
LOOP_FORMAT_VERSION = 1
STATE = "loop.json"
FIRST_STAGES = ("data", "train", "export", "evaluate")
"""round 0: copy the recorded episodes, train on them (or take loop.start_from), export, evaluate"""
ROUND_STAGES = ("collect", "train", "export", "evaluate")
"""every later round"""


def stages(round_: int) -> tuple[str, ...]:
    return FIRST_STAGES if round_ == 0 else ROUND_STAGES


def run_loop(
    settings: LoopSettings, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> list[CurveRow]:
    """Run every round of `settings` (or what a killed run left, with `resume`) -> the learning curve, one row per
    round. FileExistsError when loop.out_dir holds a loop and `resume` is not set; ValueError when `resume` meets a
    loop of other settings."""
    loop = Loop(settings, progress, log)
    loop.start(resume)
    for round_ in range(settings.loop.rounds + 1):
        for stage in stages(round_):
            if (round_, stage) in loop.done:
                continue
            started = time.perf_counter()
            getattr(loop, stage)(round_)
            loop.finish(round_, stage, time.perf_counter() - started)
    return loop.rows


class Loop:
    """The stages of one loop folder and its state (loop.json)."""

    def __init__(self, settings: LoopSettings, progress: bool, log: Callable[[str], None]):
        self.settings = settings
        self.out = Path(settings.loop.out_dir)
        self.progress = progress
        self.log = log
        self.done: set[tuple[int, str]] = set()
        self.seconds: dict[str, dict[str, float]] = {}
        """round -> stage -> seconds it took (a resumed stage: its last run)"""
        self.collected: dict[str, int] = {}
        """environment seed -> environment steps of the episode collected on it"""
        self.evaluations: dict[str, dict] = {}
        """round -> what its evaluation measured (CurveRow fields)"""
        self.rows: list[CurveRow] = []

    # --- state ----------------------------------------------------------------------------------------------

    def identity(self) -> dict:
        """What a resumed loop must share with the one it continues: everything but the number of rounds."""
        s = self.settings
        return {
            "train": s.train.to_dict(),
            "loop": {**dataclasses.asdict(s.loop), "rounds": None},
            "planner": dataclasses.asdict(s.planner),
        }

    def start(self, resume: bool) -> None:
        path = self.out / STATE
        if not path.is_file():
            if resume:
                raise FileNotFoundError(f"{path} not found: nothing to resume (start the loop without --resume)")
            if self.out.exists() and any(self.out.iterdir()):
                raise FileExistsError(f"{self.out} is not empty and holds no loop; choose another loop.out_dir")
            self.save()
            return
        if not resume:
            raise FileExistsError(f"{self.out} already holds a loop ({STATE}); pass --resume to continue it")
        state = json.loads(path.read_text())
        if state.get("format") != LOOP_FORMAT or state.get("format_version") != LOOP_FORMAT_VERSION:
            raise ValueError(f"{path}: not a {LOOP_FORMAT} state of format version {LOOP_FORMAT_VERSION}")
        if state["identity"] != json.loads(json.dumps(self.identity())):
            raise ValueError(
                f"{path} was started with other settings; resume it with the config it started with (only "
                "loop.rounds may change)"
            )
        self.done = {(r, stage) for r, stage in state["done"]}
        self.seconds, self.collected, self.evaluations = state["seconds"], state["collected"], state["evaluations"]
        self.rows = self.curve_rows()

    def save(self) -> None:
        state = {
            "format": LOOP_FORMAT,
            "format_version": LOOP_FORMAT_VERSION,
            "identity": self.identity(),
            "done": sorted(self.done),
            "seconds": self.seconds,
            "collected": self.collected,
            "evaluations": self.evaluations,
        }
        atomic_write_bytes(self.out / STATE, (json.dumps(state, indent=1) + "\n").encode(), mode=0o644)

    def finish(self, round_: int, stage: str, seconds: float) -> None:
        self.seconds.setdefault(str(round_), {})[stage] = round(seconds, 3)
        self.done.add((round_, stage))
        if stage == "evaluate":
            self.rows = self.curve_rows()
            write_curve(self.rows, self.out)
        self.save()
        self.log(f"round {round_}: {stage} done in {seconds:.1f} s")

    def curve_rows(self) -> list[CurveRow]:
        rows = []
        for r in sorted(int(r) for r in self.evaluations):
            seeds = range(self.settings.loop.collect_seed, self.settings.loop.collect_seeds(r).stop) if r else range(0)
            collected = [steps for seed, steps in self.collected.items() if int(seed) in seeds]
            rows.append(
                CurveRow(
                    round=r,
                    env_steps=sum(collected),
                    episodes_collected=len(collected),
                    seconds=dict(self.seconds.get(str(r), {})),
                    **self.evaluations[str(r)],
                )
            )
        return rows

    # --- paths ----------------------------------------------------------------------------------------------

    @property
    def episodes(self) -> Path:
        return self.out / "episodes"

    def round_dir(self, round_: int) -> Path:
        return self.out / f"round_{round_:02d}"

    def checkpoint(self, round_: int) -> Path:
        if round_ == 0 and self.settings.loop.start_from:
            return Path(self.settings.loop.start_from)
        return self.round_dir(round_) / "train" / "best.pt"

    # --- stages ---------------------------------------------------------------------------------------------

    def data(self, round_: int) -> None:
        """Copy the recorded episodes (and their meta.json) into episodes/, which the rounds add to."""
        from wm_train.data import episode_paths
        from wm_train.store import is_store

        source = Path(self.settings.train.data.path)
        if is_store(source):
            raise ValueError(f"{source} is an episode store; wm-loop adds episode files to a folder of .npz episodes")
        paths = episode_paths(source)
        if read_meta(source) is not None:
            paths.append(source / META)
        elif not self.settings.loop.env_id:
            raise FileNotFoundError(f"{source / META} not found: set loop.env_id to the environment it was recorded in")
        with staged_dir(self.episodes) as staging:  # replaces a copy a killed run left unrecorded
            for path in paths:
                shutil.copyfile(path, staging / path.name)
        self.log(f"round 0: the recorded episodes copied to {self.episodes}")

    def train(self, round_: int) -> None:
        from wm_train.trainer import Trainer

        if round_ == 0 and self.settings.loop.start_from:
            return
        cfg = self.settings.train
        train = dataclasses.replace(cfg.train, out_dir=str(self.round_dir(round_) / "train"))
        if round_ > 0:
            previous = str(self.checkpoint(round_ - 1))
            train = dataclasses.replace(train, init_from=previous, epochs=self.settings.loop.epochs)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(self.episodes)), train=train)
        trainer = Trainer(cfg, progress=self.progress)
        if (trainer.out_dir / "last.pt").exists():
            trainer.resume()  # a training cut short: continued exactly
        trainer.fit()

    def export(self, round_: int) -> None:
        from wm_export.export import export_artifacts

        export_artifacts(
            self.checkpoint(round_), self.round_dir(round_) / "artifacts", overwrite=True, data=self.episodes
        )

    def collect(self, round_: int) -> None:
        """The episodes of round `round_` with the model of the round before and exploration noise."""
        from wm_deploy.control import episode_file_name, save_planner_episodes

        loop = self.settings.loop
        rollout = self.load_rollout(round_ - 1)
        for seed in loop.collect_seeds(round_):
            if (self.episodes / episode_file_name(seed)).exists():
                continue  # saved before a kill
            result = self.drive(rollout, seed, 1, keep=True, exploration=loop.exploration)
            self.collected[str(seed)] = result.episodes["planner"][0].length + result.skip_start
            self.save()  # before the episode file: a kill between the two redoes this (seeded) episode
            save_planner_episodes(result, self.episodes)

    def evaluate(self, round_: int) -> None:
        """Return on the fixed evaluation seeds (no noise), and the R² of the imagined reward and the value."""
        from wm_deploy.control_report import write_report
        from wm_train.evaluate import evaluate_checkpoint

        loop = self.settings.loop
        result = self.drive(self.load_rollout(round_), loop.eval_seed, loop.eval_episodes)
        write_report(result, self.round_dir(round_) / "control", overwrite=True)
        returns = [episode.episode_return for episode in result.episodes["planner"]]
        report = evaluate_checkpoint(
            self.checkpoint(round_),
            self.episodes,
            horizon=self.settings.planner.horizon,
            max_sequences=16,
            action_samples=2,
            examples=0,
            progress=False,
        )
        val = report.splits["val"]
        reward_r2 = val.open_loop.reward_r2
        self.evaluations[str(round_)] = dict(
            returns=[round(r, 3) for r in returns],
            reward_r2=None if reward_r2 is None else round(sum(reward_r2) / len(reward_r2), 4),
            value_r2=None if val.value_r2 is None else round(val.value_r2, 4),
            data_frames=frames_in(self.episodes),
        )

    # --- helpers --------------------------------------------------------------------------------------------

    def load_rollout(self, round_: int):
        from wm_deploy.rollout import Rollout

        return Rollout.load(self.round_dir(round_) / "artifacts", backend=self.settings.loop.backend)

    def drive(self, rollout, seed: int, episodes: int, keep: bool = False, exploration: float = 0.0):
        from tqdm import tqdm

        from wm_deploy.control import run_control

        loop = self.settings.loop
        env_id = loop.env_id or str(read_meta(self.episodes)["env_id"])  # type: ignore[index]
        with tqdm(total=episodes * loop.steps, unit="step", leave=False, disable=not self.progress) as bar:
            bar.set_description(f"{'collect' if keep else 'evaluate'} seed {seed}")
            return run_control(
                rollout,
                env_id,
                episodes=episodes,
                steps=loop.steps,
                seed=seed,
                settings=dataclasses.replace(self.settings.planner, seed=seed),
                record=False,
                keep_episodes=keep,
                on_step=bar.update,
                policy=loop.policy,
                exploration=exploration,
            )


def frames_in(folder: Path) -> int:
    """Frames (decisions) of the episode files in `folder`."""
    import numpy as np

    from wm_train.data import episode_paths

    total = 0
    for path in episode_paths(folder):
        with np.load(path) as episode:
            total += len(episode["action"])
    return total
