"""Data-parallel training: 2 processes at the same global batch compute the losses of one process.

The launches run the real command line under `torchrun` (and `accelerate launch`), on the CPU
with the gloo backend, one thread per process.
"""

import csv
import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch

import diffusion_notes.training.loop as train_module
from diffusion_notes.device import randn
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.rng import (
    batch_shard,
    current_shard,
    per_item_rand,
    per_item_randint,
    per_item_randn,
    shard_rows,
)
from diffusion_notes.run_files import CHECKPOINT_NAME, WEIGHTS_NAME, load_checkpoint, read_metadata
from diffusion_notes.training.distributed import World
from diffusion_notes.training.loop import train

TINY = ["hidden=16", "num_blocks=1", "time_dim=8"]
STEPS, BATCH, SEED = 8, 32, 4
TOLERANCE = 1e-5


def _args(out, *extra):
    words = ["train", "toy2d", "--steps", str(STEPS), "--batch-size", str(BATCH), "--seed", str(SEED),
             "--threads", "1", "--no-progress", "--out", str(out), *extra]
    return words + [w for item in TINY for w in ("--set", item)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_DISABLE_RICH="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DIFFUSION_NOTES_DEVICE"):
        env.pop(key, None)
    env["DIFFUSION_NOTES_DEVICE"] = "cpu"  # gloo on the CPU even on a machine with GPUs
    return env


def _torchrun(out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "diffusion_notes", *_args(out, *extra)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)


def _accelerate(out, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "diffusion_notes", *_args(out, *extra)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)


