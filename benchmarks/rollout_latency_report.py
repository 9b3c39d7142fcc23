"""The rollout latency benchmark's report: its header (machine, load, what a timing includes, the FLOP count and
the matmul peak), its table, its results file and its plot, all from the report that
benchmarks/rollout_latency.py measures (the dict it writes with --json)."""

from __future__ import annotations

from pathlib import Path

from wm_deploy.loading import VARIANTS

from report import markdown_table, new_axes, save_figure, save_results

BACKENDS = tuple(VARIANTS)
LOAD_WARNING = 0.5
"""1-minute load average per CPU at start above which the report warns that other processes competed"""
COLUMNS = [
    {"name": "backend"},
    {"name": "call"},
    {"name": "B", "format": "d"},
    {"name": "H", "format": "d"},
    {"name": "p50", "format": "time"},
    {"name": "p90", "format": "time"},
    {"name": "p99", "format": "time"},
    {"name": "calls", "format": "d"},
    {"name": "latent steps/s", "format": ".3g"},
    {"name": "× torch eager", "format": ".2f"},
    {"name": "GFLOP/s", "format": ".3g"},
    {"name": "% matmul peak", "format": ".0f"},
]


def table_rows(report: dict) -> list[list]:
    """One row per backend and cell, imagine by horizon and batch first, then observe; times in seconds."""
    order = sorted(
        report["results"],
        key=lambda r: (r["call"] != "imagine", r["horizon"], r["batch"], BACKENDS.index(r["backend"])),
    )
    return [
        [
            r["backend"],
            r["call"],
            r["batch"],
            r["horizon"],
            r["p50_us"] * 1e-6,
            r["p90_us"] * 1e-6,
            r["p99_us"] * 1e-6,
            r["calls"],
            r["steps_per_s"],
            r["speedup"],
            r["gflops"],
            None if r["peak_fraction"] is None else 100 * r["peak_fraction"],
        ]
        for r in order
    ]


def header(report: dict) -> str:
    env, flops, peaks = report["environment"], report["flops"], report["matmul_peak"]
    load = report["load_average"]
    where = env.get("gpu", env["cpu"])
    versions = ", ".join(
        f"{key} {env[key]}" for key in ("torch", "onnxruntime", "tensorrt", "cuda", "numpy") if env.get(key)
    )
    threads = f"torch {env['torch_threads']} intra-op / {env['torch_interop_threads']} inter-op threads"
    for name, value in env.get("intra_op_threads", {}).items():
        threads += f"; {name} intra-op threads per graph {value}"
    if env["env_threads"]:
        threads += f"; {env['env_threads']}"
    copies = (
        "inputs and outputs are host numpy arrays (host<->device copies included)"
        if report["host_io"]
        else "inputs and outputs stay where the backend computes (no host<->device copy timed)"
    )
    lines = [
        f"Device: {env['device']} ({where}, {env['cpu_count']} CPUs). {versions}. {threads}.",
        f"Load average (1, 5, 15 min) at start {tuple(load['start'])}, at end {tuple(load['end'])}.",
        f"Timing: one Rollout call, device synchronised before each clock read; {copies}.",
    ]
    if flops is not None:
        lines.append(f"FLOPs per latent step: {flops['per_step'] / 1e6:.3f} M ({flops['counted']}).")
    for peak in peaks.values():
        lines.append(
            f"Matmul peak ({peak['size']}x{peak['size']} {peak['dtype']}, torch.matmul, best of "
            f"{peak['calls']} calls spread over the run): {peak['gflops']:.1f} GFLOP/s "
            f"(median {peak['median_gflops']:.1f})."
        )
    if load["start"][0] > LOAD_WARNING * env["cpu_count"]:  # at start only: the end includes this benchmark's own
        lines.append(
            f"WARNING: the load average at start exceeded {LOAD_WARNING:g} per CPU: other processes "
            "competed for the CPUs, which slows every number, and multi-threaded backends (torch) most."
        )
    lines.append(
        "× torch eager: torch eager's p50 / this p50 in this run. % matmul peak: achieved GFLOP/s / that peak."
    )
    return "\n".join(lines)


def report_text(report: dict) -> str:
    """The header, the markdown table and the skipped backends with their reasons."""
    skipped = [f"- skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    table = markdown_table(COLUMNS, table_rows(report))
    return "\n\n".join([header(report), table] + (["\n".join(skipped)] if skipped else []))


def where(report: dict) -> str:
    env = report["environment"]
    return f"{env.get('gpu', env['cpu'])} ({env['device']})"


def save(report: dict, path: Path, model: str) -> Path:
    """The table as a results file; the header's figures are kept beside it."""
    load = report["load_average"]["start"][0]
    return save_results(
        path,
        f"One Rollout call per backend (imagine of B x H steps; observe at B=1: one control tick), {model}",
        COLUMNS,
        table_rows(report),
        {**report["environment"], "cpu": f"{report['environment']['cpu']} (load average {load} at start)"},
        **{key: report[key] for key in ("flops", "matmul_peak", "load_average", "host_io", "skipped")},
    )


def plot(report: dict, path: Path) -> Path:
    """imagine's p50 latency against batch, log-log, a line per backend and horizon."""
    figure, ax = new_axes((7, 5))
    results = [r for r in report["results"] if r["call"] == "imagine"]
    horizons = sorted({r["horizon"] for r in results})
    styles = ["-", "--", ":", "-."]
    for i, backend in enumerate(b for b in BACKENDS if any(r["backend"] == b for r in results)):
        for j, horizon in enumerate(horizons):
            rows = sorted(
                (r for r in results if r["backend"] == backend and r["horizon"] == horizon), key=lambda r: r["batch"]
            )
            if rows:
                ax.plot(
                    [r["batch"] for r in rows],
                    [r["p50_us"] / 1e3 for r in rows],
                    marker="o",
                    color=f"C{i}",
                    linestyle=styles[j % len(styles)],
                    label=f"{backend}, H={horizon}",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("imagine p50 latency (ms)")
    ax.set_title(f"Rollout.imagine on {where(report)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(figure, path)
