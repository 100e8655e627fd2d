"""The shipped models load, verify, and still meet the targets their chapters quote.

These re-measure on fresh samples (not the manifest's own numbers), smaller than the
manifest's evaluation so the suite stays quick.
"""

import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.unclip.clip_eval import retrieval_recall, zero_shot_accuracy

pytestmark = pytest.mark.slow  # every test here loads shipped models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip():
    return pretrained.load("clip")


def test_shipped_names():
    assert {"clip", "shapes_classifier", "vae", "ldm_unet"} <= set(pretrained.available())


def test_autoencoder_reconstructs_held_out_images_above_30_db():
    from diffusion_notes.stable_diffusion.vae import psnr

    vae = pretrained.load("vae")
    x = ShapesDataset("heldout", 256, seed=5).images()  # other held-out images than the manifest's
    with torch.no_grad():
        values = psnr(x, vae.decode(vae.encode(x).mean))  # (256,)
    assert float(values.mean()) >= 30.0, float(values.mean())
    scale = pretrained.info("vae")["metrics"]["scale_factor"]
    with torch.no_grad():
        z = vae.encode(ShapesDataset("train", 256, seed=5).images()).sample(torch.Generator().manual_seed(1))
    assert abs(float((z * scale).std()) - 1.0) < 0.1  # the scale factor gives unit-variance latents


@pytest.mark.parametrize("split, target", [("train", 0.9), ("heldout", 0.7)])
def test_stable_diffusion_draws_what_prompts_ask_for(split, target):
    """The issue's targets: colour and shape both right for >= 90% of seen and >= 70% of held-out combinations.

    Fewer captions (96) and steps (15) than benchmarks/ldm_quality.py (500, 25), so a margin of 0.05
    for sampling noise; one-object captions must be right almost always, two-object ones (binding,
    Chapter 13) more often than not.
    """
    from diffusion_notes.stable_diffusion.evaluate import fidelity

    pipe, classifier = pretrained.load("stable_diffusion"), pretrained.load("shapes_classifier")
    f = fidelity(pipe, classifier, split, n=96, seed=11, num_inference_steps=15)
    assert f["colour_shape"] >= target - 0.05, f
    assert f["one_object/colour_shape"] >= 0.9, f
    assert f["two_objects/colour_shape"] >= 0.5, f


def test_clip_zero_shot_meets_the_targets_on_unseen_images(clip):
    acc = zero_shot_accuracy(clip, ShapesDataset("train", length=10**6, seed=7), n=300, attributes=("colour", "shape"))
    assert acc["colour"] >= 0.95, acc
    assert acc["shape"] >= 0.90, acc


def test_clip_retrieval_finds_the_caption_among_the_top_five(clip):
    recall = retrieval_recall(clip, ShapesDataset("train", length=10**6, seed=7), n=300, ks=(1, 5))
    assert recall["recall@5"] >= 0.9, recall
    assert recall["recall@1"] > 0.3, recall  # chance is 1/300


def test_clip_embeddings_are_unit_vectors_and_text_states_have_77_positions(clip):
    enc = clip.encode_text(["a small red circle on the left"])
    assert enc.token_states.shape[1] == 77
    assert torch.allclose(enc.z_t.norm(dim=-1), torch.ones(1), atol=1e-5)
    z_i = clip.encode_image(ShapesDataset("train", length=4, seed=7).images(0, 4))
    assert torch.allclose(z_i.norm(dim=-1), torch.ones(4), atol=1e-5)


# ----------------------------------------------------------------------------- unCLIP (Part II)

# Colour and shape right on 48 unseen captions at 15 decoder steps: the measured value (see the closing
# note of the unCLIP issue) less a margin for sampling noise.
FIDELITY_FLOOR = {("unclip", "latent"): 0.75, ("glide", "latent"): 0.75,  # shipped at 0.95 and 0.97 from true z_i
                  ("unclip", "pixel"): 0.15, ("glide", "pixel"): 0.15}  # the pixel cascades: 0.27 and 0.31

unclip_shipped = pytest.mark.skipif(
    not {"unclip_prior", "ar_prior", "unclip_decoder", "glide_decoder", "unclip_upsampler", "unclip_latent_decoder",
         "glide_latent_decoder", "vae"} <= set(pretrained.available()),
    reason="the unCLIP models are not shipped")


@pytest.fixture(scope="module")
def unclip_items():
    """48 pictures and captions no unCLIP model trained on (seed 5 of the training split)."""
    from diffusion_notes.unclip.conditions import build_bank

    return build_bank(pretrained.load("clip"), 48, seed=5, split="train", p_two_objects=0.3, progress=False)


@unclip_shipped
def test_pretrained_assembles_the_unclip_and_glide_pipelines():
    from diffusion_notes.unclip.pipeline import GLIDEPipeline, UnCLIPPipeline

    assert isinstance(pretrained.load("unclip"), UnCLIPPipeline)
    assert isinstance(pretrained.load("glide"), GLIDEPipeline)
    assert pretrained.load("unclip").latent and not pretrained.unclip(space="pixel").latent
    with pytest.raises(ValueError, match="space"):
        pretrained.glide(space="wavelet")


@unclip_shipped
def test_the_decoder_inverts_clip(unclip_items):
    """Pictures decoded from z_i alone have CLIP embeddings near z_i: far above another picture's z_i."""
    from diffusion_notes.data.shapes import render

    pipe = pretrained.load("unclip")
    x = render(unclip_items.attributes)
    with torch.no_grad():
        z_i = pipe.clip.encode_image(x)
        back = pipe.clip.encode_image(pipe.decode(z_i, num_inference_steps=15,
                                                  generator=torch.Generator().manual_seed(0)).images * 2 - 1)
    cos = back @ z_i.T  # (48, 48)
    own, shuffled = cos.diag().mean(), cos[torch.arange(48), torch.roll(torch.arange(48), 1)].mean()
    assert own > 0.8 and own - shuffled > 0.3, (float(own), float(shuffled))
    assert (cos.argmax(1) == torch.arange(48)).float().mean() > 0.3  # chance: 1/48


