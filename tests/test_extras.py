"""`pip install diffusion_notes` without extras gives Parts I-III: the packages of the `webui`,
`interop` and `dist` extras (and the book's scikit-image) are imported only by Part IV's modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL_EXTRAS = ("webui", "interop", "dist")
IMPORT_NAME = {"scikit-image": "skimage"}  # distribution -> the name it is imported by, where they differ

# Every module that imports one of those packages when it is imported. Only Part IV (practice/) may.
IMPORTS_AN_EXTRA = {
    "diffusion_notes.practice.webui.app": "gradio",
    "diffusion_notes.practice.webui.app_parts": "gradio",
    "diffusion_notes.practice.finetune.peft_interop": "peft",
}

# Imports every module of the package with the optional packages made unimportable; prints the failures.
PROBE = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    hidden = set(sys.argv[1:])

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                raise ImportError(f"No module named {name!r} (hidden)", name=name)

    sys.meta_path.insert(0, Hide())
    import diffusion_notes
    failed = {}
    for module in pkgutil.walk_packages(diffusion_notes.__path__, "diffusion_notes."):
        try:
            importlib.import_module(module.name)
        except ImportError as error:
            failed[module.name] = str(error.name)
    print(json.dumps(failed))
""")


def optional_imports() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [r for extra in OPTIONAL_EXTRAS for r in project["optional-dependencies"][extra]] + ["scikit-image"]
    assert not set(names) & set(project["dependencies"]), "an optional package is also a plain dependency"
    return [IMPORT_NAME.get(name, name).replace("-", "_") for name in names]


@pytest.mark.slow  # a new process that imports every module
def test_only_part_iv_modules_import_an_optional_package():
    hidden = optional_imports()
    assert {"gradio", "diffusers", "transformers", "peft", "onnx", "accelerate", "skimage"} <= set(hidden)
    out = subprocess.run([sys.executable, "-c", PROBE, *hidden], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    failed = json.loads(out.splitlines()[-1])
    assert {name: pkg.split(".")[0] for name, pkg in failed.items()} == IMPORTS_AN_EXTRA
    assert all(name.startswith("diffusion_notes.practice.") for name in failed)
