"""Training loop: AdamW, gradient clipping, validation every epoch, atomic checkpoints, exact resume.

Under torchrun the same loop runs data-parallel (wm_train.distributed): train.batch_size is the global batch,
each rank samples batch_size / world_size windows from its own random stream (seeded by train.seed and its
rank), DistributedDataParallel averages the gradients, validation windows are shared out and their loss sums
all-reduced, and only rank 0 writes checkpoints, metrics, previews and log lines.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from wm_core.actions import ActionCodec, read_action_repeat
from wm_core.checkpoint import read_checkpoint, save_checkpoint
from wm_core.config import Config, saved_config
from wm_core.dataset_meta import dataset_action_repeat
from wm_core.losses import ActorCriticOutput, WorldModelOutput
from wm_core.model import WorldModel
from wm_core.publish import atomic_write_bytes

from .actor_critic import ActorCritic
from .collapse import COLLAPSE_CHECKLIST, STALL_EPOCHS, LatentActivity, collapse_reason, latent_activity
from .data import EpisodeSet, head_targets, load_splits, to_batch
from .distributed import Distributed, setup
from .eval_metrics import open_loop_mse, teacher_forced_sums
from .preview import save_preview

LOG_NAMES = {"loss": "loss", "recon_loss": "rec", "kld": "kld", "rssm_loss": "rssm", "one_step": "1step"}

RSSM_ZERO_CHECKLIST = (
    "rssm_loss is exactly 0: the RSSM is not learning anything. Check that data.seq_len >= 4 (it needs "
    "transitions), that the actions are not all zero, and that the latents vary across frames (a collapsed "
    "encoder gives identical posteriors)."
)


@dataclass
class EpochMetrics:
    epoch: int
    train: dict[str, float]
    """mean over the epoch's steps of every WorldModelOutput field (and ActorCriticOutput field, with
    model.actor_critic)"""
    val: dict[str, float]
    """mean over the fixed validation windows of every WorldModelOutput field (and ActorCriticOutput field, with
    model.actor_critic), plus `latent_std`,
    `posterior_std` and `active_dims` of the posteriors over those windows (wm_train.collapse.LatentActivity),
    and the open-loop pixel MSE at a few horizons (`open_loop_mse@k`, eval_metrics.open_loop_mse)"""
    frames_per_s: float
    """training frames (batch x seq_len per step) per second of the epoch's training steps"""

    def log_line(self, split: str) -> str:
        values = getattr(self, split)
        parts = [
            f"{short}={values[name]:.4f}" if name == "one_step" else f"{short}={values[name]:.2f}"
            for name, short in LOG_NAMES.items()
        ]
        if values.get("overshooting"):
            parts.append(f"os={values['overshooting']:.2f}")
        if values.get("reward_loss"):
            parts.append(f"rew={values['reward_loss']:.4f}")
        if "repval_loss" in values:
            parts.append(f"val={values['repval_loss']:.3f} bc={values['bc_loss']:.3f}")
        parts += [f"ol@{key.split('@')[1]}={value:.4f}" for key, value in values.items() if "@" in key]
        return f"epoch {self.epoch} {split} " + " ".join(parts)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank > 0: its own noise, the same every run (rank 0 keeps `seed`)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def clip_gradients(model: WorldModel, max_norm: float, per_part: bool) -> None:
    """Clip the gradient norm of each part (model.parts()) to `max_norm`, or of all parameters together.

    Per part keeps the isolation through the optimiser: with one global norm, the decoder's gradient (hundreds,
    against the RSSM's tens and the heads' few) decides how far the RSSM and the heads move on every step."""
    groups = model.parts().values() if per_part else [model.world_parameters()]
    for params in groups:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


