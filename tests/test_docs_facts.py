"""The format versions the docs state against the constants in the code: a format bumped in the code and not in
the docs (or a page left behind) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import wm_core.checkpoint
import wm_core.dataset_meta
import wm_core.manifest
import wm_train.store

ROOT = Path(__file__).resolve().parents[1]
FORMAT_MODULES = (wm_core.checkpoint, wm_core.manifest, wm_core.dataset_meta, wm_train.store)
PAGES = ("docs/architecture.md", "docs/artifacts.md", "docs/data.md", "CHANGELOG.md")


def current_versions() -> dict[str, int]:
    """format name -> format_version, as the code writes it"""
    return {module.FORMAT: module.FORMAT_VERSION for module in FORMAT_MODULES}


def stated_versions(text: str, name: str) -> list[tuple[int, str]]:
    """Every version a page states for format `name`, with the text that states it: the name followed on the
    same line by `format_version N` / `format version N` (prose, JSON, the architecture diagram), or by a table
    cell holding the number (CHANGELOG's table)."""
    quoted = re.escape(name)
    patterns = (
        rf"{quoted}[`\"]?[^\n]{{0,40}}?format[_ ]version[`\"]?\s*:?\s*(\d+)",
        rf"`{quoted}`\s*\|\s*(\d+)\s*\|",
    )
    found = []
    for pattern in patterns:
        for match in re.finditer(pattern, text, flags=re.IGNORECASE):
            found.append((int(match[1]), match[0]))
    return found


def test_the_code_defines_the_four_formats():
    assert set(current_versions()) == {"wm-checkpoint", "wm-artifacts", "wm-episodes", "wm-episode-store"}


@pytest.mark.parametrize("page", PAGES)
def test_page_states_the_format_versions_of_the_code(page):
    text = (ROOT / page).read_text()
    wrong = [
        f"{name}: {statement!r} says {stated}, the code writes {version}"
        for name, version in current_versions().items()
        for stated, statement in stated_versions(text, name)
        if stated != version
    ]
    assert wrong == [], f"{page} states stale format versions"


def test_changelog_table_lists_every_format():
    text = (ROOT / "CHANGELOG.md").read_text()
    for name, version in current_versions().items():
        row = rf"`{re.escape(name)}`\s*\|\s*{version}\s*\|"
        assert re.search(row, text), f"CHANGELOG's table lacks {name} {version}"


def test_every_format_is_stated_somewhere_in_the_docs():
    text = "\n".join((ROOT / page).read_text() for page in PAGES)
    assert all(stated_versions(text, name) for name in current_versions())


@pytest.mark.parametrize(
    "text",
    [
        "checkpoint (last.pt)        format: wm-checkpoint, format_version 1",
        '{"format": "wm-artifacts", "format_version": 1}',
        "an index `store.json` (`format: wm-episode-store`, `format_version` 7)",
        "| checkpoint | `wm-checkpoint` | 1 | `wm_core/checkpoint.py` |",
    ],
)
def test_a_stale_statement_is_found(text):
    versions = current_versions()
    stale = [(n, s) for n in versions for s, _ in stated_versions(text, n) if s != versions[n]]
    assert len(stale) == 1


def test_cli_page_lists_every_exit_code_as_the_code_states_it():
    from wm_core.errors import EXIT_CODES

    text = (ROOT / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", text, re.MULTILINE))
    assert {int(code): meaning for code, meaning in rows.items()} == EXIT_CODES


def test_control_page_states_the_value_and_actor_defaults_of_the_code():
    from wm_core.config import TrainConfig

    text = (ROOT / "docs" / "control.md").read_text()
    table = text[text.index("| train key | default | what |") :].split("\n\n")[0]
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \|", table, re.MULTILINE)
    assert len(rows) >= 7
    for keys, default in rows:
        for key in re.findall(r"`(\w+)`", keys):
            assert getattr(TrainConfig, key) == float(default), f"docs/control.md: train.{key} default {default}"
