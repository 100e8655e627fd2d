"""Shipped weights: ship a tiny toy2d run into a temporary weights dir, load it back, and break it."""

import hashlib
import json
import shlex
import shutil

import pytest
import torch

from diffusion_notes import pretrained, run_files
from diffusion_notes.__main__ import main
from diffusion_notes.pretrained import WeightsError, available, info, load
from diffusion_notes.run_files import WEIGHTS_NAME, load_checkpoint
from diffusion_notes.training.loop import train
from diffusion_notes.training.ship import loss_curve, ship

TINY = ["hidden=16", "num_blocks=1", "time_dim=8"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(run_dir, weights_dir) with toy2d trained for 20 steps and shipped."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shipped")
    result = train("toy2d", steps=20, batch_size=32, seed=4, out_dir=root / "run", config_overrides=TINY,
                   progress=False)
    ship(result.run_dir, weights_dir=root / "weights")
    torch.set_num_threads(before)
    return result.run_dir, root / "weights"


@pytest.fixture
def weights(shipped, tmp_path):
    """A private copy of the shipped weights directory, free to damage."""
    return shutil.copytree(shipped[1], tmp_path / "weights")


def test_manifest_entry(shipped):
    run_dir, weights_dir = shipped
    assert available(weights_dir) == ["toy2d"]
    entry = info("toy2d", weights_dir)
    data = (weights_dir / entry["file"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
    assert data == (run_dir / WEIGHTS_NAME).read_bytes()
    assert entry["config"]["hidden"] == 16 and entry["steps"] == 20 and entry["seed"] == 4
    assert entry["batch_size"] == 32 and entry["lr"] == 2e-3 and entry["wall_time_s"] > 0
    assert {"platform", "cpu", "cores", "torch", "device"} <= set(entry["machine"])
    assert entry["metrics"]["eval_loss"] > 0
    assert "--set hidden=16" in entry["train_command"] and "--seed 4" in entry["train_command"]
    assert entry["ship_command"].startswith("python -m diffusion_notes ship ")


def test_load_round_trip(shipped, monkeypatch):
    run_dir, weights_dir = shipped
    model = load("toy2d", weights_dir=weights_dir)
    assert not model.training and model.config.hidden == 16
    expected = load_checkpoint(run_dir / WEIGHTS_NAME)[0]
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == torch.float32 for k in state)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV_VAR, str(weights_dir))  # the environment variable works too
    assert available() == ["toy2d"]
    assert all(torch.equal(v, expected[k]) for k, v in load("toy2d").state_dict().items())


def test_loading_leaves_the_global_random_state_alone(shipped):
    _, weights_dir = shipped
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load("toy2d", weights_dir=weights_dir)  # building the module draws initial weights, inside its own fork
    assert torch.equal(torch.rand(3), expected)


def test_the_manifest_command_reproduces_the_weights(shipped, tmp_path, one_thread):
    _, weights_dir = shipped
    entry = info("toy2d", weights_dir)
    words = shlex.split(entry["train_command"])
    assert words[:4] == ["python", "-m", "diffusion_notes", "train"]
    out = words.index("--out")
    words[out + 1] = str(tmp_path / "again")
    assert main(words[3:] + ["--no-progress"]) == 0
    again = (tmp_path / "again" / WEIGHTS_NAME).read_bytes()
    assert hashlib.sha256(again).hexdigest() == entry["sha256"]


def test_missing_file(weights):
    (weights / "toy2d.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load("toy2d", weights_dir=weights)
    message = str(err.value)
    assert str(weights / "toy2d.safetensors") in message
    assert "python -m diffusion_notes train toy2d" in message and "python -m diffusion_notes ship" in message


def test_checksum_mismatch(weights):
    path = weights / "toy2d.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip the bits of one byte of a weight
    path.write_bytes(bytes(data))
    expected = info("toy2d", weights)["sha256"]
    with pytest.raises(WeightsError) as err:
        load("toy2d", weights_dir=weights)
    message = str(err.value)
    assert str(path) in message and expected in message and hashlib.sha256(data).hexdigest() in message
    assert "python -m diffusion_notes train toy2d" in message


def _edit_manifest(weights, edit):
    path = weights / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["models"]["toy2d"]["config"])
    path.write_text(json.dumps(manifest))


