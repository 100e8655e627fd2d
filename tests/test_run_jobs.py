"""tests/run_jobs.py, which runs the unit tests and the chapters side by side in `make test`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_jobs


def notebook(path: Path, seconds: list[float]) -> Path:
    cells = [{"cell_type": "code", "source": "", "outputs": [], "execution_count": 1,
              "metadata": {"execution": {"iopub.execute_input": "2026-01-01T00:00:00.000000Z",
                                         "shell.execute_reply": f"2026-01-01T00:00:{s:09.6f}Z"}}}
             for s in seconds] + [{"cell_type": "markdown", "source": "no timing", "metadata": {}}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_stored_seconds_add_up_the_cells_recorded_times(tmp_path):
    assert run_jobs.stored_seconds(notebook(tmp_path / "a.ipynb", [1.5, 2.25])) == pytest.approx(3.75)
    assert run_jobs.stored_seconds(notebook(tmp_path / "b.ipynb", [])) == 0


def test_jobs_start_longest_first_and_only_chapters_get_the_nbval_environment(tmp_path):
    short, long = notebook(tmp_path / "short.ipynb", [3.0]), notebook(tmp_path / "long.ipynb", [40.0, 50.0])
    jobs = run_jobs.plan(True, [short, long], {"ATEN_CPU_CAPABILITY": "default"})
    assert [job["name"] for job in jobs] == ["unit", "long", "short"]
    assert jobs[0]["env"] == {} and jobs[1]["env"] == {"ATEN_CPU_CAPABILITY": "default"}
    assert str(long) in jobs[1]["args"] and "--nbval" in jobs[1]["args"]


def test_bad_arguments_exit_with_2(tmp_path):
    script = Path(run_jobs.__file__)
    for args in (["--jobs", "0", "--unit"], ["--nbval", str(tmp_path / "missing.ipynb")], [],
                 ["--unit", "--nbval-env", "NOEQUALS"]):
        result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert result.returncode == 2, (args, result.stderr)


def test_a_job_runs_in_a_temporary_folder_of_its_own_that_goes_when_it_ends(tmp_path, monkeypatch):
    # a test that leaves a folder in the temporary directory, as a chapter does when nbval kills its kernel
    (tmp_path / "test_leave.py").write_text(
        "import os, tempfile\n"
        "def test_leaves_a_folder():\n"
        "    folder = tempfile.mkdtemp(prefix='left-')\n"
        "    open(os.path.join(tmp_path_file(), 'where'), 'w').write(folder)\n"
        f"def tmp_path_file():\n    return {str(tmp_path)!r}\n")
    monkeypatch.setattr(run_jobs, "LOGS", tmp_path)
    job = {"name": "leave", "args": [str(tmp_path / "test_leave.py"), "-q"], "env": {}, "seconds": 1.0}
    _, code, _ = run_jobs.run(job, one_thread=True)
    assert code == 0, (tmp_path / "leave.log").read_text()
    folder = Path((tmp_path / "where").read_text())
    assert folder.name.startswith("left-") and folder.parent.name.startswith("dn-leave-")
    assert not folder.parent.exists()  # removed with everything in it
