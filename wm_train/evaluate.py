"""Evaluation of a trained world model (`wm-eval`): open-loop prediction, action identifiability and the
train/validation gap, written as a report folder.

Dimensions: N sequences, B batch, L = context + horizon frames, F horizon (future) steps, C=3 colour channels,
H=W frame size, S latent, D deter, A encoded action, K action sequences compared from one state.

Open loop: the RSSM is teacher-forced through the first `context` frames with the encoder's posterior means
(as in training: h_0 = 0 pairs with z_0), then imagines `horizon` steps from the prior with the true actions.
Horizon step k (1-based) predicts frame `context - 1 + k`.

Action identifiability: from that same state the RSSM also imagines with the actions of a sequence from another
episode ("shuffled") and with actions drawn per step from all of the split's actions ("random": the actions'
marginal without their order). A model that ignores its actions predicts the same frames whatever the actions:
its error ratio true / shuffled is exactly 1 and its spread across action sequences is exactly 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wm_core.actions import ActionCodec
from wm_core.config import Config
from wm_core.losses import gaussian_kl
from wm_core.model import WorldModel
from wm_core.publish import staged_dir

from .data import EpisodeSet, load_splits, to_batch

SPLITS = ("train", "val")
HEADLINE_STEPS = (1, 5, 10, 30)  # horizon steps quoted in summaries and the ablation table
REPORT_FILE = "report.json"
PLOT_FILE = "error_vs_horizon.png"


@dataclass
class OpenLoopMetrics:
    """Every list has one entry per horizon step, step 1 first; each entry is a mean over the sequences."""

    pixel_mse: list[float]
    """squared error of the decoded imagined prior mean against the real frame, mean over pixels"""
    latent_kl: list[float]
    """KL(q(z|x) || imagined prior), summed over latent dimensions: the rssm_loss, open loop"""
    latent_mse: list[float]
    """squared distance of the imagined prior mean to the posterior mean, mean over latent dimensions"""
    copy_last_mse: list[float]
    """pixel MSE of repeating the last context frame: a predictor that knows no dynamics"""
    recon_mse: float
    """pixel MSE of decoding the posterior means of the predicted frames: the floor the decoder sets"""
    growth: float
    """pixel_mse at the last step / at step 1: how much the error grows over the horizon"""
    vs_copy_last: float
    """pixel_mse / copy_last_mse at the last step: below 1, the rollout still beats repeating a frame"""


@dataclass
class ActionMetrics:
    """Imagination from the same filtered state with other actions than the true ones."""

    shuffled_pixel_mse: list[float]
    """per horizon step: pixel MSE with the actions of a sequence from another episode"""
    random_pixel_mse: list[float]
    """per horizon step: pixel MSE with actions drawn per step from the split's actions"""
    shuffled_latent_mse: list[float]
    """per horizon step: latent_mse (see OpenLoopMetrics) with shuffled actions"""
    random_latent_mse: list[float]
    """per horizon step: latent_mse with random actions"""
    ratio_shuffled: float
    """pixel MSE with the true actions / with shuffled actions, summed over the horizon: well below 1 means the
    model uses the actions; exactly 1 means it ignores them"""
    ratio_random: float
    """as ratio_shuffled, against random actions"""
    latent_ratio_shuffled: float
    """as ratio_shuffled, on latent_mse"""
    latent_ratio_random: float
    """as ratio_random, on latent_mse"""
    spread: list[float]
    """per horizon step: std of the imagined latent means across `action_samples` action sequences (the true one
    and shuffled ones) from the same state, mean over latent dimensions and sequences, divided by latent_scale;
    0 means the actions change nothing"""
    spread_mean: float
    """spread averaged over the horizon"""
    latent_scale: float
    """std of the posterior means over the evaluated frames, mean over latent dimensions"""


