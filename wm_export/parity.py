"""The parity gate: run exported graphs against the PyTorch modules and refuse an export that disagrees.

A runner is any callable `(graph name, {input name: array}) -> {output name: array}`; the reference is the
PyTorch wrappers in float32 on CPU. Each graph runs at batch sizes 1, 7 and 256 (a batch of 1, an odd one,
a large one), and the prior step also runs a 50-step open-loop rollout that feeds each backend's own prior
mean back as the next z, so errors compound as they do in deployment.

A trained RSSM can amplify rounding over an open-loop rollout: PyTorch's own float32 rollout then drifts
from the same rollout in float64 by about as much as the 1e-4 latent tolerance. So the rollout's tolerance is
the larger of the latent tolerance and DRIFT_FACTOR times that float32 drift, measured on the same inputs:
an export must be within an order of magnitude as exact as float32 PyTorch itself, which a wrong graph is not
by orders of magnitude.

Per output the report holds the largest absolute difference and the largest difference relative to the
reference's scale (`max_abs / max|reference|`; an element-wise ratio is meaningless next to zero). As in
Hugging Face optimum's export validation, the gate fails on the largest absolute difference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wm_core.actions import ActionCodec
from wm_core.config import Config
from wm_core.errors import EXIT_PARITY, WmError
from wm_core.graphs import BATCH, GraphSpec
from wm_core.onnxruntime_session import create_session

BATCH_SIZES = (1, 7, 256)
ROLLOUT_STEPS = 50
ROLLOUT_PREFIX = f"rollout{ROLLOUT_STEPS}"

DRIFT_FACTOR = 10.0
"""rollout tolerance: this many times PyTorch float32's own drift from float64 (when above the latent one). Within
an order of magnitude: onnxruntime's own rollout drifted 5.3 times as far from float64 as PyTorch's on a trained
CarRacing model (docs/artifacts.md); a wrong graph is off by orders of magnitude"""

Runner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Tolerances:
    """Largest accepted absolute difference from the PyTorch reference."""

    latent: float
    """every output but frames (z_mean, z_std, h_next, prior_mean, prior_std, reward, cont, value, the policy's
    action, the rollout's z and h)"""
    frames: float
    """decoded frames in [0, 1]; one 8-bit grey level is 1/255 = 3.9e-3"""

    def of(self, output: str) -> float:
        return self.frames if output == "frames" else self.latent


# onnxruntime on CPU runs the same float32 arithmetic in another order: 1e-4 on latents; frames get a quarter
# of an 8-bit grey level, invisible once a frame is quantised for display.
ONNXRUNTIME_TOLERANCES = Tolerances(latent=1e-4, frames=1e-3)
# TensorRT picks other kernels (TF32 disabled): 1e-3 on latents, half a grey level on frames.
TENSORRT_FP32_TOLERANCES = Tolerances(latent=1e-3, frames=2e-3)
# float16 keeps ~3 decimal digits: 1e-2 everywhere (2.5 grey levels on frames; measured errors: docs/export.md).
TENSORRT_FP16_TOLERANCES = Tolerances(latent=1e-2, frames=1e-2)


class ParityError(WmError, RuntimeError):
    """An exported graph disagrees with the PyTorch model by more than the tolerance."""

    exit_code = EXIT_PARITY

    def __init__(self, backend: str, failures: list[str], report: dict):
        self.backend = backend
        self.failures = failures
        self.report = report
        super().__init__(f"{backend} parity check failed: {'; '.join(failures)}")


@dataclass
class ParityInputs:
    """Inputs at the largest batch; smaller batches are their first rows."""

    graphs: dict[str, dict[str, np.ndarray]]
    """graph name -> input name -> array [256, ...]"""
    rollout_actions: np.ndarray
    """encoded actions float32 [T, 256, A] for the rollout"""
    source: str
    """where the frames came from"""


class TorchRunner:
    """The PyTorch wrappers as a runner (no autograd)."""

    def __init__(self, graphs: dict[str, nn.Module], specs: dict[str, GraphSpec]):
        self.graphs = graphs
        self.specs = specs

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        with torch.inference_mode():
            outputs = self.graphs[graph](*(torch.from_numpy(inputs[name]) for name in spec.input_names))
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        return {name: y.numpy() for name, y in zip(spec.output_names, outputs, strict=True)}


class OnnxRuntimeRunner:
    """ONNX files run with onnxruntime's CPU provider."""

    def __init__(self, files: dict[str, Path]):
        try:
            # threads=0: onnxruntime picks one per core, as the gate runs large batches
            self.sessions = {name: create_session(path, threads=0) for name, path in files.items()}
        except ImportError as error:
            raise ImportError(f"the parity check runs the graphs with onnxruntime: {error}") from None

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))


