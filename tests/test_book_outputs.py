"""The chapters' stored outputs say only what survives another CPU (see diffusion_book/report.py and the README).

A cell whose output is not compared (tagged `nbval-ignore-output`) must still be checked: either the
next code cell asserts the claims the prose reads off it (`check(...)`), or all it prints is timings.
"""

import json
import re
from pathlib import Path

import pytest

from test_report import sanitize

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def stored_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif "data" in out:
            for mime in ("text/plain", "text/html"):
                if mime in out["data"] and "image/png" not in out["data"]:
                    parts.append("".join(out["data"][mime]))
    return "".join(parts)


def unchecked_ignored_cells(cells) -> list[int]:
    """Indices of code cells whose output is ignored and that nothing else checks."""
    bad = []
    for k, cell in enumerate(cells):
        if "nbval-ignore-output" not in cell.get("metadata", {}).get("tags", []):
            continue
        following = "".join(cells[k + 1]["source"]) if k + 1 < len(cells) else ""
        if "check(" in following:
            continue
        lines = [line for line in sanitize(stored_text(cell)).splitlines() if line.strip() and not line.startswith("<")]
        if lines and all("TIME" in line for line in lines):
            continue  # a timing cell: wall-clock figures are never compared
        bad.append(k)
    return bad


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_ignored_output_is_checked_some_other_way(path):
    assert unchecked_ignored_cells(code_cells(path)) == []


def test_the_rule_flags_an_ignored_table_with_nothing_after_it():
    table = {"cell_type": "code", "metadata": {"tags": ["nbval-ignore-output"]}, "source": ["print(table)"],
             "outputs": [{"output_type": "stream", "name": "stdout", "text": ["DDIM 43.4 6.0\n"]}]}
    timing = {"cell_type": "code", "metadata": {"tags": ["nbval-ignore-output"]}, "source": ["..."],
              "outputs": [{"output_type": "stream", "name": "stdout", "text": ["one step: 0.82 s\n"]}]}
    claims = {"cell_type": "code", "metadata": {}, "source": ["check({'DDIM wins': True})"], "outputs": []}
    assert unchecked_ignored_cells([table]) == [0]
    assert unchecked_ignored_cells([table, claims]) == []
    assert unchecked_ignored_cells([timing]) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_stored_difference_prints_its_last_digits(path):
    """'max |difference| = 4.2e-07' holds on one CPU only; a check prints its bound ('< 1e-05')."""
    for cell in code_cells(path):
        text = stored_text(cell)
        found = re.findall(r"(?:difference|changes by|within)[^\n<]*?\s[0-9.]+e-0?[5-9]", text)
        assert not found, f"{path.name}: {found}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_stored_output_loads_anything_from_outside(path):
    """The pages work with no network: no stored output links a stylesheet, script or font by URL."""
    outside = re.compile(r'<(?:link|script|img)[^>]+(?:href|src)="(?:https?:)?//')
    found = [k for k, cell in enumerate(code_cells(path)) for out in cell.get("outputs", [])
             if outside.search("".join(out.get("data", {}).get("text/html", "")))]
    assert found == [], f"code cells {found} load something by URL"
