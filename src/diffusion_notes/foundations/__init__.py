"""Part I, Foundations (chapters 1-3): noise schedules, the forward process, samplers and guidance.

Imports only `device` and `nn/`. Modules: schedules, sigmas, diffusion, grids, samplers (a package:
`base` holds the `Sampler` registry, one module per sampler registers itself), guidance, oracle, toy2d.
"""
