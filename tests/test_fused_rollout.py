"""The fused Triton rollout (wm_deploy/backends/fused_rollout.py) without a GPU: parity with the torch loop through
Triton's interpreter, a build for sm_90 through triton.compile and ptxas, and which models and devices it takes;
and on a GPU (`make gpu-check`), the torch backend fused against unfused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_deploy import LatentState, Rollout
from wm_deploy.backends.torch_backend import TorchBackend

triton = pytest.importorskip("triton", reason='needs Triton (pip install ".[kernels]")')

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
"""the export gate's float32 tolerance"""
MAX_SPILL = 64
"""bytes a thread may spill in the sm_90 build"""

# Run in a subprocess: TRITON_INTERPRET is read when @triton.jit is applied, at the kernel module's import. Each
# case compares every workspace output of the fused launch with imagine_loop over TorchBackend.step_into (RSSM.step,
# Heads.predict, Critic.predict) from the same inputs; then Rollout.imagine on a CPU torch backend given the kernel
# (as TorchBackend gives it on CUDA) against one without; the last line printed is the JSON of the largest
# differences.
INTERPRETER_PARITY = """
import json, numpy as np, torch
from wm_core.actions import ActionCodec
from wm_core.config import ModelConfig
from wm_core.model import WorldModel
from wm_deploy import LatentState, Rollout
from wm_deploy.backends.fused_rollout import FusedRollout
from wm_deploy.backends.torch_backend import TorchBackend
from wm_deploy.rollout import imagine_loop

torch.set_num_threads(1)
OUTPUTS = ("h", "z", "prior_mean", "prior_std", "reward", "cont", "value")
CPU = torch.device("cpu")

def largest(a, b):
    return {name: float(np.abs(np.asarray(getattr(a, name)) - np.asarray(getattr(b, name))).max()) for name in OUTPUTS}

def workspace_differences(model, fused, batch, horizon, sample):
    backend = TorchBackend(model, CPU, 64)
    generator = torch.Generator().manual_seed(batch * 10 + horizon)
    S, D, A = model.cfg.latent_dim, model.cfg.deter_dim, model.cfg.action_dim
    inputs = dict(h=torch.randn(batch, D, generator=generator), z=torch.randn(batch, S, generator=generator),
                  action=torch.randn(horizon, batch, A, generator=generator),
                  noise=torch.randn(horizon, batch, S, generator=generator))
    reference, kernel = (backend.workspace(batch, horizon, frames=False) for _ in range(2))
    for ws in (reference, kernel):
        ws.h[0].copy_(inputs["h"]); ws.z[0].copy_(inputs["z"])
        ws.action.copy_(inputs["action"]); ws.noise.copy_(inputs["noise"])
    with torch.no_grad():
        imagine_loop(backend.step_into, backend.ops, reference, sample)
    fused.loop(kernel, sample)()
    return largest(reference, kernel)

def model_of(deter, latent, hidden, heads, critic):
    torch.manual_seed(0)
    return WorldModel(ModelConfig(size="tiny", deter_dim=deter, latent_dim=latent, hidden_dim=hidden, heads=heads,
                                  actor_critic=critic))

results = []
# (deter, latent, hidden, heads, critic): powers of two; padded (48 -> 64, 24 -> 32) without heads
for sizes, cases in [((32, 16, 32, True, True), [(1, 3, False), (5, 4, True), (17, 3, False)]),
                     ((48, 24, 48, False, False), [(5, 3, True)])]:
    model = model_of(*sizes)
    fused = FusedRollout(model, CPU)
    for batch, horizon, sample in cases:
        diff = workspace_differences(model, fused, batch, horizon, sample)
        results.append(dict(sizes=sizes, batch=batch, horizon=horizon, sample=sample, diff=diff))

model = model_of(32, 16, 32, True, True)
codec = ActionCodec("continuous", 3, (0.1, 0.2, 0.3), (1.0, 2.0, 0.5))
plain, given = (TorchBackend(model, CPU, 64) for _ in range(2))
given.fused = FusedRollout(model, CPU)
rollouts = [Rollout(backend, codec) for backend in (plain, given)]
rng = np.random.default_rng(0)
state = LatentState(*(rng.standard_normal((5, n)).astype(np.float32) for n in (32, 16)))
actions = rng.standard_normal((5, 4, 3)).astype(np.float32)
noise = rng.standard_normal((5, 4, 16)).astype(np.float32)
for kwargs in ({}, {"sample": True, "noise": noise}):
    diff = largest(*(rollout.imagine(state, actions, **kwargs) for rollout in rollouts))
    results.append(dict(sizes="Rollout.imagine", batch=5, horizon=4, sample=bool(kwargs), diff=diff))
# the control: the kernel without the prior head's output bias must fail the comparison
given.fused.weights["prior2_b"].zero_()
control = largest(*(rollout.imagine(state, actions) for rollout in rollouts))
print(json.dumps(dict(results=results, control=control)))
"""