class Trainer:
    def __init__(self, cfg: Config, progress: bool = True, dist: Distributed | None = None):
        self.cfg = cfg
        self.dist = dist or Distributed()
        self.progress = progress and self.dist.is_main
        self.out_dir = Path(cfg.train.out_dir)
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        t = cfg.train
        if t.batch_size % self.dist.world_size:
            raise ValueError(
                f"train.batch_size={t.batch_size} is the global batch and must split evenly over "
                f"{self.dist.world_size} processes"
            )
        self.rank_batch = t.batch_size // self.dist.world_size
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.rng = seed_everything(t.seed)
        with warnings.catch_warnings():
            if not self.dist.is_main:  # the data warnings are the same on every rank: rank 0 shows them
                warnings.simplefilter("ignore")
            self.train_set, self.val_set, self.codec = load_splits(cfg)
        self.action_repeat = dataset_action_repeat(cfg.data.path)  # the checkpoint carries it to control
        self.model = WorldModel(cfg.model).to(self.device)
        if t.init_from:
            self._start_from(Path(t.init_from))
        # What runs forward and backward: the model itself, or DDP around it, which broadcasts rank 0's weights
        # now and averages gradients in backward. Every parameter gets a gradient from `loss` (encoder and
        # decoder from the VAE terms, the RSSM from its own), so find_unused_parameters stays off;
        # tests/test_distributed.py checks that the isolation of the loss terms holds through the wrapper.
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if self.dist.rank:  # its own windows and noise; rank 0 keeps the streams of a single-process run
            self.rng = np.random.default_rng([t.seed, self.dist.rank])
            torch.manual_seed(rank_seed(t.seed, self.dist.rank))
        # The world model's parts only: the critic and the actor have optimisers of their own (ActorCritic).
        self.optimizer = torch.optim.AdamW(self.model.world_parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.actor_critic: ActorCritic | None = None
        if self.model.actor is not None:
            if self.dist.enabled:
                raise ValueError("model.actor_critic is not supported under torchrun yet; train it in one process")
            self.model.actor.set_actions(self.codec)
            self.actor_critic = ActorCritic(self.model, t.value_lr, t.actor_lr, t.grad_clip)
        self.last_actor_critic: ActorCriticOutput | None = None
        """what the last train_step's actor-critic step logged (None without model.actor_critic)"""
        self.steps_per_epoch = max(1, math.ceil(self.train_set.frames / (t.batch_size * cfg.data.seq_len)))
        self.epoch = 0
        self.best_val_loss = math.inf
        self.history: list[EpochMetrics] = []
        self.steps_done = 0
        """optimiser steps taken: what the KL warm-up counts"""
        self.collapse_warned = False

    def _start_from(self, path: Path) -> None:
        """train.init_from: the weights and the action codec of the checkpoint at `path`."""
        state = read_checkpoint(path)
        if state["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"train.init_from {path} has model config {state['config']['model']}, not {self.cfg.to_dict()['model']}"
            )
        if read_action_repeat(state, str(path)) != self.action_repeat:
            raise ValueError(
                f"train.init_from {path} was trained on data recorded with action_repeat "
                f"{read_action_repeat(state, str(path))}, {self.cfg.data.path} holds action_repeat {self.action_repeat}"
            )
        self.model.load_state_dict(state["model"])
        self.codec = ActionCodec.from_dict(state["action_codec"])  # the actions keep the scale the model learnt

    def resume(self) -> None:
        """Continue exactly where `last.pt` stopped: weights, optimiser, epoch, history and RNG states."""
        path = self.out_dir / "last.pt"
        state = read_checkpoint(path)
        if state["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"{path} was trained with model config {state['config']['model']}, not {self.cfg.to_dict()['model']}"
            )
        # More epochs or another learning rate are fine; another loss would change the objective halfway.
        saved = saved_config(state["config"], str(path)).train.loss
        if saved != self.cfg.train.loss:
            current = asdict(self.cfg.train.loss)
            changed = [f"{key}={value!r}" for key, value in asdict(saved).items() if value != current[key]]
            raise ValueError(
                f"{path} was trained with train.{', train.'.join(changed)}; set the same in the config to resume "
                "it with the loss it started with"
            )
        if read_action_repeat(state, str(path)) != self.action_repeat:
            raise ValueError(
                f"{path} was trained on data recorded with action_repeat {read_action_repeat(state, str(path))}, "
                f"{self.cfg.data.path} holds action_repeat {self.action_repeat}: train it from scratch"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.actor_critic is not None:
            self.actor_critic.load_state_dict(state["actor_critic_optimizers"])
        self.epoch = state["epoch"]
        self.steps_done = self.epoch * self.steps_per_epoch
        self.best_val_loss = state["best_val_loss"]
        self.history = [EpochMetrics(**m) for m in state["history"]]
        rng_states = state.get("rank_rng", [state["rng"]])
        if len(rng_states) != self.dist.world_size:
            raise ValueError(
                f"{path} was trained with {len(rng_states)} process(es), not {self.dist.world_size}: resume it "
                f"with torchrun --nproc-per-node {len(rng_states)} to continue it exactly"
            )
        torch.set_rng_state(rng_states[self.dist.rank]["torch"])
        self.rng.bit_generator.state = rng_states[self.dist.rank]["numpy"]

    def fit(self) -> list[EpochMetrics]:
        while self.epoch < self.cfg.train.epochs:
            self.epoch += 1
            train_values, frames_per_s = self._train_epoch()
            val_values = self.evaluate(self.val_set)
            metrics = EpochMetrics(self.epoch, train_values, val_values, frames_per_s)
            self.history.append(metrics)
            rng_states = self.dist.all_gather_object(self._rng_state())
            if self.dist.is_main:
                self._report(metrics)
                self._save(metrics, rng_states)
            self.best_val_loss = min(self.best_val_loss, metrics.val["loss"])
        return self.history

    def _train_epoch(self) -> tuple[dict[str, float], float]:
        self.model.train()
        t = self.cfg.train
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {self.epoch}/{t.epochs}",
            unit="step",
            leave=False,
            disable=not self.progress,
        )
        start = time.perf_counter()
        for _ in bar:
            out = self.train_step()
            logged = vars(out) | (vars(self.last_actor_critic) if self.last_actor_critic is not None else {})
            for name, value in logged.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
        seconds = time.perf_counter() - start
        frames = self.steps_per_epoch * t.batch_size * self.cfg.data.seq_len  # all ranks': the global batch
        names = list(sums)
        reduced = self.dist.all_reduce_sum(torch.stack([sums[n] for n in names]).double()).cpu().tolist()
        return {n: v / (self.steps_per_epoch * self.dist.world_size) for n, v in zip(names, reduced)}, frames / seconds

    def train_step(self) -> WorldModelOutput:
        """One optimiser step on a batch of windows sampled at random offsets."""
        t = self.cfg.train
        windows = self.train_set.sample(self.rng, self.rank_batch)
        obs, actions = to_batch(windows, self.codec, self.device)
        rewards, continues = head_targets(windows, self.device) or (None, None)
        step = self.steps_done + (t.kl_warmup_steps if t.init_from else 0)  # a trained model needs no warm-up
        out = self.train_model(obs, actions, t.loss.at_step(step), rewards=rewards, continues=continues)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        clip_gradients(self.model, t.grad_clip, t.grad_clip_per_part)
        self.optimizer.step()
        if self.actor_critic is not None and rewards is not None and continues is not None:
            self.last_actor_critic = self.actor_critic.step(obs, actions, rewards, continues, t.loss)
        self.steps_done += 1
        return out

    def evaluate(self, episodes: EpisodeSet) -> dict[str, float]:
        """The training losses over the fixed windows of `episodes` (what wm-eval reports as well), the
        open-loop MSE at a few horizons on a handful of them, and how much the posterior means vary over them
        (latent_std, active_dims). Under DDP each rank takes every world_size-th window for the losses and the
        sums are added up across ranks."""
        windows = episodes.fixed_windows()
        mine = windows[self.dist.rank :: self.dist.world_size]
        sums = teacher_forced_sums(self.model, mine, self.codec, self.cfg.train, self.device)
        names = [f.name for f in fields(WorldModelOutput)]
        totals = torch.tensor([sums.get(n, 0.0) for n in names], dtype=torch.float64, device=self.device)
        reduced = self.dist.all_reduce_sum(totals).cpu().tolist()
        losses = {n: v / len(windows) for n, v in zip(names, reduced)}
        # The open-loop MSE and the latent activity read the same windows on every rank: no reduction needed.
        activity = latent_activity(self.model, windows, self.codec, self.cfg.train.batch_size, self.device)
        if self.actor_critic is not None:
            losses |= self._actor_critic_losses(windows)
        return {
            **losses,
            **open_loop_mse(self.model, windows, self.codec, self.device),
            "latent_std": activity.latent_std,
            "posterior_std": activity.posterior_std,
            "active_dims": float(activity.active_dims),
        }

    def _actor_critic_losses(self, windows) -> dict[str, float]:
        """The critic's and the actor's losses on `windows` (validation: no step, the return range unmoved)."""
        assert self.actor_critic is not None
        sums: dict[str, float] = {}
        size = self.cfg.train.batch_size
        for first in range(0, len(windows), size):
            chunk = windows[first : first + size]
            obs, actions = to_batch(chunk, self.codec, self.device)
            rewards, continues = head_targets(chunk, self.device) or (None, None)
            assert rewards is not None and continues is not None
            with torch.no_grad():
                *_, out = self.actor_critic.losses(obs, actions, rewards, continues, self.cfg.train.loss, False)
            for name, value in out.scalars().items():
                sums[name] = sums.get(name, 0.0) + value * len(chunk)
        return {name: total / len(windows) for name, total in sums.items()}

    def _report(self, metrics: EpochMetrics) -> None:
        for split in ("train", "val"):
            tqdm.write(metrics.log_line(split))
        if metrics.train["rssm_loss"] == 0.0:
            warnings.warn(RSSM_ZERO_CHECKLIST, UserWarning, stacklevel=2)
        self._warn_if_collapsed()
        # Rewritten whole rather than appended: a full disk cannot leave half a line, and after a kill and
        # --resume the file holds last.pt's history, without the lines of the epoch that was cut short.
        lines = "".join(json.dumps(asdict(m)) + "\n" for m in self.history)
        atomic_write_bytes(self.out_dir / "metrics.jsonl", lines.encode(), mode=0o644)
        _log_tensorboard(self.out_dir, metrics)
        save_preview(
            self.model, self.val_set, self.codec, self.out_dir / f"preview_epoch{self.epoch:03d}.png", self.device
        )

    def _warn_if_collapsed(self) -> None:
        """Once per run, from the third epoch on: the first epochs cannot tell collapse from a slow start."""
        vals = [m.val for m in self.history if "active_dims" in m.val]  # runs resumed from before may lack it
        if self.collapse_warned or len(vals) <= STALL_EPOCHS:
            return
        last = vals[-1]
        activity = LatentActivity(
            last["latent_std"], last["posterior_std"], int(last["active_dims"]), self.cfg.model.latent_dim
        )
        reason = collapse_reason(activity, last["kld"], [v["recon_loss"] for v in vals])
        if reason is not None:
            self.collapse_warned = True
            warnings.warn(COLLAPSE_CHECKLIST.format(reason=reason), UserWarning, stacklevel=3)

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state}

    def _save(self, metrics: EpochMetrics, rng_states: list[dict]) -> None:
        """`rng_states`: every rank's, in rank order (one in a single process)."""
        extras = dict(
            optimizer=self.optimizer.state_dict(),
            epoch=self.epoch,
            best_val_loss=min(self.best_val_loss, metrics.val["loss"]),
            history=[asdict(m) for m in self.history],
            rng=rng_states[0],
        )
        if self.actor_critic is not None:
            extras["actor_critic_optimizers"] = self.actor_critic.state_dict()
        if self.dist.enabled:  # each rank continues its own sampling and noise on --resume
            extras["rank_rng"] = rng_states
        # best.pt before last.pt: a run killed between the two redoes this epoch on --resume and rewrites the
        # same best.pt; the other order would lose it (last.pt already counts this epoch's loss as the best).
        if metrics.val["loss"] < self.best_val_loss:
            save_checkpoint(self.out_dir / "best.pt", self.model, self.cfg, self.codec, self.action_repeat, **extras)
        save_checkpoint(self.out_dir / "last.pt", self.model, self.cfg, self.codec, self.action_repeat, **extras)


def _log_tensorboard(out_dir: Path, metrics: EpochMetrics) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; metrics.jsonl always has everything
        return
    with SummaryWriter(out_dir / "tensorboard") as writer:
        for split in ("train", "val"):
            for name, value in getattr(metrics, split).items():
                writer.add_scalar(f"{split}/{name}", value, metrics.epoch)


def train(cfg: Config, resume: bool = False, progress: bool = True) -> list[EpochMetrics]:
    """Train `cfg`, writing last.pt, best.pt, metrics.jsonl and preview PNGs to cfg.train.out_dir.

    Under torchrun (WORLD_SIZE > 1 in the environment) or inside an initialised process group, every rank calls
    this and trains one DistributedDataParallel model; rank 0 writes the files."""
    dist = setup(resolve_device(cfg.train.device).type)
    try:
        trainer = Trainer(cfg, progress=progress, dist=dist)
        if resume:
            trainer.resume()
        elif (trainer.out_dir / "last.pt").exists():
            raise FileExistsError(
                f"{trainer.out_dir} already holds a run (last.pt); pass --resume to continue it "
                "or choose another train.out_dir"
            )
        return trainer.fit()
    finally:
        dist.close()
