"""Part III, Stable Diffusion (chapters 9-13): the autoencoder, latent diffusion and the text-to-image pipeline.

Imports what Part II may import, and never Part II itself: the pipeline receives its CLIP. Modules:
vae, ldm, pipeline, evaluate, cost.
"""
