"""Measured tables as data: the results files under `docs/results/` and the markdown tables rendered from them.

A results file is JSON: what was measured (`title`), how (`command`), where (`machine`), when (`date`), an
optional `source` for tables transcribed from an earlier record, the table's `columns` and its `rows`:

    {"title": "...", "command": "python benchmarks/planner_speed.py", "machine": "2-core CPU VM",
     "date": "2026-12-03", "columns": [{"name": "backend"}, {"name": "p50", "format": "time"}],
     "rows": [["onnxruntime", 0.0594]]}

A cell is a string (shown as it is), a number (shown with its column's `format`), a pair `[mean, std]`
(shown as `mean ± std`), null (shown as an em dash) or `{"value": cell, "format": spec}` for a cell whose unit
differs from its column's (a targets table's "measured"). A column's `format` is a Python format spec such as
".1f" or ".3g", or `time` (seconds, shown in s / ms / µs with 3 significant digits).

In a markdown page a table is a block between two comments naming its file (relative to `docs/results/`):

    <!-- results: planner_speed_cpu.json -->
    ...rendered, never edited by hand...
    <!-- /results -->

A block may show part of its file: `<!-- results: NAME.json; columns: a, b; B: 1, 256 -->` keeps the columns
named and the rows whose column `B` holds one of the values listed (each clause `; KEY: v1, v2`).

`python benchmarks/results.py` re-renders every block of README.md and docs/; `--check` only reports the
blocks that differ from their data and exits 1 (the test suite and `make docs` run it). Benchmarks write their
files with `write_results`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
PAGES = ("README.md", "docs")
"""where blocks are looked for: README.md and every markdown page under docs/"""

BLOCK = re.compile(
    r"(<!-- results: (?P<name>[\w.\-]+)(?P<select>(?:; [^;>]+)*) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL
)
REQUIRED = ("title", "command", "machine", "date", "columns", "rows")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The processor and core count, for a results file's `machine`: timings mean little without them."""
    import os

    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}"


def write_results(
    name: str,
    title: str,
    columns: Sequence[dict[str, str]],
    rows: Sequence[Sequence[Any]],
    command: str | None = None,
    machine: str | None = None,
    out_dir: Path = RESULTS_DIR,
    **extra: Any,
) -> Path:
    """Write one results file (`out_dir/name`), stamped with today's date, the machine and the command line
    that ran (by default this process's own). Extra keys (notes, raw samples) are kept beside the table."""
    from wm_core.publish import atomic_write_bytes

    data = {
        "title": title,
        "command": command or " ".join(["python", *sys.argv]),
        "machine": machine or machine_description(),
        "date": datetime.date.today().isoformat(),
        "columns": [dict(c) for c in columns],
        "rows": [list(r) for r in rows],
        **extra,
    }
    _validate(data, name)
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def load_results(name: str, results_dir: Path = RESULTS_DIR) -> dict:
    path = Path(results_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    data = json.loads(path.read_text())
    _validate(data, str(path))
    return data


def _validate(data: dict, where: str) -> None:
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: results file lacks {', '.join(missing)}")
    width = len(data["columns"])
    for i, row in enumerate(data["rows"]):
        if len(row) != width:
            raise ValueError(f"{where}: row {i} has {len(row)} cells, the table has {width} columns")


def format_time(seconds: float) -> str:
    """Seconds in the unit that keeps 3 significant digits readable: 644 µs, 9.6 ms, 1.2 s."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale or unit == "µs":
            return f"{seconds / scale:.3g} {unit}"
    raise AssertionError("unreachable")


def format_cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return format_cell(value["value"], value.get("format"))
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        mean, std = value
        return f"{format_cell(mean, fmt)} ± {format_cell(std, fmt)}"
    if fmt == "time":
        return format_time(value)
    if fmt:
        return format(value, fmt)
    return str(value)


def markdown_table(columns: Sequence[dict[str, str]], rows: Sequence[Sequence[Any]]) -> str:
    """The rows as a markdown table, each cell formatted by its column (see the module docstring)."""
    lines = [
        "| " + " | ".join(c["name"] for c in columns) + " |",
        "|" + "|".join("--:" if c.get("align", _default_align(c)) == "right" else "---" for c in columns) + "|",
    ]
    for row in rows:
        cells = (format_cell(v, c.get("format")).replace("|", "\\|") for v, c in zip(row, columns))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def select(data: dict, clauses: str) -> dict:
    """`data` reduced to the columns and rows a block's clauses name (see the module docstring)."""
    names = [c["name"] for c in data["columns"]]
    keep_columns, keep_rows = list(range(len(names))), []
    for clause in filter(None, (c.strip() for c in clauses.split(";"))):
        key, _, values = clause.partition(":")
        wanted = [v.strip() for v in values.split(",")]
        unknown = [n for n in ([*wanted] if key.strip() == "columns" else [key.strip()]) if n not in names]
        if unknown:
            raise ValueError(f"results block names unknown column(s) {unknown}; the file has {names}")
        if key.strip() == "columns":
            keep_columns = [names.index(n) for n in wanted]
        else:
            keep_rows.append((names.index(key.strip()), set(wanted)))
    rows = [r for r in data["rows"] if all(str(r[i]) in allowed for i, allowed in keep_rows)]
    return {
        **data,
        "columns": [data["columns"][i] for i in keep_columns],
        "rows": [[r[i] for i in keep_columns] for r in rows],
    }


def render_table(data: dict) -> str:
    """The markdown table of one results file and the line saying how, where and when it was measured."""
    caption = f"*{data['title']}. Measured with `{data['command']}` on {data['machine']}, {data['date']}."
    if data.get("source"):
        caption += f" Source: {data['source']}."
    return markdown_table(data["columns"], data["rows"]) + "\n\n" + caption + "*\n"


def _default_align(column: dict) -> str:
    return "right" if column.get("format") else "left"


def render_page(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """`text` with every results block re-rendered from its file."""

    def block(match: re.Match) -> str:
        table = render_table(select(load_results(match["name"], results_dir), match["select"]))
        return f"{match.group(1)}{table}{match.group(5)}"

    return BLOCK.sub(block, text)


def pages(root: Path = ROOT) -> list[Path]:
    found: list[Path] = []
    for entry in PAGES:
        path = root / entry
        found.extend(sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.is_file() else [])
    return found


def stale_blocks(root: Path = ROOT) -> list[str]:
    """Every block whose text differs from what its results file renders, as `page: name`."""
    stale = []
    for page in pages(root):
        text = page.read_text()
        for match in BLOCK.finditer(text):
            expected = render_table(select(load_results(match["name"], root / "docs" / "results"), match["select"]))
            if match["body"] != expected:
                stale.append(f"{page.relative_to(root)}: {match['name']}")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from their data")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_blocks()
        for entry in stale:
            print(f"stale results table (edited by hand, or its data changed): {entry}", file=sys.stderr)
        if stale:
            print("run `python benchmarks/results.py` to re-render them from docs/results/", file=sys.stderr)
        return 1 if stale else 0
    for page in pages():
        text = page.read_text()
        rendered = render_page(text)
        if rendered != text:
            page.write_text(rendered)
            print(f"rendered {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
