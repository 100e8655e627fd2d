"""Part V: fewer steps. Latent consistency distillation (a whole student and a LoRA) and flow matching.

    consistency  the consistency function, the guided teacher's DDIM step, the distillation loss
    flow         the straight path, the flow-matching loss, Euler on the flow ODE
    students     the distilled UNet with its EMA target, and the LCM-LoRA
    pipeline     text to image with a flow-matching UNet
"""
