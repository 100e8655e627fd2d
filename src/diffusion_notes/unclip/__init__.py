"""Part II, DALL-E 2 (chapters 4-8): CLIP, the priors, the decoder and the unCLIP and GLIDE pipelines.

Imports Part I, `nn/`, `data/`, `device`, `evaluation/` and `viz`; never Part III, `pretrained` or
`training/`: the frozen CLIP (and the classifier of an evaluation) are arguments. Modules: clip,
clip_eval, bridges, conditions, prior, ar_prior, decoder, pipeline, evaluate.
"""
