"""Chapter 16: teaching the shipped Stable Diffusion a new concept from six pictures.

    concept         the heart: six instance pictures, held-out prompts, fidelity and drift
    lora            LoRALinear, inject / merge / unmerge: h = W0 x + (alpha / r) B A x
    lora_files      LoRANetwork, kohya and diffusers files, conversion, checks, `applied` at a weight
    peft_interop    the same LoRA through peft's LoraConfig
    learner         ConceptLearner: textual inversion, LoRA and DreamBooth, the prior-preservation loss;
                    shipped_result, what a shipped fine-tuning run adds, from its tensors
"""
