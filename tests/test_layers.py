"""The library's shape: folders that read like the book's table of contents, imports that only run downward.

Every import of the package is read with `ast`, the ones written inside functions too, and held
against the table below (README, "The library at a glance"). A part never fetches its frozen
models from the shelf: CLIP, the autoencoder and the classifier are arguments, and only
`training/`, `pretrained.py` and the web UI's launcher know the shipped weights.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "diffusion_notes"
BOOK_TOOLS = "diffusion_book"  # the chapters' helpers (src/diffusion_book): beside the library, never under it
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# layer -> the layers it may import (besides itself). Each module's layer is its folder, or its own name.
BASE = {"device", "rng", "run_files", "viz", "data", "nn"}
MAY_IMPORT = {
    "package": set(),  # diffusion_notes/__init__.py: the version, nothing else
    "device": set(),
    "rng": {"device"},  # seeds per training step and per-item draws; `randn` draws on the CPU
    "run_files": set(),
    "viz": set(),
    "data": set(),
    "nn": set(),
    "evaluation": {"data", "nn", "device"},
    "foundations": {"device", "rng", "nn"},  # Part I
    "unclip": {"foundations", "nn", "data", "device", "rng", "evaluation", "viz"},  # Part II
    "stable_diffusion": {"foundations", "nn", "data", "device", "rng", "evaluation", "viz"},  # Part III
    "practice": BASE | {"evaluation", "foundations", "unclip", "stable_diffusion"},  # Part IV
    "fewer_steps": BASE | {"evaluation", "foundations", "stable_diffusion", "practice"},  # Part V
    # the list of models: every Part's model classes and Part IV's adapter loaders; practice never imports it
    "architectures": {"run_files", "device", "rng", "data", "nn", "evaluation", "foundations", "unclip",
                      "stable_diffusion", "practice", "fewer_steps"},
    "pretrained": {"run_files", "device", "data", "nn", "evaluation", "foundations", "unclip", "stable_diffusion",
                   "practice", "fewer_steps", "architectures"},  # Parts IV-V's models too; webui.launch asks it
    "training": BASE | {"evaluation", "foundations", "unclip", "stable_diffusion", "practice", "fewer_steps",
                        "architectures", "pretrained"},
    "__main__": BASE | {"evaluation", "foundations", "unclip", "stable_diffusion", "practice", "fewer_steps",
                        "architectures", "pretrained", "training"},
}
MAY_IMPORT["launcher"] = MAY_IMPORT["practice"] | {"practice", "pretrained"}  # the web UI's start: asks the shelf
MAY_IMPORT["__main__"] |= {"launcher"}
# Modules that are a layer of their own, apart from their folder's.
OWN_LAYER = {f"{PACKAGE}.practice.webui.launch": "launcher"}
EVERYONE_MAY_IMPORT = {"package"}  # `from diffusion_notes import __version__`


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in OWN_LAYER:
        return OWN_LAYER[module]
    parts = module.split(".")
    return "package" if len(parts) == 1 else parts[1]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import in the file, at any depth."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            for alias in node.names:  # `from pkg import module` imports the module itself
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return [(name, line) for name, line in found if name == root.name or name.startswith(root.name + ".")]


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line} over the package in `root`."""
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    graph = {}
    for f in files:
        edges: dict[str, int] = {}
        for name, line in imports_of(f, root, known):
            while name not in known and "." in name:  # `from pkg.mod import function`
                name = name.rsplit(".", 1)[0]
            edges.setdefault(name, line)
        graph[module_name(f, root)] = {k: v for k, v in edges.items() if k != module_name(f, root)}
    return graph


def violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports against the table, as 'a (line n) -> b: layer x may not import layer y'."""
    out = []
    for module, edges in graph.items():
        here = layer_of(module)
        if here not in MAY_IMPORT:
            out.append(f"{module}: its folder {here!r} is not in the layer table")
            continue
        for target, line in edges.items():
            there = layer_of(target)
            if there != here and there not in MAY_IMPORT[here] | EVERYONE_MAY_IMPORT:
                out.append(f"{module} (line {line}) -> {target}: {here} may not import {there}")
    return out


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), and self-imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


# ----------------------------------------------------------------------------- the library itself


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def test_every_import_runs_down_the_table(graph):
    assert violations(graph) == []


def test_no_module_imports_another_in_a_circle(graph):
    assert circles(graph) == []


def test_the_folders_read_like_the_table_of_contents():
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders == {"foundations", "unclip", "stable_diffusion", "practice", "fewer_steps", "nn", "data",
                       "evaluation", "training", "viz", "weights"}
    top = {p.stem for p in SRC.glob("*.py")}
    assert top == {"__init__", "__main__", "architectures", "device", "pretrained", "rng", "run_files"}


def test_no_flat_shims_are_left_at_the_old_paths():
    old = ["schedules", "diffusion", "samplers", "sampler_steps", "guidance", "oracle", "toy2d", "toy_metrics",
           "tokenizer", "clip", "clip_eval", "bridges", "classifier", "metrics", "unclip_data", "prior", "ar_prior",
           "unclip", "unclip_pipeline", "unclip_eval", "vae", "ldm", "cost", "pipeline", "ldm_eval", "recipes",
           "train", "widgets", "checkpoint"]
    assert [name for name in old if (SRC / f"{name}.py").exists()] == []


def book_tool_imports(root: Path) -> list[str]:
    """'module (line n)' for every import of the book's tools (`diffusion_book`) in the package in `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n == BOOK_TOOLS or n.startswith(BOOK_TOOLS + ".") for n in names):
                found.append(f"{module_name(path, root)} (line {node.lineno})")
    return found


