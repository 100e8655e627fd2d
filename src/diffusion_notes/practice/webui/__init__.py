"""Part IV, Chapter 14: the Stable Diffusion web UI, rebuilt on the book's models.

    prompts       the web UI's prompt syntax: emphasis, prompt editing, alternation, AND
    conditioning  prompt -> token states (emphasis, 75-token chunks); the guided, composed model
    seeds         seed + i per image, variation seeds by slerp, per-image CPU noise; the sampling loop
    infotext      the `parameters` PNG chunk, written and parsed
    generate      txt2img, img2img and inpainting
    xyz           the X/Y/Z plot
    models        the checkpoints offered (the shipped UNet and the user's folder)
    merger        the Checkpoint Merger
    state, api, app   what the pages and the API share; the HTTP API; the Gradio pages
    launch        the state built from the shelf's models and the user's folders (`webui` command)
"""
