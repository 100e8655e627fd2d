"""Part IV, Stable Diffusion in practice: the web UI, checkpoint files, LoRA, ControlNet and fine-tuning.

Its modules arrive with their chapters. They may import Parts I-III and everything below them, never
`pretrained` or `training/`.
"""
