"""Chapter 15: checkpoint files, our model in diffusers' formats, and the book's tools on real Stable Diffusion weights.

- `anatomy`: a safetensors header read by hand, what a pickle would import, float16 storage
- `to_diffusers`: our UNet, autoencoder and text tower as diffusers' and transformers' classes
- `sd_keys`: diffusers' names -> an SD v1 single file's (model.diffusion_model., first_stage_model., ...)
- `schedulers`: our samplers as diffusers' schedulers and back
- `export`: write the diffusers folder and the single file (the `export` command)
- `compare`: our pictures against diffusers' for the same prompt, seed, sampler and steps
- `bridge`: `from_diffusers(pipe_or_folder)`, our pipeline on any diffusers SD 1.x pipeline
"""