def test_the_kernel_matches_the_torch_loop_in_tritons_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", INTERPRETER_PARITY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    for case in report["results"]:
        worst = max(case["diff"].values())
        assert worst <= TOLERANCE, f"{case}: largest difference {worst:.3g} > {TOLERANCE:.0e}"
    assert report["control"]["z"] > TOLERANCE, f"a missing bias went unnoticed: {report['control']}"
    print("largest differences:", max(max(case["diff"].values()) for case in report["results"]))


def ptxas_report(ptx: str, arch: str) -> dict[str, int]:
    """Registers a thread and bytes spilled, from the bundled ptxas's -v on `ptx`."""
    ptxas = triton.knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        command = [ptxas, "-v", f"--gpu-name={arch}", str(source), "-o", str(source.with_suffix(".cubin"))]
        log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert registers and spills, log
    return {"registers": int(registers[1]), "spill_stores": int(spills[1]), "spill_loads": int(spills[2])}


@pytest.mark.parametrize(
    "heads, batch, sample", [(True, 4096, True), (False, 1, False)], ids=["heads-value-sampled", "plain-mean"]
)
def test_the_kernel_builds_for_sm_90_with_its_tiles_in_registers(untrained_model, heads, batch, sample):
    from triton.backends.compiler import GPUTarget

    from wm_deploy.backends.fused_rollout import FusedRollout

    model, _, _ = untrained_model("default", heads=heads, actor_critic=heads)  # the default preset's real sizes
    compiled = FusedRollout(model, torch.device("cpu")).build(GPUTarget("cuda", 90, 32), batch, sample)
    ptx = compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    arch = re.search(r"^\.target (sm_90a?)", ptx, re.M)
    assert arch, "PTX for sm_90"
    report = ptxas_report(ptx, arch[1])
    print(f"sm_90 build B={batch} sample={sample}: {report}, {compiled.metadata.shared} bytes of shared memory")
    # ptxas may keep a few loop-carried scalars on the stack (tens of bytes); register-held tiles spilling, what
    # too large a tile does, would be hundreds
    assert report["spill_stores"] <= MAX_SPILL and report["spill_loads"] <= MAX_SPILL, report


def test_the_fused_rollout_says_which_models_and_devices_it_takes(untrained_model):
    from wm_deploy.backends.fused_rollout import FusedRollout, fused_support

    default, _, _ = untrained_model("default", heads=True, actor_critic=True)
    tiny, _, _ = untrained_model("tiny")
    cuda = torch.device("cuda")  # a device object only: nothing runs
    assert fused_support(default, cuda) is None
    assert "latent_dim = 8" in (fused_support(tiny, cuda) or "")
    assert "needs CUDA" in (fused_support(default, torch.device("cpu")) or "")
    with pytest.raises(ValueError, match="latent_dim = 8"):
        FusedRollout(tiny, torch.device("cpu"))
    backend = TorchBackend(default, torch.device("cpu"), 8, fused=True)
    assert backend.fused is None and backend.fused_loop(backend.workspace(1, 2, False), sample=False) is None
    assert backend.detail.endswith("torch loop (fused rollout: needs CUDA, not cpu)")
    assert TorchBackend(default, torch.device("cpu"), 8).detail.endswith("torch loop (fused rollout: turned off)")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cudagraphs"])
def test_the_fused_rollout_on_cuda_matches_the_torch_loop(untrained_model, cuda_device_or_skip, cuda_graphs):
    device = torch.device(cuda_device_or_skip())
    model, _, codec = untrained_model("default", heads=True, actor_critic=True)
    rollouts = {}
    for fused in (True, False):
        backend = TorchBackend(model, device, 256, cuda_graphs=cuda_graphs, fused=fused)
        rollouts[fused] = Rollout(backend, codec)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the torch loop is a failure here
        for batch in (1, 33, 256):
            state = LatentState(
                np.tanh(rng.standard_normal((batch, 256))).astype(np.float32),
                rng.standard_normal((batch, 32)).astype(np.float32),
            )
            actions = rng.uniform(-1, 1, (batch, 15, 3)).astype(np.float32)
            noise = rng.standard_normal((batch, 15, 32)).astype(np.float32)
            for kwargs in ({}, {"sample": True, "noise": noise}):
                got, want = (rollouts[fused].imagine(state, actions, **kwargs) for fused in (True, False))
                for name in ("z", "h", "prior_mean", "prior_std", "reward", "cont", "value"):
                    error = float(np.abs(getattr(got, name) - getattr(want, name)).max())
                    assert error <= TOLERANCE, f"B={batch} {'sampled' if kwargs else 'mean'} {name}: {error:.3g}"
    assert rollouts[True].backend_detail.endswith("fused Triton rollout"), rollouts[True].backend_detail
    assert "torch loop (fused rollout: turned off)" in rollouts[False].backend_detail
