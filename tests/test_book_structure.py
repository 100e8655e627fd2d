"""Every numbered chapter has the book's frame: objectives, a summary, exercises with hints and solutions.

The chapters are the numbered entries of `_toc.yml` (``book/NN_name``). The intro, the Shapes
reference page and the glossary are reference pages, not chapters, and are not held to this.

A chapter passes when
- its first cell has the "**After this chapter you will be able to**" line followed by a list;
- it has a ``## Summary`` heading;
- it has a ``## Exercises`` heading followed by a numbered list of at least four exercises;
- every exercise has a collapsed block titled "Hint";
- at least two collapsed blocks titled "Solution" follow the exercises heading.

A collapsed block is MyST, in either fence (three or more backticks, or colons):
sphinx-design's ``{dropdown} Title`` (collapsed unless it has ``:open:``), or an admonition
(``{admonition} Title``, or ``{hint}``, ``{tip}``, ``{note}`` ...) with ``:class: dropdown``, which
sphinx-togglebutton collapses. An exercise is a line that starts a numbered item at the left margin
(``3. ...``); its text runs to the next such line, so a hint block may be indented inside the item
or placed at the margin after it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = "After this chapter you will be able to"
MIN_EXERCISES, MIN_SOLUTIONS = 4, 2
# Chapters whose frame is finished under other work; they are reported, not failed, until then.
PENDING: dict[str, str] = {}

FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<title>.*?)[ \t]*$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
ITEM = re.compile(r"^\d+[.)][ \t]")
ADMONITIONS = {"admonition", "hint", "tip", "note", "important", "seealso", "attention", "caution",
               "warning", "danger", "error"}


def chapters() -> list[Path]:
    """The numbered chapters of _toc.yml, in order (read with a regex: the file is a plain list)."""
    entries = re.findall(r"^\s*-\s*file:\s*(\S+)\s*$", (ROOT / "_toc.yml").read_text(), flags=re.M)
    return [ROOT / f"{entry}.ipynb" for entry in entries if re.match(r"\d\d_", Path(entry).name)]


@dataclass
class Block:
    name: str  # the directive: dropdown, admonition, hint, ...
    title: str
    collapsed: bool
    body: str


def collapsed_blocks(text: str) -> list[Block]:
    """The MyST directives of `text` (nested ones too) that the built page shows collapsed."""
    lines, found = text.splitlines(), []
    for k, line in enumerate(lines):
        head = FENCE_OPEN.match(line)
        if not head:
            continue
        fence, indent = head["fence"], len(head["indent"].expandtabs())
        options, body, end = {}, [], None
        for j in range(k + 1, len(lines)):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * 3) and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                end = j
                break
            if not body and OPTION.match(stripped):
                option = OPTION.match(stripped)
                options[option["key"]] = option["value"]
            else:
                body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].strip())
        if end is None:
            continue  # an unclosed fence is no block
        name = head["name"].lower()
        classes = set(re.split(r"[\s,]+", options.get("class", "")))
        if name == "dropdown":
            collapsed = "open" not in options
        elif name in ADMONITIONS:
            collapsed = "dropdown" in classes
        else:
            collapsed = False
        title = head["title"] or ("" if name in ("dropdown", "admonition") else name)
        found.append(Block(name, title, collapsed, "\n".join(body).strip()))
    return found


def _is(block: Block, word: str) -> bool:
    return block.collapsed and bool(block.body) and re.search(word, block.title, flags=re.I) is not None


def problems(cells: list[dict]) -> list[str]:
    """What the chapter (a notebook's cells) lacks; [] when it has the whole frame."""
    markdown = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in cells if c["cell_type"] == "markdown"]
    found = []
    first = cells[0] if cells else {"cell_type": "code", "source": ""}
    first_text = "".join(first["source"]) if first["cell_type"] == "markdown" else ""
    tail = first_text.split(OBJECTIVES, 1)[1] if OBJECTIVES in first_text else ""
    if not re.search(r"^\s*(?:[-*+]|\d+[.)])\s+\S", tail, flags=re.M):
        found.append(f'no "{OBJECTIVES}" list in the first cell')
    text = "\n".join(markdown)
    if not re.search(r"^##[ \t]+Summary[ \t]*$", text, flags=re.M):
        found.append('no "## Summary"')
    heading = re.search(r"^##[ \t]+Exercises[ \t]*$", text, flags=re.M)
    if not heading:
        return found + ['no "## Exercises"']
    after = text[heading.end():]
    next_heading = re.search(r"^##?[ \t]", after, flags=re.M)
    section = after[:next_heading.start()] if next_heading else after
    items, current = [], None
    for line in section.splitlines():
        if ITEM.match(line):
            current = [line]
            items.append(current)
        elif current is not None:
            current.append(line)
    if len(items) < MIN_EXERCISES:
        found.append(f"{len(items)} numbered exercises, fewer than {MIN_EXERCISES}")
    unhinted = [n for n, item in enumerate(items, 1)
                if not any(_is(b, r"\bhint") for b in collapsed_blocks("\n".join(item)))]
    if unhinted:
        found.append(f"exercises without a collapsed hint: {unhinted}")
    solutions = sum(_is(b, r"\bsolution|\banswer") for b in collapsed_blocks(after))
    if solutions < MIN_SOLUTIONS:
        found.append(f"{solutions} collapsed solutions, fewer than {MIN_SOLUTIONS}")
    return found