@dataclass
class SplitMetrics:
    episodes: int
    """episodes of the split long enough for context + horizon"""
    sequences: int
    """non-overlapping sequences of context + horizon frames evaluated (at most max_sequences)"""
    losses: dict[str, float]
    """teacher-forced WorldModelOutput fields (the training losses) over the split's fixed windows"""
    open_loop: OpenLoopMetrics
    actions: ActionMetrics


@dataclass
class Examples:
    """A few sequences of one split for the PNG strips (float32 frames in [0, 1])."""

    real: np.ndarray
    """[n, L, 3, H, W]: context and horizon frames"""
    predicted: np.ndarray
    """[n, F, 3, H, W]: decoded imagined prior means with the true actions"""


@dataclass
class EvalReport:
    checkpoint: str
    data: str
    split: str
    """the split the summary, the strips and the plot's headline curves show"""
    context: int
    horizon: int
    max_sequences: int
    action_samples: int
    seed: int
    splits: dict[str, SplitMetrics]
    gap: dict[str, float]
    """val - train of the teacher-forced losses, and each relative to train (`*_relative`)"""
    examples: Examples | None = field(default=None, repr=False)
    files: dict[str, object] = field(default_factory=dict)
    """report files relative to the report folder"""

    def to_dict(self) -> dict:
        raw = dataclasses.asdict(dataclasses.replace(self, examples=None))
        raw.pop("examples")
        return raw

    def pixel_mse_at(self, split: str, step: int) -> float | None:
        """Open-loop pixel MSE at horizon step `step` (1-based); None beyond the horizon."""
        errors = self.splits[split].open_loop.pixel_mse
        return errors[step - 1] if 1 <= step <= len(errors) else None


@dataclass
class Sequences:
    """Non-overlapping windows of L frames from the episodes of one split (raw data, as on disk)."""

    obs: list[np.ndarray]
    """N arrays uint8 [L, H, W, 3]"""
    actions: list[np.ndarray]
    """N arrays of raw actions [L, A] or [L]"""
    episode: np.ndarray
    """[N] index of the episode each window comes from"""
    action_pool: np.ndarray
    """every raw action of the split, for the random-action comparison"""
    episodes: int
    """episodes with at least L frames"""


def sequences_of(episodes: EpisodeSet, length: int, max_sequences: int, split: str) -> Sequences:
    """Windows of `length` frames, non-overlapping, evenly subsampled to at most `max_sequences`."""
    spans = [(e, start) for e, obs in enumerate(episodes.obs) for start in range(0, len(obs) - length + 1, length)]
    if not spans:
        longest = max(len(obs) for obs in episodes.obs)
        raise ValueError(
            f"{split} split: no episode has context + horizon = {length} frames (the longest has "
            f"{longest}); lower --context or --horizon, or record longer episodes"
        )
    if len(spans) < 2:
        raise ValueError(
            f"{split} split: the action comparison needs at least 2 sequences of {length} frames, "
            f"found {len(spans)}; record more or longer episodes, or lower --context or --horizon"
        )
    if len(spans) > max_sequences:
        spans = [spans[i] for i in np.linspace(0, len(spans) - 1, max_sequences).round().astype(int)]
    return Sequences(
        obs=[episodes.obs[e][s : s + length] for e, s in spans],
        actions=[episodes.actions[e][s : s + length] for e, s in spans],
        episode=np.array([e for e, _ in spans]),
        action_pool=np.concatenate(episodes.actions),
        episodes=sum(len(obs) >= length for obs in episodes.obs),
    )


