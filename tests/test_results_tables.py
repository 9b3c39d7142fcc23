"""The docs' measured tables against their results files (benchmarks/results.py): a table edited by hand, or
data changed without re-rendering, fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "results.py"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def docs_copy(tmp_path):
    """README.md and docs/ copied, so a test can edit them."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_committed_tables_match_their_results_files():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_a_table_cell_edited_by_hand_is_reported(results, docs_copy):
    page = docs_copy / "docs" / "benchmarks.md"
    text = page.read_text()
    assert "| 59.4 |" in text
    page.write_text(text.replace("| 59.4 |", "| 49.4 |", 1))
    assert results.stale_blocks(docs_copy) == ["docs/benchmarks.md: planner_speed_cpu.json"]


def test_changed_data_is_reported_until_rendered(results, docs_copy):
    path = docs_copy / "docs" / "results" / "planner_speed_cpu.json"
    data = json.loads(path.read_text())
    data["rows"][0][4] = 12.5
    path.write_text(json.dumps(data))
    assert results.stale_blocks(docs_copy) == ["docs/benchmarks.md: planner_speed_cpu.json"]
    page = docs_copy / "docs" / "benchmarks.md"
    page.write_text(results.render_page(page.read_text(), docs_copy / "docs" / "results"))
    assert results.stale_blocks(docs_copy) == []
    assert "| 256 | 12 | 3 (default) | onnxruntime | 12.5 |" in page.read_text()


def test_every_results_file_is_shown_on_a_page(results):
    shown = {m["name"] for page in results.pages() for m in results.BLOCK.finditer(page.read_text())}
    files = {p.name for p in results.RESULTS_DIR.glob("*.json")}
    assert files - shown == set(), "results files that no page shows"
    assert shown - files == set(), "pages that name a missing results file"


def test_cells_render_by_column_format(results):
    data = {
        "title": "t",
        "command": "c",
        "machine": "m",
        "date": "d",
        "columns": [{"name": "a", "format": "time"}, {"name": "b", "format": ".1f"}, {"name": "c"}],
        "rows": [[6.44e-4, [488.04, 244.0], None], [0.0096, 1.25, "x|y"]],
    }
    lines = results.render_table(data).splitlines()
    assert lines[1] == "|--:|--:|---|"
    assert lines[2] == "| 644 µs | 488.0 ± 244.0 | — |"
    assert lines[3] == "| 9.6 ms | 1.2 | x\\|y |"


def test_a_row_of_the_wrong_width_is_refused(results, tmp_path):
    with pytest.raises(ValueError, match="row 0 has 1 cells, the table has 2 columns"):
        results.write_results("x.json", "t", [{"name": "a"}, {"name": "b"}], [[1]], out_dir=tmp_path)
