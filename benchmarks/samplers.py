"""How fast are our samplers? Our sampling loop against a loop over diffusers' schedulers, and guided
against unguided sampling. Prints the fastest of interleaved repeats (the least disturbed run, as
`timeit` advises; on an idle machine the median is within a few percent of it), their ratios (each
against a reference timed in the same run, on one CPU thread, in process CPU time, which another
process on a shared machine disturbs less than wall time) and whether each target is met. It
asserts nothing.

Targets:
  1. each sampler, with the toy model: ours within 1.05x of diffusers' loop;
  2. the loop alone (a model that returns zeros): our overhead per step at most diffusers';
  3. a guided DDIM step at most 2.05x an unguided one, at batch 500 and at batch 2000.
     `guidance.CFGDenoiser` makes the two predictions in one call on 2B examples, or in two
     calls on B once 2B > `MAX_GUIDED_BATCH` (on a CPU a 2B call of this MLP costs more than two
     B calls once its activations outgrow the cache); both alternatives are timed as well.
     `--crossover` sweeps the batch size to show where the two cross.

Run: OMP_NUM_THREADS=1 python benchmarks/samplers.py [repeats] [--crossover]
"""

import functools
import sys
import time

import diffusers
import torch

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.guidance import MAX_GUIDED_BATCH, CFGDenoiser
from diffusion_notes.foundations.samplers import SAMPLERS, sample
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig

torch.set_num_threads(1)

BATCH, STEPS = 2000, 25
GUIDED_BATCHES = (500, BATCH)
TARGET_RATIO, TARGET_GUIDED = 1.05, 2.05


def scheduler_for(sampler):
    """The sampler's diffusers scheduler in its default configuration (`Sampler.diffusers_class`)."""
    return getattr(diffusers, SAMPLERS[sampler].diffusers_class)()


@functools.cache
def clips_x0(sampler) -> bool:
    """Whether the scheduler's default configuration clips x0_hat to [-1, 1] (DDPM's and DDIM's do)."""
    return bool(scheduler_for(sampler).config.get("clip_sample", False))


def ours(model, sampler):
    sample(model, (BATCH, 2), sampler=sampler, num_inference_steps=STEPS, schedule=make_schedule("linear"),
           generator=make_generator(0), clip_x0=1.0 if clips_x0(sampler) else None)


