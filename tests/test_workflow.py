"""The GitHub Actions workflow: tests on pull requests, the book built and published on pushes to main."""

import os
import subprocess
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "book.yml"


def _load():
    wf = yaml.safe_load(WORKFLOW.read_text())
    wf["on"] = wf.pop("on", None) or wf.pop(True)  # YAML 1.1 reads the key `on` as true
    return wf


def _runs(job) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _uses(job) -> list:
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


def _job_running(wf, command):
    jobs = [job for job in wf["jobs"].values() if command in _runs(job)]
    assert len(jobs) == 1, f"expected one job running `{command}`"
    return jobs[0]


def test_triggers():
    wf = _load()
    assert wf["on"]["push"]["branches"] == ["main"]
    assert "pull_request" in wf["on"]


def test_pull_requests_run_the_tests_with_a_browser():
    wf = _load()
    job = _job_running(wf, "make test")
    assert "pull_request" in job["if"] and "!=" not in job["if"]
    runs = _runs(job)
    # the runner's Google Chrome (tests/browser/conftest.py looks for it after chromium), checked first
    assert "google-chrome --version" in runs and runs.index("google-chrome --version") < runs.index("make test")
    assert "apt-get install -y chromium" not in runs  # Ubuntu's package is a snap wrapper
    assert "actions/checkout" in _uses(job)


def test_main_builds_and_deploys_to_pages():
    wf = _load()
    build = _job_running(wf, "make book")
    assert "!= 'pull_request'" in build["if"], "the book is published from pushes, not from pull requests"
    uses = _uses(build)
    assert uses.index("actions/configure-pages") < uses.index("actions/upload-pages-artifact")
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    [deploy] = [job for job in wf["jobs"].values() if "actions/deploy-pages" in _uses(job)]
    assert deploy["needs"] in ("build", ["build"])
    assert deploy["environment"]["name"] == "github-pages"
    perms = {**wf.get("permissions", {}), **deploy.get("permissions", {})}
    assert perms == {"pages": "write", "id-token": "write", "contents": "read"}
    assert wf["permissions"] == {"contents": "read"}, "only the deploy job may write"


def test_concurrency_group():
    wf = _load()
    assert "group" in wf["concurrency"] and "github.ref" in wf["concurrency"]["group"]


def test_publishing_points_the_launch_buttons_at_its_repository(tmp_path):
    """The build job's step fills the empty `repository: url` of _config.yml with its own repository."""
    wf = _load()
    build = _job_running(wf, "make book")
    [step] = [step for step in build["steps"] if "_config.yml" in step.get("run", "") and "sed -i" in step["run"]]
    config = (WORKFLOW.parents[2] / "_config.yml").read_text()
    assert yaml.safe_load(config)["repository"]["url"] == "", "the book ships with no repository set"
    (tmp_path / "_config.yml").write_text(config)
    env = {"PATH": os.environ["PATH"], "REPO_URL": "https://github.com/someone/diffusion_notes"}
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, check=True, capture_output=True)
    filled = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert filled["repository"]["url"] == env["REPO_URL"]
    assert {k: v for k, v in filled.items() if k != "repository"} == \
        {k: v for k, v in yaml.safe_load(config).items() if k != "repository"}, "the step changed more than the URL"