def donor_indices(episode: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[N, count] indices of other sequences whose actions replace each sequence's own: from another episode
    where the split has several, else another window of the same episode."""
    n = len(episode)
    assert n >= 2, "sequences_of guarantees two sequences"
    donors = np.empty((n, count), dtype=np.int64)
    for i in range(n):
        candidates = np.flatnonzero(episode != episode[i])
        if len(candidates) == 0:
            candidates = np.delete(np.arange(n), i)
        donors[i] = rng.choice(candidates, size=count, replace=len(candidates) < count)
    return donors


def filter_context(model: WorldModel, post_mean: torch.Tensor, actions: torch.Tensor, context: int):
    """Teacher-force the RSSM through the context: posterior means [B, >=context, S] and encoded actions
    [B, >=context, A] -> the state (h [B, D], z [B, S]) at frame context - 1."""
    h = model.rssm.initial_state(post_mean.shape[0], post_mean.device)
    for t in range(context - 1):
        h, _, _ = model.rssm.step(h, post_mean[:, t], actions[:, t])
    return h, post_mean[:, context - 1]


def error_ratio(errors: list[float] | np.ndarray, reference: list[float] | np.ndarray) -> float:
    """sum(errors) / sum(reference): < 1 when `errors` (true actions) are smaller than `reference`."""
    total = float(np.sum(reference))
    return float(np.sum(errors)) / total if total > 0 else 1.0


@torch.no_grad()
def open_loop(
    model: WorldModel,
    codec: ActionCodec,
    sequences: Sequences,
    context: int,
    horizon: int,
    action_samples: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    examples: int = 0,
    device: torch.device | str = "cpu",
    bar: tqdm | None = None,
):
    """Open-loop and action-identifiability metrics of one split -> (OpenLoopMetrics, ActionMetrics, Examples)."""
    model.eval()
    n = len(sequences.obs)
    rng = np.random.default_rng(seed)
    if action_samples < 2:
        raise ValueError(f"action_samples must be >= 2 (the true actions and at least one other), got {action_samples}")
    donors = donor_indices(sequences.episode, action_samples - 1, rng)  # column 0: "shuffled"
    random_actions = sequences.action_pool[rng.integers(len(sequences.action_pool), size=(n, horizon))]
    example_ids = set(np.linspace(0, n - 1, min(examples, n)).round().astype(int).tolist()) if examples else set()
    sums = {
        name: torch.zeros(horizon, dtype=torch.float64)
        for name in (
            "pixel_mse",
            "latent_kl",
            "latent_mse",
            "copy_last_mse",
            "shuffled_pixel_mse",
            "random_pixel_mse",
            "shuffled_latent_mse",
            "random_latent_mse",
            "spread",
        )
    }
    recon_sum = torch.zeros((), dtype=torch.float64)
    moments = torch.zeros(2, model.cfg.latent_dim, dtype=torch.float64)  # sum and sum of squares per dimension
    frames_seen = 0
    real_examples, predicted_examples = [], []
    future = slice(context, context + horizon)  # the frames the horizon predicts

    def imagined_actions(raw: list[np.ndarray]) -> torch.Tensor:
        return codec.encode(torch.from_numpy(np.stack(raw)).to(device))  # [B, F, A]

    for first in range(0, n, batch_size):
        ids = list(range(first, min(first + batch_size, n)))
        windows = [(sequences.obs[i], sequences.actions[i]) for i in ids]
        obs, actions = to_batch(windows, codec, device)  # [B, L, C, H, W], [B, L, A]
        post_mean, post_std = model.encode(obs)
        h, z = filter_context(model, post_mean, actions, context)
        target, target_mean, target_std = obs[:, future], post_mean[:, future], post_std[:, future]

        def rollout(encoded: torch.Tensor, h=h, z=z):
            prior_mean, prior_std, _ = model.rssm.imagine(h, z, encoded)
            return prior_mean, prior_std

        def per_step(values: torch.Tensor) -> torch.Tensor:  # [B, F, ...] -> mean per step, summed over B: [F]
            return values.flatten(2).mean(-1).sum(0).double().cpu()

        true_mean, true_std = rollout(actions[:, context - 1 : context - 1 + horizon])
        predicted = model.decode(true_mean)  # [B, F, S] -> [B, F, 3, H, W]
        sums["pixel_mse"] += per_step((predicted - target).pow(2))
        sums["latent_kl"] += gaussian_kl(target_mean, target_std, true_mean, true_std).sum(0).double().cpu()
        sums["latent_mse"] += per_step((true_mean - target_mean).pow(2))
        sums["copy_last_mse"] += per_step((obs[:, context - 1 : context] - target).pow(2))
        recon_sum += (model.decode(target_mean) - target).pow(2).flatten(2).mean(-1).sum().double().cpu() / horizon

        shuffled = [
            rollout(
                imagined_actions([sequences.actions[d][context - 1 : context - 1 + horizon] for d in donors[ids, k]])
            )[0]
            for k in range(donors.shape[1])
        ]
        random_mean, _ = rollout(imagined_actions(list(random_actions[ids])))
        for name, other_mean in (("shuffled", shuffled[0]), ("random", random_mean)):
            sums[f"{name}_pixel_mse"] += per_step((model.decode(other_mean) - target).pow(2))
            sums[f"{name}_latent_mse"] += per_step((other_mean - target_mean).pow(2))
        # The true actions and action_samples - 1 shuffled ones from the same state: [K, B, F, S].
        alternatives = torch.stack([true_mean, *shuffled])
        sums["spread"] += alternatives.std(0, unbiased=False).mean(-1).sum(0).double().cpu()

        flat = post_mean.flatten(0, 1).double().cpu()  # [B, L, S] -> [B*L, S]
        moments += torch.stack([flat.sum(0), flat.pow(2).sum(0)])
        frames_seen += flat.shape[0]
        for row, i in enumerate(ids):
            if i in example_ids:
                real_examples.append(obs[row].cpu().numpy())
                predicted_examples.append(predicted[row].cpu().numpy())
        if bar is not None:
            bar.update(len(ids))

    mean = {name: (total / n).tolist() for name, total in sums.items()}
    variance = (moments[1] / frames_seen - (moments[0] / frames_seen).pow(2)).clamp(min=0)
    latent_scale = float(variance.sqrt().mean())
    spread = [s / latent_scale if latent_scale > 0 else 0.0 for s in mean["spread"]]
    metrics = OpenLoopMetrics(
        pixel_mse=mean["pixel_mse"],
        latent_kl=mean["latent_kl"],
        latent_mse=mean["latent_mse"],
        copy_last_mse=mean["copy_last_mse"],
        recon_mse=float(recon_sum) / n,
        growth=error_ratio(mean["pixel_mse"][-1:], mean["pixel_mse"][:1]),
        vs_copy_last=error_ratio(mean["pixel_mse"][-1:], mean["copy_last_mse"][-1:]),
    )
    action_metrics = ActionMetrics(
        shuffled_pixel_mse=mean["shuffled_pixel_mse"],
        random_pixel_mse=mean["random_pixel_mse"],
        shuffled_latent_mse=mean["shuffled_latent_mse"],
        random_latent_mse=mean["random_latent_mse"],
        ratio_shuffled=error_ratio(mean["pixel_mse"], mean["shuffled_pixel_mse"]),
        ratio_random=error_ratio(mean["pixel_mse"], mean["random_pixel_mse"]),
        latent_ratio_shuffled=error_ratio(mean["latent_mse"], mean["shuffled_latent_mse"]),
        latent_ratio_random=error_ratio(mean["latent_mse"], mean["random_latent_mse"]),
        spread=spread,
        spread_mean=float(np.mean(spread)),
        latent_scale=latent_scale,
    )
    shown = Examples(np.stack(real_examples), np.stack(predicted_examples)) if real_examples else None
    return metrics, action_metrics, shown


@torch.no_grad()
def teacher_forced_losses(
    model: WorldModel,
    episodes: EpisodeSet,
    codec: ActionCodec,
    cfg: Config,
    max_windows: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The training losses (WorldModelOutput) over the split's fixed windows, evenly subsampled to
    `max_windows`."""
    model.eval()
    windows = episodes.fixed_windows()
    if len(windows) > max_windows:
        windows = [windows[i] for i in np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
    sums: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):  # the reparameterisation noise: seeded here, the caller's RNG untouched
        torch.manual_seed(seed)
        for first in range(0, len(windows), cfg.train.batch_size):
            chunk = windows[first : first + cfg.train.batch_size]
            obs, actions = to_batch(chunk, codec, device)
            out = model(obs, actions, beta=cfg.train.beta, rssm_scale=cfg.train.rssm_scale)
            for name, value in out.scalars().items():
                sums[name] = sums.get(name, 0.0) + value * len(chunk)
    return {name: total / len(windows) for name, total in sums.items()}


def loss_gap(train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    """val - train of every loss, and the same relative to train."""
    gap = {}
    for name in train:
        gap[name] = val[name] - train[name]
        gap[f"{name}_relative"] = gap[name] / abs(train[name]) if train[name] else 0.0
    return gap


def evaluate_model(
    model: WorldModel,
    cfg: Config,
    codec: ActionCodec,
    episodes: dict[str, EpisodeSet],
    context: int = 5,
    horizon: int = 30,
    split: str = "val",
    max_sequences: int = 64,
    action_samples: int = 8,
    examples: int = 4,
    seed: int = 0,
    checkpoint: str = "",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvalReport:
    """Every metric of the report on the `train` and `val` episodes; `split` picks the one the examples show."""
    check_settings(context, horizon, split, max_sequences, action_samples)
    if set(episodes) != set(SPLITS):
        raise ValueError(f"episodes must hold the splits {SPLITS}, got {sorted(episodes)}")
    # Build every split's sequences first: a horizon too long for the data fails before any computation.
    sequences = {name: sequences_of(episodes[name], context + horizon, max_sequences, name) for name in SPLITS}
    model = model.to(device).eval()
    results, shown = {}, None
    bar = tqdm(total=sum(len(s.obs) for s in sequences.values()), desc="wm-eval", unit="seq", disable=not progress)
    for name in SPLITS:
        bar.set_postfix(split=name)
        open_loop_metrics, action_metrics, split_examples = open_loop(
            model,
            codec,
            sequences[name],
            context,
            horizon,
            action_samples,
            cfg.train.batch_size,
            seed,
            examples if name == split else 0,
            device,
            bar,
        )
        losses = teacher_forced_losses(model, episodes[name], codec, cfg, max_sequences, seed, device)
        results[name] = SplitMetrics(
            sequences[name].episodes, len(sequences[name].obs), losses, open_loop_metrics, action_metrics
        )
        shown = split_examples if name == split else shown
    bar.close()
    return EvalReport(
        checkpoint=str(checkpoint),
        data=cfg.data.path,
        split=split,
        context=context,
        horizon=horizon,
        max_sequences=max_sequences,
        action_samples=action_samples,
        seed=seed,
        splits=results,
        gap=loss_gap(results["train"].losses, results["val"].losses),
        examples=shown,
    )


def check_settings(context: int, horizon: int, split: str, max_sequences: int, action_samples: int) -> None:
    if context < 1 or horizon < 1:
        raise ValueError(f"context and horizon must be >= 1, got context={context} horizon={horizon}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_sequences < 2:
        raise ValueError(
            f"max_sequences must be >= 2 (the action comparison swaps actions between sequences), got {max_sequences}"
        )
    if action_samples < 2:
        raise ValueError(f"action_samples must be >= 2 (the true actions and at least one other), got {action_samples}")


def check_report_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse a report folder that already holds files unless `overwrite`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"report folder {out_dir} exists and is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"report folder {out_dir} already holds files; pass --overwrite or choose another -o")
    return out_dir


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    context: int = 5,
    horizon: int = 30,
    max_sequences: int = 64,
    action_samples: int = 8,
    examples: int = 4,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 0,
    progress: bool = True,
) -> EvalReport:
    """Load a checkpoint and the episodes in `data`, split exactly as training split them (the checkpoint's
    data.val_fraction and train.seed, so `val` holds the episodes training did not see), and evaluate.
    `threads` > 0 sets torch's intra-op threads on CPU."""
    check_settings(context, horizon, split, max_sequences, action_samples)
    if threads > 0:
        torch.set_num_threads(threads)
    from wm_core.checkpoint import load_checkpoint

    model, cfg, extras = load_checkpoint(checkpoint, map_location=device)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    train, val, _ = load_splits(cfg)  # the codec refitted here is ignored: the checkpoint's is the one it learned
    return evaluate_model(
        model,
        cfg,
        extras["action_codec"],
        {"train": train, "val": val},
        context,
        horizon,
        split,
        max_sequences,
        action_samples,
        examples,
        seed,
        str(checkpoint),
        device,
        progress,
    )


def write_report(report: EvalReport, out_dir: str | Path, overwrite: bool = False) -> Path:
    """report.json, the error-vs-horizon plot and the strips, written to a temporary folder beside `out_dir`
    and renamed into place: a failure never leaves a partial report."""
    from .eval_plots import save_error_plot, save_strips

    out_dir = check_report_dir(out_dir, overwrite)
    with staged_dir(out_dir) as tmp:
        files: dict[str, object] = {"report": REPORT_FILE, "plot": PLOT_FILE}
        save_error_plot(report, tmp / PLOT_FILE)
        files["strips"] = save_strips(report, tmp) if report.examples is not None else []
        report.files = files
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return out_dir


def run_eval(
    checkpoint: str | Path, data: str | Path, out_dir: str | Path, overwrite: bool = False, **kwargs
) -> EvalReport:
    """What `wm-eval` does: check the report folder, evaluate, write the report. `kwargs` are
    evaluate_checkpoint's settings."""
    check_report_dir(out_dir, overwrite)  # before minutes of evaluation, not after
    report = evaluate_checkpoint(checkpoint, data, **kwargs)
    write_report(report, out_dir, overwrite)
    return report


def summary_lines(report: EvalReport) -> list[str]:
    """A few lines for the terminal: the headline split's numbers and the train/validation gap."""
    metrics = report.splits[report.split]
    steps = [s for s in HEADLINE_STEPS if s < report.horizon] + [report.horizon]
    ol, act = metrics.open_loop, metrics.actions
    lines = [
        f"{report.split}: {metrics.sequences} sequences from {metrics.episodes} episodes, context {report.context}, "
        f"horizon {report.horizon}",
        "open-loop pixel MSE: "
        + ", ".join(f"step {s} {report.pixel_mse_at(report.split, s):.4f}" for s in steps)
        + f" (repeat-last-frame at {report.horizon}: {ol.copy_last_mse[-1]:.4f}; reconstruction floor "
        f"{ol.recon_mse:.4f})",
        f"open-loop latent KL: step 1 {ol.latent_kl[0]:.2f}, step {report.horizon} {ol.latent_kl[-1]:.2f}",
        f"actions: error ratio true/shuffled {act.ratio_shuffled:.3f} (latent {act.latent_ratio_shuffled:.3f}), "
        f"true/random {act.ratio_random:.3f}; spread across action sequences {act.spread_mean:.3f} of the latent "
        "scale (ratio 1 and spread 0: actions ignored)",
    ]
    train, val = report.splits["train"].losses, report.splits["val"].losses
    lines.append(
        f"rssm_loss train {train['rssm_loss']:.3f}, val {val['rssm_loss']:.3f}: gap "
        f"{report.gap['rssm_loss']:+.3f} ({100 * report.gap['rssm_loss_relative']:+.1f}%); open-loop pixel "
        f"MSE over the horizon train {np.mean(report.splits['train'].open_loop.pixel_mse):.4f}, "
        f"val {np.mean(report.splits['val'].open_loop.pixel_mse):.4f}"
    )
    return lines
