"""Precomputed slider panels answer on the built pages with no kernel and no network.

For every panel of every chapter page, each control is moved to each of its values in headless
Chromium (outside requests aborted), and the picture must become that value's frame: the frame
the page stores for the controls' indices, whose PNG stamp names the values the controls show.
"""

import base64
import json
from pathlib import Path

import pytest

from diffusion_notes.viz import png_parameters

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHAPTERS_WITH_PANELS = ["01_ddpm", "02_samplers", "03_guidance", "13_text_to_image"]
MAX_PAGE_BYTES = 3_200_000  # "about 3 MB" per chapter page


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _state(page, index: int) -> dict:
    """What panel `index` shows: each control's position and label, the picture's key and src."""
    return page.evaluate("""(i) => {
        const root = document.querySelectorAll("div.dn-panel")[i];
        const fields = Array.from(root.querySelectorAll("[data-control]"));
        const img = root.querySelector("img.dn-frame");
        return {positions: fields.map(f => f.tagName === "SELECT" ? f.selectedIndex : Number(f.value)),
                key: img.getAttribute("data-key"), src: img.src,
                outputs: fields.map(f => { const o = f.parentNode.querySelector("output");
                                           return o ? o.textContent : null; }),
                spoken: fields.map(f => f.type === "range" ? f.getAttribute("aria-valuetext") : null)};
    }""", index)


def _move(page, index: int, control: int, position: int) -> None:
    """Move a control the way a reader does: a real select or a range input, with its input event."""
    field = page.locator("div.dn-panel").nth(index).locator(f'[data-control="{control}"]')
    if field.evaluate("f => f.tagName") == "SELECT":
        field.select_option(index=position)
    else:
        field.evaluate("(f, v) => { f.value = String(v); f.dispatchEvent(new Event('input', {bubbles: true})); }",
                       position)


def _check_frame(state: dict, data: dict, names: list) -> None:
    key = "-".join(map(str, state["positions"]))
    assert state["key"] == key, f"the picture is frame {state['key']}, the controls are at {key}"
    assert state["src"] == data["frames"][key], f"the picture is not the stored frame {key}"
    stamp = png_parameters(base64.b64decode(state["src"].split(",", 1)[1]))
    shown = {name: data["labels"][i][p] for i, (name, p) in enumerate(zip(names, state["positions"]))}
    assert {name: _label(stamp[name]) for name in names} == shown, "the frame was drawn for other values"
    for output, name in zip(state["outputs"], names):
        assert output is None or output == shown[name]
    for spoken, output, name in zip(state["spoken"], state["outputs"], names):  # a screen reader says the value
        assert spoken is None or spoken == output == shown[name], f"{name} is announced as {spoken!r}"


@pytest.mark.parametrize("edition", ["", "zh/"], ids=["en", "zh"])
@pytest.mark.parametrize("chapter", CHAPTERS_WITH_PANELS)
def test_every_control_shows_its_values_frame(chapter, edition, offline_page):
    """In both editions: the Chinese pages carry the same stored panels."""
    page_file = HTML / edition / "book" / f"{chapter}.html"
    if not page_file.exists():
        pytest.fail(f"{page_file} is missing: build the book first with `make book`", pytrace=False)
    page = offline_page
    page.goto(page_file.as_uri())
    n_panels = page.locator("div.dn-panel").count()
    assert n_panels >= 1, f"{chapter} has no precomputed panel"
    for index in range(n_panels):
        data = json.loads(page.locator("div.dn-panel").nth(index).locator("script.dn-frames").text_content())
        names = [page.locator("div.dn-panel").nth(index).locator(f'[data-control="{i}"]')
                 .evaluate("f => f.closest('label').querySelector('span').textContent")
                 for i in range(len(data["labels"]))]
        start = _state(page, index)
        _check_frame(start, data, names)
        for control, labels in enumerate(data["labels"]):
            for position in [*range(len(labels)), start["positions"][control]]:
                _move(page, index, control, position)
                state = _state(page, index)
                assert state["positions"][control] == position
                _check_frame(state, data, names)
        last = [len(labels) - 1 for labels in data["labels"]]  # every control moved at once
        for control, position in enumerate(last):
            _move(page, index, control, position)
        _check_frame(_state(page, index), data, names)
        assert _state(page, index)["positions"] == last


@pytest.mark.parametrize("chapter", sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")))
def test_chapter_pages_stay_under_about_3_mb(chapter):
    page_file = HTML / "book" / f"{chapter}.html"
    if not page_file.exists():
        pytest.fail(f"{page_file} is missing: build the book first with `make book`", pytrace=False)
    size = page_file.stat().st_size
    assert size < MAX_PAGE_BYTES, f"{chapter}.html is {size / 1e6:.2f} MB"