def _param(path: Path):
    reason = PENDING.get(path.stem)
    marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
    return pytest.param(path, id=path.stem, marks=marks)


def test_the_toc_lists_the_numbered_chapters():
    found = chapters()
    assert len(found) >= 17 and all(path.is_file() for path in found), found


@pytest.mark.parametrize("path", [_param(p) for p in chapters()])
def test_chapter_has_objectives_summary_and_exercises_with_hints(path):
    cells = json.loads(path.read_text())["cells"]
    assert problems(cells) == [], f"{path.name}: " + "; ".join(problems(cells))


# The checker itself, on tiny made-up chapters.

def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(True)}


GOOD_HEAD = "# 1. A chapter\n\n**After this chapter you will be able to**\n\n- do one thing;\n- do another.\n"
EXERCISES = """## Summary

- It was short.

## Exercises

1. First.

   ```{dropdown} Hint
   Look at the table.
   ```

   ```{dropdown} Solution
   It is 3.
   ```
2. Second.

   :::{admonition} Hint
   :class: dropdown
   Count again.
   :::
3. Third.

````{admonition} Hint
:class: tip, dropdown
A block with code inside:
```python
print(1)
```
````

````{dropdown} Worked solution
```python
print(2)
```
````
4. Fourth.
   :::{hint}
   :class: dropdown
   The last one.
   :::
"""


def test_a_complete_chapter_passes_in_both_fences_and_both_forms():
    assert problems([_md(GOOD_HEAD), {"cell_type": "code", "source": "x = 1"}, _md(EXERCISES)]) == []


def test_the_checker_reports_each_missing_part():
    assert problems([{"cell_type": "code", "source": "x = 1"}]) == [
        f'no "{OBJECTIVES}" list in the first cell', 'no "## Summary"', 'no "## Exercises"']
    few = "## Summary\n\nok\n\n## Exercises\n\n1. One.\n2. Two.\n"
    assert problems([_md(GOOD_HEAD + few)]) == [
        "2 numbered exercises, fewer than 4", "exercises without a collapsed hint: [1, 2]",
        "0 collapsed solutions, fewer than 2"]


def test_an_open_or_plain_block_is_not_a_collapsed_hint():
    open_hint = EXERCISES.replace("```{dropdown} Hint\n", "```{dropdown} Hint\n   :open:\n")
    assert problems([_md(GOOD_HEAD), _md(open_hint)]) == ["exercises without a collapsed hint: [1]"]
    plain = EXERCISES.replace(":class: dropdown\n   Count", ":class: tip\n   Count")
    assert problems([_md(GOOD_HEAD), _md(plain)]) == ["exercises without a collapsed hint: [2]"]
    inline = EXERCISES.replace("```{dropdown} Hint\n   Look at the table.\n   ```", "*Hint:* look at the table.")
    assert problems([_md(GOOD_HEAD), _md(inline)]) == ["exercises without a collapsed hint: [1]"]


def test_one_solution_is_not_enough_and_an_empty_hint_is_no_hint():
    one = EXERCISES.replace("{dropdown} Worked solution", "{dropdown} More")
    assert problems([_md(GOOD_HEAD), _md(one)]) == ["1 collapsed solutions, fewer than 2"]
    empty = EXERCISES.replace("   Look at the table.\n", "")
    assert problems([_md(GOOD_HEAD), _md(empty)]) == ["exercises without a collapsed hint: [1]"]