def load_frames(data_dir: str | Path, cfg: Config, count: int = max(BATCH_SIZES)) -> tuple[np.ndarray, str]:
    """`count` frames uint8 [count, H, W, 3] evenly spaced over the validation episodes of `data_dir` (the
    split training made with this config; every episode when there is only one), repeated when they hold
    fewer -> (frames, a description of where they came from)."""
    # Imported here: wm_deploy imports wm_export (manifest helpers, graph wrappers) and must not load the
    # training data pipeline.
    from wm_train.data import episode_paths, load_episode, split_episodes

    paths = episode_paths(data_dir)
    split = "all episodes"
    if len(paths) >= 2:
        _, paths = split_episodes(paths, cfg.data.val_fraction, cfg.train.seed)
        split = "validation split"
    m = cfg.model
    frames = np.concatenate(
        [load_episode(p, cfg.data.action_mode, m.action_dim, m.frame_size)[0] for p in paths]
    )  # [sum T, H, W, 3]
    if len(frames) == 0:
        raise ValueError(f"the episodes in {data_dir} hold no frames")
    index = np.linspace(0, len(frames) - 1, count).round().astype(np.int64)
    source = f"{len(frames)} frames of {len(paths)} episode(s), {split} of {data_dir}"
    return np.ascontiguousarray(frames[index]), source


def make_inputs(
    reference: Runner,
    specs: dict[str, GraphSpec],
    codec: ActionCodec,
    frames: np.ndarray | None = None,
    source: str = "random frames",
    seed: int = 0,
) -> ParityInputs:
    """Real-looking inputs for every graph at the largest batch size: `frames` (else uniform noise) for the
    encoder, the reference encoder's posterior means as z, GRU-range states as h, plausible actions."""
    batch = max(BATCH_SIZES)
    rng = np.random.default_rng(seed)
    frame_shape = tuple(d for d in specs["encoder"].inputs[0].shape if isinstance(d, int))  # all but BATCH
    if frames is None:
        frames = rng.integers(0, 256, (batch, *frame_shape), dtype=np.uint8)
    z = reference("encoder", {"obs": frames})["z_mean"]
    deter = int(specs["prior_step"].inputs[0].shape[1])  # h [B, D]
    h = np.tanh(rng.standard_normal((batch, deter))).astype(np.float32)  # GRU states lie in (-1, 1)

    def actions(*leading: int) -> np.ndarray:
        if codec.mode == "discrete":
            return codec.encode_numpy(rng.integers(0, codec.dim, leading))
        raw = np.asarray(codec.mean) + np.asarray(codec.std) * rng.standard_normal((*leading, codec.dim))
        return codec.encode_numpy(raw)

    graphs = {"encoder": {"obs": frames}, "prior_step": {"h": h, "z": z, "action": actions(batch)}}
    if "decoder" in specs:
        graphs["decoder"] = {"z": z}
    if "policy" in specs:
        graphs["policy"] = {"h": h, "z": z}
    return ParityInputs(graphs, actions(ROLLOUT_STEPS, batch), source)


def _rollout(runner: Runner, inputs: ParityInputs) -> dict[str, np.ndarray]:
    """Open loop from h = 0 and the encoder's z, feeding the prior mean back -> z, h [T, B, ...]."""
    z = inputs.graphs["prior_step"]["z"]
    h = np.zeros_like(inputs.graphs["prior_step"]["h"])
    zs, hs = [], []
    for action in inputs.rollout_actions:
        out = runner("prior_step", {"h": h, "z": z, "action": action})
        h, z = out["h_next"], out["prior_mean"]
        zs.append(z)
        hs.append(h)
    return {"z": np.stack(zs), "h": np.stack(hs)}


