"""benchmarks/gpu_check.py without an accelerator: it skips cleanly, and its comparison holds CPU against CPU."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", PATH)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_skips_without_an_accelerator(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "available", lambda kind: kind == "cpu")
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["gpu_check: skipped: no CUDA or MPS device: nothing to compare; the chapters ran on the CPU"]


def _fake(offset_on_acc, fidelity=None, raises=False):
    cpu, acc = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cpu"))

    def fn(side):
        if side is acc and raises:
            raise RuntimeError("Expected all tensors to be on the same device")
        images = torch.full((2, 3, 4, 4), 0.5) + (offset_on_acc if side is acc else 0.0)
        return images, None if fidelity is None else fidelity[side is acc]

    return fn, cpu, acc


@pytest.mark.parametrize("offset, status", [(0.0, "ok"), (0.05, "off"), (0.5, "bad")])
def test_compare_grades_the_largest_difference(offset, status, capsys):
    fn, cpu, acc = _fake(offset)
    assert gpu_check.compare("fake", fn, cpu, acc, tol=1e-2, bad=0.25, fidelity_tol=0.0) == status
    assert "max |diff|" in capsys.readouterr().out


def test_compare_reports_an_error_and_a_fidelity_gap(capsys):
    fn, cpu, acc = _fake(0.0, raises=True)
    assert gpu_check.compare("fake", fn, cpu, acc, 1e-2, 0.25, 0.0) == "error"
    assert "FAILED: RuntimeError" in capsys.readouterr().out
    fn, cpu, acc = _fake(0.0, fidelity=([1.0, 0.9], [1.0, 0.8]))
    assert gpu_check.compare("fake", fn, cpu, acc, 1e-2, 0.25, 0.05) == "off"
    assert gpu_check.compare("fake", fn, cpu, acc, 1e-2, 0.25, 0.0) == "bad"  # the dry run wants them equal


def test_real_functions_agree_cpu_against_cpu(one_thread, capsys):
    cpu, other = gpu_check.Side("cpu"), gpu_check.Side("cpu")
    tol = gpu_check.DRY_TOL
    assert gpu_check.compare("trace", lambda s: gpu_check.trace(s, 1, 3), cpu, other, tol, tol, 0.0) == "ok"
    sweep = lambda s: gpu_check.sweep(s, (1.0, 4.0), 1, 4, 2)  # noqa: E731
    assert gpu_check.compare("sweep", sweep, cpu, other, tol, tol, 0.0) == "ok"
    assert "fidelity per scale" in capsys.readouterr().out
