"""The Python the chapters show in their text (```python blocks in markdown) imports what exists.

Such a block is not run when the book is built, so nothing else notices when a module it names moves.
"""

import ast
import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"


def fenced_python(path: Path) -> list[str]:
    """The code of every ```python block in the markdown cells of a chapter."""
    blocks = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            for block in re.findall(r"^( *)```python\n(.*?)^\1```", source, flags=re.S | re.M):
                indent, code = block
                blocks.append("\n".join(line[len(indent):] for line in code.splitlines()))
    return blocks


SNIPPETS = [(path.name, k, code) for path in sorted(BOOK.glob("*.ipynb")) for k, code in enumerate(fenced_python(path))]


@pytest.mark.parametrize("name, k, code", SNIPPETS, ids=[f"{name}-{k}" for name, k, _ in SNIPPETS])
def test_every_import_in_a_snippet_resolves(name, k, code):
    for node in ast.walk(ast.parse(code, filename=f"{name}, block {k}")):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module(body=[node], type_ignores=[]), f"{name}, block {k}", "exec"), {})


@pytest.mark.slow
def test_chapter_4s_real_clip_snippet_says_where_it_looked_when_the_weights_are_absent(tmp_path, monkeypatch):
    """The snippet runs as printed up to loading the weights, which it never downloads."""
    pytest.importorskip("open_clip")
    import huggingface_hub.constants

    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/clip, open_clip's own cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    [code] = [c for c in fenced_python(BOOK / "04_clip.ipynb") if "load_open_clip" in c]
    with pytest.raises(FileNotFoundError, match="looked in"):
        exec(compile(code, "04_clip.ipynb", "exec"), {})