@unclip_shipped
def test_the_diffusion_prior_beats_using_the_caption_embedding_as_z_i(unclip_items):
    """The prior exists because z_t is not z_i: its samples must be closer to the true picture's z_i."""
    from diffusion_notes.unclip.conditions import null_text

    null = null_text(pretrained.load("clip", "cpu"))
    z = pretrained.load("unclip_prior", "cpu").sample(unclip_items.text, null=null, generator=torch.Generator().manual_seed(0))
    prior_cos = float((z * unclip_items.z_i).sum(-1).mean())
    text_cos = float((unclip_items.text.z_t * unclip_items.z_i).sum(-1).mean())
    assert prior_cos > text_cos + 0.005, (prior_cos, text_cos)


@unclip_shipped
def test_the_ar_prior_lands_near_the_true_embedding_but_behind_the_diffusion_prior(unclip_items):
    """Chapter 6's comparison: at the same budget the AR prior's samples are further from the true z_i."""
    from diffusion_notes.unclip.conditions import null_text

    options = {"ar_prior": {}, "unclip_prior": {"null": null_text(pretrained.load("clip", "cpu"))}}
    cos = {name: float((pretrained.load(name, "cpu").sample(unclip_items.text, generator=torch.Generator().manual_seed(0),
                                                            **options[name]) * unclip_items.z_i).sum(-1).mean())
           for name in ("ar_prior", "unclip_prior")}
    assert 0.85 < cos["ar_prior"] < cos["unclip_prior"], cos


@unclip_shipped
@pytest.mark.parametrize("name, space", [("unclip", "latent"), ("glide", "latent"), ("unclip", "pixel"), ("glide", "pixel")])
def test_unclip_and_glide_draw_what_the_caption_asks_for(unclip_items, name, space):
    from diffusion_notes.evaluation.metrics import prompt_fidelity

    pipe = getattr(pretrained, name)(space=space)
    images = pipe(unclip_items.captions, num_inference_steps=15, generator=torch.Generator().manual_seed(0)).images
    f = prompt_fidelity(images * 2 - 1, unclip_items.attributes, pretrained.load("shapes_classifier"))
    assert f["colour_shape"] >= FIDELITY_FLOOR[name, space], f


@unclip_shipped
def test_the_upsampler_is_about_as_good_as_bilinear_enlargement(unclip_items):
    from diffusion_notes.data.shapes import render
    from diffusion_notes.unclip.conditions import downsample, upsample
    from diffusion_notes.unclip.pipeline import upsample_images

    real = render(unclip_items.attributes)
    low = downsample(real)
    out = upsample_images(pretrained.load("unclip_upsampler"), low, generator=torch.Generator().manual_seed(0))

    def mse(a):
        return float(((a.clamp(-1, 1) - real) ** 2).mean())

    # about as good as bilinear by PSNR (Chapter 7: 28.4 against 28.1 dB on 64 pictures; 4.7% more MSE on these 48)
    assert mse(out) < 1.1 * mse(upsample(low)), (mse(out), mse(upsample(low)))
    assert float((out - upsample(low)).abs().mean()) > 0.003  # and it does add something to the bilinear picture


@pytest.mark.parametrize("name", ["lcm_unet", "lcm"])
def test_the_lcm_students_draw_seen_captions_in_4_steps(name):
    """Chapter 18's target: the LCM student at 4 steps right for >= 90% of seen captions (guidance 1).

    96 captions (seed 11) rather than the benchmark's 500, so a margin of 0.05, as above; the LCM-LoRA
    ("lcm") is applied to the shipped UNet. One step must still be worse than four: distillation, not luck.
    """
    from contextlib import nullcontext

    from diffusion_notes.practice.finetune.lora_files import applied
    from diffusion_notes.stable_diffusion.evaluate import fidelity
    from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

    base, classifier = pretrained.load("stable_diffusion"), pretrained.load("shapes_classifier")
    if name == "lcm_unet":
        pipe, context = LatentDiffusionPipeline(pretrained.load(name), base.vae, base.clip, base.scale_factor), nullcontext()
    else:
        pipe, context = base, applied(base.unet, [(pretrained.load(name), 1.0)])
    with context:
        four = fidelity(pipe, classifier, "train", n=96, seed=11, num_inference_steps=4, sampler="lcm",
                        guidance_scale=1.0)
        one = fidelity(pipe, classifier, "train", n=96, seed=11, num_inference_steps=1, sampler="lcm",
                       guidance_scale=1.0)
    assert four["colour_shape"] >= 0.9 - 0.05, four
    assert one["colour_shape"] < four["colour_shape"], (one, four)


def test_the_flow_model_draws_seen_captions_in_8_euler_steps():
    """The flow model (Chapter 18) at 8 Euler steps on the uniform grid, guided at 4: right for >= 90% - 0.05."""
    from diffusion_notes.fewer_steps.pipeline import FlowPipeline
    from diffusion_notes.stable_diffusion.evaluate import fidelity

    base, classifier = pretrained.load("stable_diffusion"), pretrained.load("shapes_classifier")
    flow = FlowPipeline(pretrained.load("flow_unet"), base.vae, base.clip, base.scale_factor)
    f = fidelity(flow, classifier, "train", n=96, seed=11, num_inference_steps=8, guidance_scale=4.0, grid="uniform")
    assert f["colour_shape"] >= 0.9 - 0.05, f
