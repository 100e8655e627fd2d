"""Every labelled equation in the book has a library function that names it, and back.

A chapter labels an equation with ``:label: eq-...`` (MyST); the function that
computes it says ``Book: eq-...`` in its docstring.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = re.compile(r":label:\s*(eq-[A-Za-z0-9_-]+)")
BOOK_REF = re.compile(r"Book:\s*(eq-[A-Za-z0-9_-]+)")


def _book_text():
    for path in sorted((ROOT / "book").glob("*")):
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            yield path, "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        elif path.suffix == ".md":
            yield path, path.read_text()


def book_labels():
    return {label: path.name for path, text in _book_text() for label in LABEL.findall(text)}


def library_labels():
    found = {}
    for path in (ROOT / "src" / "diffusion_notes").rglob("*.py"):
        for label in BOOK_REF.findall(path.read_text()):
            found.setdefault(label, []).append(path.name)
    return found


def test_book_has_labelled_equations():
    assert len(book_labels()) >= 5


def test_every_book_equation_has_a_function():
    lib = library_labels()
    missing = {label: where for label, where in book_labels().items() if label not in lib}
    assert not missing, f"equations with no library function (add 'Book: <label>' to its docstring): {missing}"


def test_every_function_label_is_in_the_book():
    book = book_labels()
    orphans = {label: where for label, where in library_labels().items() if label not in book}
    assert not orphans, f"docstrings name equations the book does not label: {orphans}"