def test_the_library_never_imports_the_book_s_tools():
    assert book_tool_imports(SRC) == []


def test_only_training_and_the_shelf_know_the_shipped_weights(graph):
    for module, edges in graph.items():
        if layer_of(module) in ("pretrained", "training", "__main__", "launcher"):
            continue
        assert f"{PACKAGE}.pretrained" not in edges, module
        assert not any(t.startswith(f"{PACKAGE}.training") for t in edges), module


def test_every_recipe_trains_an_architecture_of_the_list():
    from diffusion_notes.architectures import ARCHITECTURES
    from diffusion_notes.training.recipes import get_recipe, recipe_names

    for name in recipe_names():
        recipe = get_recipe(name)
        assert name in ARCHITECTURES, name
        assert type(recipe.config) is ARCHITECTURES[name].config, name
        if ARCHITECTURES[name].load is None:  # a whole model; a fine-tuning result is built on the shipped parts
            # the class itself, or (the LCM student) a subclass that carries a training-only part beside it
            assert recipe.build is ARCHITECTURES[name].model or issubclass(recipe.build, ARCHITECTURES[name].model), \
                name


def test_the_shelf_builds_every_shipped_model_through_the_list(monkeypatch):
    from diffusion_notes import architectures, pretrained

    built = []
    real = architectures.build

    def spy(recipe, *args, **kwargs):
        built.append(recipe)
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(architectures, "build", spy)
    models = pretrained.read_manifest()["models"]
    for name, entry in models.items():
        shipped = pretrained.load(name, "cpu")
        assert built[-1] == entry["recipe"], name
        kind = architectures.ARCHITECTURES[entry["recipe"]]
        if kind.load is None:
            assert type(shipped) is kind.model and not shipped.training, name
    assert len(built) == len(models)


# ----------------------------------------------------------------------------- the checker can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


def test_the_checker_finds_an_upward_import_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "pretrained.py": "",
        "unclip/prior.py": "def load():\n    from diffusion_notes import pretrained\n    return pretrained\n",
        "foundations/samplers.py": "from ..unclip import prior\n",
    })
    found = violations(import_graph(root))
    assert any("unclip.prior (line 2) -> diffusion_notes.pretrained" in v for v in found), found
    assert any("foundations.samplers (line 1) -> diffusion_notes.unclip.prior" in v for v in found), found


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "unclip/a.py": "from diffusion_notes.unclip.b import f\n",
        "unclip/b.py": "def f():\n    from diffusion_notes.unclip import a\n",
        "unclip/c.py": "from . import a\n",
    })
    assert circles(import_graph(root)) == [["diffusion_notes.unclip.a", "diffusion_notes.unclip.b"]]


def test_the_checker_finds_the_book_s_tools_imported_in_the_library(tmp_path):
    root = _tree(tmp_path, {
        "report.py": "def f():\n    from diffusion_book.report import live\n",
        "viz/figures.py": "import diffusion_book\n",
        "viz/panels.py": "import diffusion_booklet\n",
    })
    assert book_tool_imports(root) == ["diffusion_notes.report (line 2)", "diffusion_notes.viz.figures (line 1)"]


def test_only_the_launcher_of_the_web_ui_may_ask_the_shelf(tmp_path):
    root = _tree(tmp_path, {
        "pretrained.py": "",
        "practice/webui/launch.py": "from diffusion_notes import pretrained\n",
        "practice/webui/app.py": "from diffusion_notes.practice.webui import launch\n",
        "practice/webui/state.py": "from diffusion_notes import pretrained\n",
    })
    assert violations(import_graph(root)) == [
        "diffusion_notes.practice.webui.app (line 1) -> diffusion_notes.practice.webui.launch: "
        "practice may not import launcher",
        "diffusion_notes.practice.webui.state (line 1) -> diffusion_notes.pretrained: "
        "practice may not import pretrained"]


def test_the_checker_keeps_parts_two_and_three_apart(tmp_path):
    root = _tree(tmp_path, {
        "stable_diffusion/pipeline.py": "import diffusion_notes.unclip.clip\n",
        "unclip/clip.py": "",
    })
    assert violations(import_graph(root)) == [
        "diffusion_notes.stable_diffusion.pipeline (line 1) -> diffusion_notes.unclip.clip: "
        "stable_diffusion may not import unclip"]
