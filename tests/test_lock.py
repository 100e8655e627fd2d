"""requirements.lock pins every Python package; the venv, pyproject.toml and environment.yml agree with it."""

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def lock_entries(text: str) -> list[Requirement]:
    """The requirement lines of a lock file (comments and `# via` annotations skipped)."""
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def pinned_here(entries: list[Requirement]) -> dict[str, str]:
    """{name: version} for the entries whose marker applies to this interpreter and platform."""
    pins = {}
    for req in entries:
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier  # exactly one specifier per line
        assert spec.operator == "==", f"{req} is not pinned to one version"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]  # `make lock` compiles every extra into the lock
    return [Requirement(r) for r in project["dependencies"] + sum(extras.values(), [])]


def test_every_lock_line_is_an_exact_pin():
    entries = lock_entries(LOCK.read_text())
    assert len(entries) > 100  # the whole tree, not only the direct dependencies
    for req in entries:
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", str(req)


def test_lock_parser_rejects_a_range():
    with pytest.raises(AssertionError, match="not pinned"):
        pinned_here(lock_entries("numpy>=2\n    # via diffusion-notes\n"))


def test_every_project_dependency_is_locked_within_its_range():
    pins = pinned_here(lock_entries(LOCK.read_text()))
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}: run `make lock`")


def test_the_venv_holds_exactly_the_locked_versions():
    pins = pinned_here(lock_entries(LOCK.read_text()))
    wrong = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed (run `make setup`): {wrong}"


def test_environment_yml_installs_from_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip_section
    # every other pip line is the project itself: no package that could float
    assert [line for line in pip_section if line != "-r requirements.lock"] == ["-e ."]


def test_makefile_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install ([^\n]*)", makefile)
    assert any("-r requirements.lock" in line for line in installs)
    for line in installs:  # nothing installed by name without a version, but the project itself
        for word in line.split():
            if not word[0].isalpha() or word == "requirements.lock":
                continue  # options, the project (.), shell punctuation
            assert "==" in word, f"unpinned install in the Makefile: pip install {line}"