def theirs(model, sampler):
    """diffusers' pipeline loop (default configuration), with the same model and batch."""
    scheduler = scheduler_for(sampler)
    scheduler.set_timesteps(STEPS)
    g = make_generator(0)
    x = randn((BATCH, 2), g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = model(model_input, t.expand(BATCH))
        x = scheduler.step(eps, t, x, generator=g).prev_sample  # used where the scheduler draws noise


def timed(fn, *args):
    """CPU seconds of this (one-threaded) process: what another process on a shared machine changes least."""
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def best(times):
    """The fastest of the repeats: the one least disturbed by other work on the machine."""
    return min(times)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@torch.no_grad()
def sampler_timings(model, repeats):
    """Targets 1 and 2: whole runs with the toy model, and the loop alone with a model of zeros."""
    print(f"{'sampler':10s} {'ours (s)':>9s} {'diffusers (s)':>14s} {'ratio':>7s}  target <= {TARGET_RATIO}x   "
          f"loop alone, model = zeros (us/step): ours, diffusers  target ours <= diffusers")
    zeros = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    met = []
    for sampler in SAMPLERS:
        ours(model, sampler), theirs(model, sampler), ours(zeros, sampler), theirs(zeros, sampler)  # warm up
        times = {"ours": [], "theirs": [], "ours_loop": [], "theirs_loop": []}
        for _ in range(repeats):  # interleaved, so a busy moment hits both
            times["ours"].append(timed(ours, model, sampler))
            times["theirs"].append(timed(theirs, model, sampler))
            times["ours_loop"].append(timed(ours, zeros, sampler))
            times["theirs_loop"].append(timed(theirs, zeros, sampler))
        a, b, c, d = (best(v) for v in times.values())
        met += [a / b <= TARGET_RATIO, c <= d]
        print(f"{sampler:10s} {a:9.3f} {b:14.3f} {a / b:7.3f}x  {verdict(a / b <= TARGET_RATIO):>15s}   "
              f"{1e6 * c / STEPS:6.0f} {1e6 * d / STEPS:6.0f}  {verdict(c <= d):>16s}")
    return all(met)


@torch.no_grad()
def guidance_timings(model, batch, repeats):
    """Target 3: one guided DDIM step against an unguided one at `batch`; both ways of guiding, too."""
    cond = torch.randint(0, 8, (batch,), generator=make_generator(1))
    uncond = torch.full((batch,), model.null_label)
    kwargs = dict(sampler="ddim", num_inference_steps=STEPS, generator=make_generator(0))
    guided = CFGDenoiser(model, cond, uncond, 4.0)
    variants = {
        "unguided": lambda: sample(model, (batch, 2), cond=cond, **kwargs),
        "guided (the rule)": lambda: sample(model, (batch, 2), cond=cond, uncond=uncond, guidance_scale=4.0,
                                            **kwargs),
        "guided, one 2B call": lambda: sample(CFGDenoiser(model, cond, uncond, 4.0, max_batch=None),
                                              (batch, 2), **kwargs),
        "guided, two B calls": lambda: sample(CFGDenoiser(model, cond, uncond, 4.0, max_batch=0),
                                              (batch, 2), **kwargs),
    }
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn) / STEPS)
    base = best(times["unguided"])
    picked = "one 2B call" if guided.batches(torch.zeros(batch, 2)) else "two B calls"
    ratio = best(times["guided (the rule)"]) / base
    for name, values in times.items():
        step = best(values)
        note = f"  picks {picked}; target <= {TARGET_GUIDED}x {verdict(ratio <= TARGET_GUIDED)}" \
            if name == "guided (the rule)" else ""
        print(f"batch {batch:4d}, one DDIM step, {name:20s} {1e3 * step:6.2f} ms  "
              f"ratio to unguided {step / base:.3f}x{note}")
    return ratio <= TARGET_GUIDED


def guided_calls(model, x, t, cond, uncond):
    """The conditional and unconditional predictions of one batch, three ways."""
    return {
        "one B call": lambda: model(x, t, cond),
        "one 2B call": lambda: model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond])),
        "two B calls": lambda: (model(x, t, cond), model(x, t, uncond)),
    }


@torch.no_grad()
def crossover(model, repeats):
    """One model call on 2B rows against two on B, over batch sizes: where MAX_GUIDED_BATCH comes from."""
    print(f"crossover (MAX_GUIDED_BATCH = {MAX_GUIDED_BATCH}: one call while 2B <= it):")
    for batch in (250, 500, 750, 900, 1000, 1250, 1500, 2000):
        x, t = torch.randn(batch, 2), torch.full((batch,), 500)
        cond, uncond = torch.randint(0, 8, (batch,)), torch.full((batch,), model.null_label)
        calls = guided_calls(model, x, t, cond, uncond)
        times = {name: [] for name in calls}
        for _ in range(3 * repeats):
            for name, fn in calls.items():
                times[name].append(timed(fn))
        one, batched, two = (best(v) for v in times.values())
        print(f"  B = {batch:4d} (2B = {2 * batch:4d}): 2B call {batched / one:.2f}x, "
              f"two calls {two / one:.2f}x an unguided call -> {'2B' if batched <= two else 'two'} is faster")


def main(repeats: int = 7, sweep: bool = False) -> None:
    torch.manual_seed(0)
    model = ToyDenoiser(ToyDenoiserConfig()).eval()  # the chapters' toy model: width 96, 3 blocks
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ToyDenoiser ({n_params:,} parameters), batch {BATCH} 2-D points, {STEPS} steps, "
          f"fastest of {repeats} runs, torch threads {torch.get_num_threads()}, process CPU time")
    met = sampler_timings(model, repeats)
    model = ToyDenoiser(ToyDenoiserConfig(num_classes=8)).eval()  # the same with 8 labels + null
    for batch in GUIDED_BATCHES:
        met &= guidance_timings(model, batch, repeats)
    if sweep:
        crossover(model, repeats)
    print(f"all targets {verdict(met)}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 7, "--crossover" in sys.argv)
