"""Memory of a long-running process: resident memory (RSS) over many `Rollout.imagine` calls.

    python benchmarks/soak.py                       # onnxruntime on CPU, 20,000 calls of each loop
    python benchmarks/soak.py --backend torch --calls 5000 --plot soak.png

Two loops in one process each (a fresh process per loop, so the second does not inherit the first's peak):
- `fixed`: every call at one shape (B=8, H=15), the working set of a control loop;
- `mixed`: random batch 1-63 and horizon 1-19 per call, as a server answering many clients.

Printed: RSS every `--every` calls, the peak of each loop, their ratio (the target is <= 1.5), and the
fixed-shape latency (p50 of the last calls) of both, to see that bounding memory did not slow the steady
state. The model is a random default-size one, exported on the fly (what memory the runtime keeps does not
depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXED = (8, 15)
MAX_BATCH, MAX_HORIZON = 63, 19


def proc_status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_loop(args) -> dict:
    """One loop in this process -> its RSS curve, peak and fixed-shape latency."""
    from wm_deploy import LatentState, Rollout
    from wm_export import export_artifacts

    from timing import random_checkpoint

    with tempfile.TemporaryDirectory(prefix="wm-soak-") as scratch:
        checkpoint = random_checkpoint(Path(scratch))
        folder = export_artifacts(checkpoint, Path(scratch) / "artifacts", decoder=False)
        rollout = Rollout.load(folder, backend=args.backend, device="cpu")
        rng = np.random.default_rng(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak: the export's own memory is not the loop's
        curve, latency = [], []
        start = time.perf_counter()
        for call in range(args.calls):
            batch, horizon = FIXED if args.loop == "fixed" else (rng.integers(1, MAX_BATCH + 1), rng.integers(1, 20))
            state = LatentState(np.zeros((batch, 256), np.float32), np.zeros((batch, 32), np.float32))
            actions = rng.uniform(-1, 1, (batch, horizon, 3)).astype(np.float32)
            t0 = time.perf_counter()
            rollout.imagine(state, actions)
            if (batch, horizon) == FIXED:
                latency.append(time.perf_counter() - t0)
            if call % args.every == 0 or call == args.calls - 1:
                curve.append((call, round(proc_status_mib("VmRSS"), 1)))
        peak = proc_status_mib("VmHWM")
    fixed_p50 = float(np.median(latency[-1000:])) * 1e6 if latency else None
    return {"loop": args.loop, "backend": args.backend, "calls": args.calls, "seconds": time.perf_counter() - start,
            "rss_mib": curve, "peak_rss_mib": round(peak, 1), "fixed_p50_us": fixed_p50}  # fmt: skip


def format_p50(us: float | None) -> str:
    return "no call at that shape" if us is None else f"{us:.0f} us"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--calls", type=int, default=20000, help="imagine calls per loop")
    parser.add_argument("--every", type=int, default=2000, help="print RSS every this many calls")
    parser.add_argument("--loop", choices=("fixed", "mixed"), help=argparse.SUPPRESS)  # one loop, in a child
    parser.add_argument("--json", type=Path, help="write both loops' figures here")
    parser.add_argument("--plot", type=Path, help="plot RSS over calls here")
    args = parser.parse_args(argv)
    if args.loop:
        print(json.dumps(run_loop(args)))
        return

    loops = {}
    for loop in ("fixed", "mixed"):
        command = [sys.executable, __file__, "--loop", loop, "--backend", args.backend, "--calls", str(args.calls),
                   "--every", str(args.every)]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.exit(f"soak: the {loop} loop failed:\n{completed.stderr[-3000:]}")
        loops[loop] = json.loads(completed.stdout.strip().splitlines()[-1])
        figures = loops[loop]
        print(f"{loop}: {figures['calls']} calls in {figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mib']} MiB")
        print("  RSS MiB by call: " + ", ".join(f"{call}: {mib:.0f}" for call, mib in figures["rss_mib"]))
    ratio = loops["mixed"]["peak_rss_mib"] / loops["fixed"]["peak_rss_mib"]
    print(f"peak RSS mixed / fixed: {ratio:.2f} (target <= 1.5)")
    p50 = {name: figures["fixed_p50_us"] for name, figures in loops.items()}
    print("fixed-shape (B=8, H=15) p50: " + ", ".join(f"{k} loop {format_p50(v)}" for k, v in p50.items()))
    if args.json:
        args.json.write_text(json.dumps({"loops": loops, "peak_ratio": ratio}, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, figures in loops.items():
            calls, mib = zip(*figures["rss_mib"])
            ax.plot(calls, mib, marker="o", label=f"{name} shapes")
        ax.set_xlabel("imagine calls")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"Resident memory over calls, {args.backend} on CPU")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