def float32_drift(
    prior_step: nn.Module, inputs: ParityInputs, reference: dict[str, list[np.ndarray]]
) -> dict[str, float]:
    """ "rollout50.z" / "rollout50.h" -> largest absolute difference between the float32 reference rollout and
    the same rollout computed in float64: how much float32 rounding alone moves the trajectory."""
    exact = copy.deepcopy(prior_step).double()

    def run_float64(graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            h_next, mean = exact(*(torch.from_numpy(feed[k]).double() for k in ("h", "z", "action")))[:2]
        return {"h_next": h_next.numpy(), "prior_mean": mean.numpy()}

    rollout = _rollout(run_float64, inputs)
    return {
        f"{ROLLOUT_PREFIX}.{name}": float(np.abs(trajectory - reference[f"{ROLLOUT_PREFIX}.{name}"][0]).max())
        for name, trajectory in rollout.items()
    }


def collect_outputs(
    runner: Runner, specs: dict[str, GraphSpec], inputs: ParityInputs, backend: str = "torch", progress: bool = False
) -> dict[str, list[np.ndarray]]:
    """Run every case: "<graph>.<output>" -> one array per batch size; "rollout50.z" and "rollout50.h" ->
    [the rollout's trajectory [T, B, ...]]. Raises ParityError when an output's dtype or shape is not the
    contract's."""
    outputs: dict[str, list[np.ndarray]] = {}
    cases = [(graph, batch) for graph in specs for batch in BATCH_SIZES] + [(ROLLOUT_PREFIX, max(BATCH_SIZES))]
    for graph, batch in tqdm(cases, desc=f"parity {backend}", disable=not progress, leave=False):
        if graph == ROLLOUT_PREFIX:
            for name, trajectory in _rollout(runner, inputs).items():
                outputs[f"{ROLLOUT_PREFIX}.{name}"] = [trajectory]
            continue
        feed = {name: np.ascontiguousarray(x[:batch]) for name, x in inputs.graphs[graph].items()}
        result = runner(graph, feed)
        for tensor in specs[graph].outputs:
            value = result[tensor.name]
            shape = [batch if dim == BATCH else dim for dim in tensor.shape]
            if value.dtype != np.dtype(tensor.dtype) or list(value.shape) != shape:
                raise ParityError(
                    backend,
                    [
                        f"{graph}.{tensor.name}: got {value.dtype} {list(value.shape)}, "
                        f"the contract says {tensor.dtype} {shape}"
                    ],
                    {},
                )
            outputs.setdefault(f"{graph}.{tensor.name}", []).append(value)
    return outputs


def parity_report(
    candidate: dict[str, list[np.ndarray]],
    reference: dict[str, list[np.ndarray]],
    tolerances: Tolerances,
    backend: str,
    drift: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Largest absolute and scale-relative difference per output over all cases, with its tolerance
    (for the rollout, raised to DRIFT_FACTOR x `drift`, the float32 drift of `float32_drift`)."""
    drift = drift or {}
    report: dict[str, dict] = {}
    for key, expected in reference.items():
        actual = candidate[key]
        max_abs, scale = 0.0, 0.0
        for got, want in zip(actual, expected, strict=True):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ParityError(
                    backend,
                    [f"{key}: got {got.dtype} {list(got.shape)}, expected {want.dtype} {list(want.shape)}"],
                    report,
                )
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            # NaN must fail the gate: max() propagates it and `nan <= tolerance` is False.
            max_abs = max(max_abs, float(diff.max())) if not np.isnan(diff).any() else float("nan")
            scale = max(scale, float(np.abs(want).max()))
        graph, output = key.split(".")
        entry: dict[str, Any] = {
            "max_abs": max_abs,
            "max_rel": max_abs / scale if scale > 0 else max_abs,
            "tolerance": tolerances.of(output),
        }
        if graph == ROLLOUT_PREFIX:
            entry.update(steps=ROLLOUT_STEPS, batch=max(BATCH_SIZES))
            if key in drift:
                entry.update(float32_drift=drift[key], tolerance=max(entry["tolerance"], DRIFT_FACTOR * drift[key]))
        else:
            entry.update(batch_sizes=list(BATCH_SIZES))
        report[key] = entry
    return report


def check_report(backend: str, report: dict[str, dict]) -> None:
    """Raise ParityError naming every output whose largest absolute difference exceeds its tolerance."""
    failures = [
        f"{key} max abs error {entry['max_abs']:.3g} > tolerance {entry['tolerance']:.1e}"
        for key, entry in report.items()
        if not entry["max_abs"] <= entry["tolerance"]
    ]
    if failures:
        raise ParityError(backend, failures, report)


def run_parity_gate(
    backend: str,
    runner: Runner,
    specs: dict[str, GraphSpec],
    inputs: ParityInputs,
    reference: dict[str, list[np.ndarray]],
    tolerances: Tolerances,
    progress: bool = False,
    drift: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Run `runner` on every case, compare with the reference outputs -> report; raise ParityError when an
    output is over tolerance (the report rides on the error)."""
    candidate = collect_outputs(runner, specs, inputs, backend, progress)
    report = parity_report(candidate, reference, tolerances, backend, drift)
    check_report(backend, report)
    return report


def format_table(reports: dict[str, dict[str, dict]]) -> str:
    """A short text table: backend, output, max abs, max rel, tolerance, verdict."""
    lines = [f"{'backend':<12} {'output':<24} {'max abs':>9} {'max rel':>9} {'tolerance':>9}"]
    for backend, report in reports.items():
        for key, entry in report.items():
            verdict = "ok" if entry["max_abs"] <= entry["tolerance"] else "FAIL"
            lines.append(
                f"{backend:<12} {key:<24} {entry['max_abs']:>9.2e} {entry['max_rel']:>9.2e} "
                f"{entry['tolerance']:>9.1e}  {verdict}"
            )
    return "\n".join(lines)
