"""How fast are our samplers? Our sampling loop against a loop over diffusers' schedulers, and guided
against unguided sampling. Prints medians over repeats and their ratios, on one CPU thread.

Targets: ours within 1.05x of diffusers' loop for each sampler; a guided step at most 2.05x an
unguided one (the two predictions come from ONE model call on 2B examples). Guided steps are
timed at two batch sizes and against guidance by two separate calls: on a CPU a 2B call of this
MLP can cost more than two B calls once its activations outgrow the cache (measured here: about
1.8x at B = 500 but 2.8x at B = 2000, where two calls cost 1.9x).

Run: python benchmarks/samplers.py [repeats]
"""

import statistics
import sys
import time

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.guidance import cfg_combine
from diffusion_notes.foundations.samplers import sample
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig

torch.set_num_threads(1)

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
BATCH, STEPS = 2000, 25


def ours(model, sampler):
    sample(model, (BATCH, 2), sampler=sampler, num_inference_steps=STEPS, schedule=make_schedule("linear"),
           generator=make_generator(0), clip_x0=1.0 if sampler in ("ddpm", "ddim") else None)


def theirs(model, sampler):
    """diffusers' pipeline loop (default configuration), with the same model and batch."""
    scheduler = SCHEDULERS[sampler]()
    scheduler.set_timesteps(STEPS)
    g = make_generator(0)
    x = randn((BATCH, 2), g) * scheduler.init_noise_sigma
    takes_generator = sampler in ("ddpm", "euler_a")
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = model(model_input, t.expand(BATCH))
        kwargs = dict(generator=g) if takes_generator else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@torch.no_grad()
def main(repeats: int = 7) -> None:
    torch.manual_seed(0)
    model = ToyDenoiser(ToyDenoiserConfig()).eval()  # the chapters' toy model: width 96, 3 blocks
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ToyDenoiser ({n_params:,} parameters), batch {BATCH} 2-D points, {STEPS} steps, "
          f"median of {repeats} runs, torch threads {torch.get_num_threads()}")
    print(f"{'sampler':10s} {'ours (s)':>9s} {'diffusers (s)':>14s} {'ratio':>7s}   "
          f"loop alone, model = zeros (us/step): ours, diffusers")
    zeros = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    for sampler in SCHEDULERS:
        ours(model, sampler), theirs(model, sampler)  # warm up
        times = {"ours": [], "theirs": [], "ours_loop": [], "theirs_loop": []}
        for _ in range(repeats):  # interleaved, so a busy moment hits both
            times["ours"].append(timed(ours, model, sampler))
            times["theirs"].append(timed(theirs, model, sampler))
            times["ours_loop"].append(timed(ours, zeros, sampler))
            times["theirs_loop"].append(timed(theirs, zeros, sampler))
        a, b, c, d = (statistics.median(v) for v in times.values())
        print(f"{sampler:10s} {a:9.3f} {b:14.3f} {a / b:7.3f}x   {1e6 * c / STEPS:6.0f} {1e6 * d / STEPS:6.0f}")

    model = ToyDenoiser(ToyDenoiserConfig(num_classes=8)).eval()  # the same with 8 labels + null
    for batch in (500, BATCH):
        guidance_timings(model, batch, repeats)


def guidance_timings(model, batch, repeats):
    cond = torch.randint(0, 8, (batch,), generator=make_generator(1))
    uncond = torch.full((batch,), model.null_label)

    def two_calls(x_t, t):  # guidance without batching, for comparison
        return cfg_combine(model(x_t, t, uncond), model(x_t, t, cond), 4.0)

    kwargs = dict(sampler="ddim", num_inference_steps=STEPS, generator=make_generator(0))
    variants = {
        "unguided": lambda: sample(model, (batch, 2), cond=cond, **kwargs),
        "guided, one 2B call": lambda: sample(model, (batch, 2), cond=cond, uncond=uncond, guidance_scale=4.0,
                                              **kwargs),
        "guided, two B calls": lambda: sample(two_calls, (batch, 2), **kwargs),
    }
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn) / STEPS)
    base = statistics.median(times["unguided"])
    for name, values in times.items():
        step = statistics.median(values)
        print(f"batch {batch:4d}, one DDIM step, {name:20s} {1e3 * step:6.2f} ms  "
              f"ratio to unguided {step / base:.3f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
