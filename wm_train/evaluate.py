"""`wm-eval`: evaluate a checkpoint on the episodes it was trained and validated on, and write the report folder
(report.json, the error-vs-horizon plot, the strips). What each number means is in eval_metrics.py and
eval_report.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm import tqdm

from wm_core.actions import ActionCodec
from wm_core.checkpoint import load_checkpoint
from wm_core.config import Config
from wm_core.model import WorldModel
from wm_core.publish import check_replaceable, staged_dir

from . import eval_plots
from .collapse import collapse_reason, latent_activity
from .data import EpisodeSet, load_splits
from .eval_metrics import evenly_spaced, loss_gap, open_loop, sequences_of, teacher_forced_losses
from .eval_report import EvalReport, LatentMetrics, SplitMetrics
from .probe import fit_probe
from .value_metrics import value_r2

SPLITS = ("train", "val")
REPORT_FILE = "report.json"
PLOT_FILE = "error_vs_horizon.png"


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
    probes: tuple[str, ...] = (),
) -> EvalReport:
    """Every metric of the report on the `train` and `val` episodes; `split` picks the one the examples show.
    `probes` names per-step arrays the episodes hold (load_splits(per_step=...)) to fit a probe for each."""
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
        windows = evenly_spaced(episodes[name].fixed_windows(), max_sequences)
        losses = teacher_forced_losses(model, windows, codec, cfg.train, device, seed)
        activity = latent_activity(model, windows, codec, cfg.train.batch_size, device)
        reason = collapse_reason(activity, losses["kld"])
        latents = LatentMetrics(
            **dataclasses.asdict(activity), collapsed=reason is not None, collapse_reason=reason or ""
        )
        results[name] = SplitMetrics(
            sequences[name].episodes,
            len(sequences[name].obs),
            losses,
            open_loop_metrics,
            action_metrics,
            latents,
            value_r2(model, codec, episodes[name], cfg.train.discount, device),
        )
        shown = split_examples if name == split else shown
    bar.close()
    probe_results = [fit_probe(model, codec, episodes["train"], episodes["val"], key, device) for key in probes]
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
        probes=probe_results,
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
    """Refuse a report folder that already holds files unless it is an earlier report holding only the files
    its report.json lists, and that only with `overwrite` (wm_core.publish.check_replaceable)."""
    check_replaceable(out_dir, overwrite, "report folder", REPORT_FILE, report_files)
    return Path(out_dir)


def report_files(out_dir: str | Path) -> set[str]:
    """The files wm-eval wrote in the report folder `out_dir`: report.json and the files it lists."""
    files = json.loads((Path(out_dir) / REPORT_FILE).read_text())["files"]
    return {REPORT_FILE, files["plot"], *files["strips"]}


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
    probes: tuple[str, ...] = (),
) -> EvalReport:
    """Load a checkpoint and the episodes in `data`, split exactly as training split them (the checkpoint's
    data.val_fraction and train.seed, so `val` holds the episodes training did not see), and evaluate.
    `threads` > 0 sets torch's intra-op threads on CPU; `probes` names per-step arrays of the episode files to
    fit a latent probe for (wm_train.probe)."""
    check_settings(context, horizon, split, max_sequences, action_samples)
    if threads > 0:
        torch.set_num_threads(threads)
    model, cfg, extras = load_checkpoint(checkpoint, map_location=device)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    train, val, _ = load_splits(
        cfg, per_step=tuple(probes)
    )  # the codec refitted here is ignored: the checkpoint's is the one it learned
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
        tuple(probes),
    )


def write_report(report: EvalReport, out_dir: str | Path, overwrite: bool = False) -> Path:
    """report.json, the error-vs-horizon plot and the strips, written to a temporary folder beside `out_dir`
    and renamed into place: a failure never leaves a partial report."""
    out_dir = check_report_dir(out_dir, overwrite)
    with staged_dir(out_dir, check=lambda: check_report_dir(out_dir, overwrite)) as tmp:
        files: dict[str, object] = {"report": REPORT_FILE, "plot": PLOT_FILE}
        eval_plots.save_error_plot(report, tmp / PLOT_FILE)
        files["strips"] = eval_plots.save_strips(report, tmp) if report.examples is not None else []
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