def test_config_mismatch(weights):
    _edit_manifest(weights, lambda config: config.update(hidden=32))
    with pytest.raises(WeightsError, match=r"differs from the manifest's.*python -m diffusion_notes train toy2d"):
        load("toy2d", weights_dir=weights)


def test_manifest_field_the_code_does_not_know(weights):
    _edit_manifest(weights, lambda config: config.update(dropout=0.1))
    with pytest.raises(WeightsError, match=r"fields ToyDenoiserConfig does not know: dropout.*[Rr]etrain it with"):
        load("toy2d", weights_dir=weights)


def test_unknown_name_lists_the_shipped_ones(weights, tmp_path):
    with pytest.raises(ValueError, match=r"no shipped model called 'clipp'; shipped models: toy2d"):
        load("clipp", weights_dir=weights)
    with pytest.raises(ValueError, match="shipped models: none yet"):
        load("toy2d", weights_dir=tmp_path / "empty")


def test_checksum_is_cached(weights, monkeypatch):
    load("toy2d", weights_dir=weights)
    calls = []
    monkeypatch.setattr(run_files.hashlib, "sha256", lambda *a: calls.append(a) or hashlib.sha256(*a))
    load("toy2d", weights_dir=weights)
    assert calls == []


def test_shipping_an_unfinished_run_is_refused(tmp_path):
    train("toy2d", steps=10, batch_size=8, out_dir=tmp_path / "run", config_overrides=TINY, progress=False,
          max_seconds=0.0)
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        ship(tmp_path / "run", weights_dir=tmp_path / "weights")


def test_list_command(shipped, capsys):
    assert main(["list", "--weights-dir", str(shipped[1])]) == 0
    out = capsys.readouterr().out
    assert "toy2d: toy2d, 20 steps" in out and "eval_loss=" in out


def test_loss_curve_averages_windows():
    curve = loss_curve([float(i) for i in range(10)], points=5)
    assert curve == [[2, 0.5], [4, 2.5], [6, 4.5], [8, 6.5], [10, 8.5]]
    assert len(loss_curve([1.0] * 1000, points=60)) == 60
    assert loss_curve([3.0, 1.0], points=60) == [[1, 3.0], [2, 1.0]]


def test_shipped_models_have_a_training_curve():
    for name in pretrained.available():
        curve = pretrained.info(name)["loss_curve"]
        assert curve[-1][0] == pretrained.info(name)["steps"]
        if pretrained.info(name)["recipe"] == "textual_inversion":
            # one embedding row of a frozen UNet that never drew a heart: the loss stays where it was
            # (Chapter 16 prints both curves; tests/test_finetune_methods.py checks that the row moves)
            assert abs(curve[-1][1] - curve[0][1]) < 0.5 * curve[0][1], name
            continue
        assert curve[-1][1] < curve[0][1], f"{name}: the loss did not fall"


def test_a_failed_evaluation_leaves_the_shelf_as_it_was(shipped, weights, tmp_path, monkeypatch, one_thread):
    """ship stages the new weights while it evaluates them: when the evaluation raises, nothing on the shelf moves."""
    import dataclasses

    from diffusion_notes.training import ship as ship_module
    from diffusion_notes.training.recipes import get_recipe

    again = train("toy2d", steps=5, batch_size=32, seed=9, out_dir=tmp_path / "again", config_overrides=TINY,
                  progress=False)
    assert (again.run_dir / WEIGHTS_NAME).read_bytes() != (weights / "toy2d.safetensors").read_bytes()
    before = {path.name: path.read_bytes() for path in weights.iterdir()}

    def evaluate(model):
        raise RuntimeError("the judge is out")

    monkeypatch.setattr(ship_module, "get_recipe",
                        lambda name, device="cpu": dataclasses.replace(get_recipe(name, device), evaluate=evaluate))
    with pytest.raises(RuntimeError, match="the judge is out"):
        ship(again.run_dir, weights_dir=weights)
    assert {path.name: path.read_bytes() for path in weights.iterdir()} == before  # no staged file left either
    assert torch.equal(load("toy2d", "cpu", weights_dir=weights).out[-1].weight,
                       load_checkpoint(shipped[0] / WEIGHTS_NAME)[0]["out.2.weight"].float())

    monkeypatch.undo()  # the same run ships once its evaluation works
    entry = ship(again.run_dir, weights_dir=weights)
    assert entry["seed"] == 9 and info("toy2d", weights)["sha256"] == entry["sha256"]
    assert sorted(path.name for path in weights.iterdir()) == sorted(before)
