"""The training command: determinism, kill-and-resume, EMA, Ctrl-C, CLI errors."""

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from diffusion_notes.__main__ import main
from diffusion_notes.rng import step_seed
from diffusion_notes.run_files import CHECKPOINT_NAME, WEIGHTS_NAME, load_checkpoint, read_metadata
from diffusion_notes.training.loop import ema_decay_at, ema_update, lr_at, train
from diffusion_notes.training.overrides import apply_overrides
from diffusion_notes.training.recipes import get_recipe, recipe_names

TINY = ["hidden=16", "num_blocks=1", "time_dim=8"]


def _tiny(tmp_path, name, steps=30, seed=0, **kwargs):
    kwargs.setdefault("checkpoint_every", 1000)
    return train("toy2d", steps=steps, batch_size=32, seed=seed, out_dir=tmp_path / name,
                 config_overrides=TINY, progress=False, **kwargs)


def _csv_losses(path):
    with open(path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _weights(path):
    return load_checkpoint(path)[0]


def test_same_seed_same_losses_other_seed_other_losses(tmp_path, one_thread):
    a = _tiny(tmp_path, "a", seed=1)
    b = _tiny(tmp_path, "b", seed=1)
    c = _tiny(tmp_path, "c", seed=2)
    assert len(a.losses) == 30 and a.finished and a.step == 30
    assert a.losses == b.losses
    assert a.losses != c.losses
    assert _csv_losses(a.run_dir / "losses.csv") == a.losses
    assert (a.run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wa, wb = _weights(a.run_dir / WEIGHTS_NAME), _weights(b.run_dir / WEIGHTS_NAME)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # The effective config is stored with the run and with the weights.
    meta = read_metadata(a.run_dir / CHECKPOINT_NAME)
    assert meta["config"]["hidden"] == 16
    assert meta["config_overrides"] == {"hidden": 16, "num_blocks": 1, "time_dim": 8}
    assert read_metadata(a.run_dir / WEIGHTS_NAME) == {"recipe": "toy2d", "config": meta["config"]}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses_and_weights(tmp_path, one_thread):
    steps, every = 240, 20
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffusion_notes", "train", "toy2d", "--steps", str(steps), "--batch-size", "32",
           "--seed", "3", "--checkpoint-every", str(every), "--out", str(run), "--no-progress"]
    cmd += [w for item in TINY for w in ("--set", item)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        step = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                step = read_metadata(run / CHECKPOINT_NAME)["step"]
            except (FileNotFoundError, ValueError, OSError):
                pass
            if step >= 2 * every:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    tensors, meta = load_checkpoint(run / CHECKPOINT_NAME)  # the last good checkpoint still loads
    assert 2 * every <= meta["step"] < steps and meta["step"] % every == 0
    assert not (run / WEIGHTS_NAME).exists()

    assert main(cmd[3:] + ["--resume"]) == 0  # the same command line with --resume, run in this process
    reference = _tiny(tmp_path, "reference", steps=steps, seed=3)
    resumed = _csv_losses(run / "losses.csv")
    assert len(resumed) == steps
    assert resumed == reference.losses
    w_resumed, w_reference = _weights(run / WEIGHTS_NAME), _weights(reference.run_dir / WEIGHTS_NAME)
    assert w_resumed.keys() == w_reference.keys()
    assert all(torch.equal(w_resumed[k], w_reference[k]) for k in w_reference)


@pytest.mark.slow
def test_max_seconds_then_resume_in_process(tmp_path, one_thread):
    whole = _tiny(tmp_path, "whole", steps=40, seed=5)
    part = _tiny(tmp_path, "part", steps=40, seed=5, max_seconds=0.0)
    assert not part.finished and part.step == 1 and part.model is None
    rest = train("toy2d", out_dir=tmp_path / "part", resume=True, progress=False)
    assert rest.finished and rest.losses == whole.losses


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*start the run without --resume"):
        train("toy2d", out_dir=tmp_path / "none", resume=True, progress=False)
    _tiny(tmp_path, "r", steps=3)
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        _tiny(tmp_path, "r", steps=3)
    with pytest.raises(ValueError, match=r"started with batch_size=32, now batch_size=64"):
        train("toy2d", out_dir=tmp_path / "r", resume=True, batch_size=64, progress=False)
    with pytest.raises(ValueError, match=r"started with config="):
        train("toy2d", out_dir=tmp_path / "r", resume=True, config_overrides=["hidden=32"], progress=False)
    other = dataclasses.replace(get_recipe("toy2d"), name="other")
    with pytest.raises(ValueError, match="checkpoint of 'toy2d', not 'other'"):
        train(other, out_dir=tmp_path / "r", resume=True, progress=False)


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, one_thread):
    recipe = get_recipe("toy2d")

    def loss(model, batch, generator):
        if interrupt_at.pop(0) if interrupt_at else False:
            os.kill(os.getpid(), signal.SIGINT)
        return recipe.loss(model, batch, generator)

    interrupt_at = [False] * 7 + [True]
    stopping = dataclasses.replace(recipe, loss=loss)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 8 of 20.*--resume"):
        train(stopping, steps=20, batch_size=32, out_dir=tmp_path / "c", config_overrides=TINY,
              checkpoint_every=1000, progress=False)
    assert read_metadata(tmp_path / "c" / CHECKPOINT_NAME)["step"] == 8
    assert signal.getsignal(signal.SIGINT) is before


def test_ema_update_matches_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    e0 = {k: v.clone() for k, v in ema.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    decay, n = 0.9, 5
    for _ in range(n):
        ema_update(ema, model, decay)
    for k in ema:  # a geometric approach to theta: e_n = theta + decay^n (e_0 - theta)
        torch.testing.assert_close(ema[k], theta[k] + decay**n * (e0[k] - theta[k]))
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


def test_final_weights_are_the_ema_weights(tmp_path, one_thread):
    result = _tiny(tmp_path, "ema", steps=12)
    tensors = load_checkpoint(result.run_dir / CHECKPOINT_NAME)[0]
    final = _weights(result.run_dir / WEIGHTS_NAME)
    assert all(torch.equal(final[k], tensors[f"ema.{k}"]) for k in final)
    assert not all(torch.equal(final[k], tensors[f"model.{k}"]) for k in final)
    assert all(torch.equal(v, final[k]) for k, v in result.model.state_dict().items())


def test_lr_schedule_and_step_seeds():
    assert lr_at(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(55, 100, 1.0, warmup_steps=10, kind="constant") == 1.0
    seeds = {step_seed(s, t, k) for s in range(3) for t in range(50) for k in range(2)}
    assert len(seeds) == 300 and all(0 <= x < 2**63 for x in seeds)


def test_cli_errors(capsys):
    assert main(["train", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no_such_model'" in err
    for name in recipe_names():
        assert name in err
    assert main(["train", "toy2d", "--set", "widht=3", "--no-progress"]) == 2
    assert "no field 'widht'" in capsys.readouterr().err
    assert main(["train", "toy2d", "--set", "hidden=wide", "--no-progress"]) == 2
    assert "cannot read 'wide' as int" in capsys.readouterr().err
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_overrides_are_parsed_with_the_field_types():
    config = apply_overrides(get_recipe("toy2d").config, ["hidden=24", "num_classes=2"])
    assert config.hidden == 24 and config.num_classes == 2 and isinstance(config.hidden, int)


def test_train_binds_the_recipe_on_its_device_and_defaults_to_the_default_device(tmp_path, monkeypatch, one_thread):
    import diffusion_notes.training.loop as train_module
    from diffusion_notes.device import default_device

    asked = []
    real = train_module.get_recipe

    def spy(name, device="cpu"):
        asked.append(torch.device(device))
        return real(name, device)

    monkeypatch.setattr(train_module, "get_recipe", spy)
    _tiny(tmp_path, "a", steps=2)
    _tiny(tmp_path, "b", steps=2, device="cpu")
    assert asked == [default_device(), torch.device("cpu")]
    assert read_metadata(tmp_path / "a" / CHECKPOINT_NAME)["device"] == str(default_device())


def test_the_ar_prior_fits_its_pca_on_the_runs_own_bank(tmp_path, monkeypatch, one_thread):
    """A run with seed 1 fits the PCA and the buckets on the bank drawn with seed 1, not on seed 0's."""
    from diffusion_notes import pretrained
    from diffusion_notes.training import frozen
    from diffusion_notes.unclip.ar_prior import ARPrior, ARPriorConfig
    from diffusion_notes.unclip.conditions import build_bank

    if "clip" not in pretrained.available():
        pytest.skip("needs the shipped 'clip'")
    banks = {seed: build_bank(frozen.clip(), 128, seed=seed, progress=False) for seed in (0, 1)}
    monkeypatch.setattr(frozen, "unclip_bank", lambda seed, n=None: banks[seed])
    small = ["width=32", "layers=1", "heads=2", "n_components=4", "n_bins=8"]
    result = train("ar_prior", steps=2, batch_size=8, seed=1, out_dir=tmp_path / "ar", config_overrides=small,
                   progress=False, device="cpu")
    expected = {}
    for seed in (0, 1):
        fitted = ARPrior(ARPriorConfig(width=32, layers=1, heads=2, n_components=4, n_bins=8))
        fitted.fit(banks[seed].z_i)
        expected[seed] = fitted.pca_mean
    assert torch.allclose(result.model.pca_mean, expected[1])
    assert not torch.allclose(result.model.pca_mean, expected[0])
