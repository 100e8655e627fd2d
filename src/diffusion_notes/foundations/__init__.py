"""Part I, Foundations (chapters 1-3): noise schedules, the forward process, samplers and guidance.

Imports only `device` and `nn/`. Modules: schedules, diffusion, sampler_steps, samplers, guidance,
oracle, toy2d.
"""