def _losses(path):
    with open(path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _assert_close_runs(run, reference):
    losses, expected = _losses(run / "losses.csv"), _losses(reference / "losses.csv")
    assert len(losses) == len(expected) == STEPS
    diff = max(abs(a - b) for a, b in zip(losses, expected))
    assert diff < TOLERANCE, (losses, expected)
    weights, ref = load_checkpoint(run / WEIGHTS_NAME)[0], load_checkpoint(reference / WEIGHTS_NAME)[0]
    assert weights.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(weights[key], ref[key], rtol=0, atol=TOLERANCE)
    return diff


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same run in one process (this one), one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("one") / "run"
        train("toy2d", steps=STEPS, batch_size=BATCH, seed=SEED, out_dir=out, config_overrides=TINY,
              progress=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return out


def test_per_item_draws_in_a_shard_are_the_rows_of_the_global_draw():
    N, (a, b) = 12, (4, 8)

    def g():
        return torch.Generator().manual_seed(7)

    # Outside a shard: exactly the torch calls the losses always made.
    assert current_shard() is None
    assert torch.equal(per_item_rand(N, g()), torch.rand(N, generator=g()))
    assert torch.equal(per_item_randint(0, 1000, N, g()), torch.randint(0, 1000, (N,), generator=g()))
    assert torch.equal(per_item_randn((N, 3, 5), g()), randn((N, 3, 5), g()))

    full_u, full_t, full_n = per_item_rand(N, g()), per_item_randint(0, 1000, N, g()), per_item_randn((N, 37), g())
    with batch_shard(a, b, N) as shard:
        assert current_shard() == shard and shard.size == b - a
        assert torch.equal(per_item_rand(b - a, g()), full_u[a:b])
        assert torch.equal(per_item_randint(0, 1000, b - a, g()), full_t[a:b])
        assert torch.equal(per_item_randn((b - a, 37), g()), full_n[a:b])  # 37: not a multiple of torch's 16
        # Caption dropout drops the rows one process drops.
        labels = torch.arange(N)
        with batch_shard(0, N, N):  # nested: the inner shard holds
            assert current_shard().size == N
        dropped_here = drop_condition(labels[a:b], 0.5, -1, g())
        with pytest.raises(ValueError, match=r"per-item draw for 5 rows.*rows \[4, 8\)"):
            per_item_rand(5, g())
    assert current_shard() is None
    assert torch.equal(dropped_here, drop_condition(labels, 0.5, -1, g())[a:b])
    assert not torch.equal(per_item_randn((b - a, 37), g()), full_n[a:b])  # the shard is what makes them agree


def test_a_batch_that_does_not_divide_by_the_processes_is_refused(tmp_path, monkeypatch):
    assert shard_rows(32, 2, 1) == shard_rows(32, 2, 1)
    assert (shard_rows(32, 4, 2).start, shard_rows(32, 4, 2).stop) == (16, 24)
    with pytest.raises(ValueError, match="global batch size 30 must be a positive multiple of the number of "
                                         r"processes \(4\).*--batch-size 28"):
        shard_rows(30, 4, 0)
    monkeypatch.setattr(train_module, "join_world", lambda device: (World(0, 2), device, False))
    with pytest.raises(ValueError, match=r"global batch size 33 must be a positive multiple .* \(2\)"):
        train("toy2d", steps=2, batch_size=33, out_dir=tmp_path / "odd", config_overrides=TINY, progress=False,
              device="cpu")


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one_process(tmp_path, one_process):
    run = tmp_path / "two"
    done = _torchrun(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 8 steps") == 1  # rank 0 reports; rank 1 is quiet
    print(f"largest loss difference, 2 processes against 1: {_assert_close_runs(run, one_process):.2e}")
    meta = read_metadata(run / CHECKPOINT_NAME)
    assert meta["processes"] == 2 and meta["batch_size"] == BATCH
    assert "processes" not in read_metadata(one_process / CHECKPOINT_NAME)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_processes_under_accelerate_launch(tmp_path, one_process):
    """Started in one process, stopped by --max-seconds after step 1, finished by 2 processes (accelerate, or torchrun)."""
    run = tmp_path / "resumed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        part = train("toy2d", steps=STEPS, batch_size=BATCH, seed=SEED, out_dir=run, config_overrides=TINY,
                     progress=False, device="cpu", max_seconds=0.0)
    finally:
        torch.set_num_threads(threads)
    assert part.step == 1 and not (run / WEIGHTS_NAME).exists()
    if importlib.util.find_spec("accelerate") is not None:
        resumed = _accelerate(run, "--resume")
    else:
        resumed = _torchrun(run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metadata(run / CHECKPOINT_NAME)["processes"] == 2
    _assert_close_runs(run, one_process)


# ---------------------------------------------------------------------------
# The Recipe's fine-tuning hooks (in one process): frozen parameters, after_step, trainable_state.


def _finetune_recipe(**changes):
    import dataclasses

    from diffusion_notes.foundations.toy2d import ToyDenoiser
    from diffusion_notes.training.recipes import get_recipe

    def build(config):
        model = ToyDenoiser(config)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("out.2."))  # only the last layer trains
        initial.setdefault("row", model.out[2].weight[0].detach().clone())  # the run's own build comes first
        return model

    initial = {}

    def after_step(model):  # like textual inversion: row 0 of the last layer stays as it was built
        model.out[2].weight[0] = initial["row"]
        initial["calls"] = initial.get("calls", 0) + 1

    def trainable_state(model):
        return {k: v for k, v in model.state_dict().items() if k.startswith("out.2.")}

    hooks = {"build": build, "after_step": after_step, "trainable_state": trainable_state, **changes}
    recipe = dataclasses.replace(get_recipe("toy2d"), **hooks)
    return recipe, initial


def test_only_trainable_parameters_train_and_the_final_weights_are_the_picked_tensors(tmp_path, one_thread):
    from diffusion_notes.training.run_state import build_model

    recipe, calls = _finetune_recipe()
    result = train(recipe, steps=6, batch_size=32, seed=2, out_dir=tmp_path / "ft", config_overrides=TINY,
                   progress=False, device="cpu")
    assert result.finished and calls["calls"] == 6
    saved = load_checkpoint(tmp_path / "ft" / WEIGHTS_NAME)[0]
    assert set(saved) == {"out.2.weight", "out.2.bias"}
    torch.manual_seed(2)
    initial = build_model(recipe, read_metadata(tmp_path / "ft" / CHECKPOINT_NAME)["config"]).state_dict()
    tensors = load_checkpoint(tmp_path / "ft" / CHECKPOINT_NAME)[0]
    final = result.model.state_dict()
    for key, value in initial.items():
        if key.startswith("out.2."):
            assert torch.equal(final[key], saved[key])
            assert not torch.equal(final[key], value)  # trained (EMA weights)
        else:
            assert torch.equal(final[key], value) and torch.equal(tensors[f"model.{key}"], value)  # frozen
    assert torch.equal(saved["out.2.weight"][0], initial["out.2.weight"][0])  # after_step kept row 0, EMA too
    assert torch.equal(tensors["model.out.2.weight"][0], initial["out.2.weight"][0])
    # Stopped and resumed with most parameters frozen: the same losses.
    recipe2, _ = _finetune_recipe()
    part = train(recipe2, steps=6, batch_size=32, seed=2, out_dir=tmp_path / "part", config_overrides=TINY,
                 progress=False, device="cpu", max_seconds=0.0)
    assert part.step == 1
    rest = train(recipe2, out_dir=tmp_path / "part", resume=True, progress=False, device="cpu")
    assert rest.losses == result.losses


FINETUNE_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_distributed import TINY, _finetune_recipe_calling_forward
from diffusion_notes.training.loop import train
train(_finetune_recipe_calling_forward(), steps=6, batch_size=32, seed=2, out_dir=sys.argv[1], config_overrides=TINY,
      progress=False, device="cpu")
"""


def _finetune_recipe_calling_forward():
    """The fine-tuning recipe with a loss that calls the model's parts, not model(...), as a learner's loss does."""
    import dataclasses

    from diffusion_notes.foundations.diffusion import noise_prediction_loss
    from diffusion_notes.foundations.schedules import make_schedule

    recipe, _ = _finetune_recipe()
    schedule = make_schedule("linear", 1000)

    def loss(model, batch, generator):
        return noise_prediction_loss(lambda x_t, t: model.forward(x_t, t), batch["x0"], schedule, generator=generator)

    return dataclasses.replace(recipe, loss=loss)


@pytest.mark.slow
def test_two_processes_fine_tune_frozen_models_like_one(tmp_path, one_thread):
    """Frozen parameters, after_step, trainable_state and a loss that does not call model(...), on 2 processes."""
    one = train(_finetune_recipe_calling_forward(), steps=6, batch_size=32, seed=2, out_dir=tmp_path / "one",
                config_overrides=TINY, progress=False, device="cpu")
    script = tmp_path / "finetune.py"
    script.write_text(FINETUNE_SCRIPT.format(tests=os.path.dirname(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), str(tmp_path / "two")]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = _losses(tmp_path / "two" / "losses.csv")
    assert max(abs(a - b) for a, b in zip(losses, one.losses)) < TOLERANCE and len(losses) == 6
    saved, ref = (load_checkpoint(tmp_path / run / WEIGHTS_NAME)[0] for run in ("two", "one"))
    assert set(saved) == set(ref) == {"out.2.weight", "out.2.bias"}
    for key in ref:
        torch.testing.assert_close(saved[key], ref[key], rtol=0, atol=TOLERANCE)


def test_trainable_state_with_a_foreign_key_and_a_fully_frozen_model_are_errors(tmp_path, one_thread):
    recipe, _ = _finetune_recipe(trainable_state=lambda model: {"lora_up.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="tensors the model does not have, first 'lora_up.weight'"):
        train(recipe, steps=2, batch_size=32, out_dir=tmp_path / "bad", config_overrides=TINY, progress=False,
              device="cpu")
    frozen, _ = _finetune_recipe()
    import dataclasses

    def build(config):
        model = recipe.build(config)
        model.requires_grad_(False)
        return model

    with pytest.raises(ValueError, match="no parameter requires grad"):
        train(dataclasses.replace(frozen, build=build), steps=2, batch_size=32, out_dir=tmp_path / "frozen",
              config_overrides=TINY, progress=False, device="cpu")
