"""practice/checkpoints/bridge: the book's pipeline on a diffusers SD 1.x pipeline (a tiny random one stands in for real weights)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import pytest
import torch

from diffusion_notes.practice.checkpoints.bridge import from_diffusers, missing_weights_message
from diffusion_notes.practice.checkpoints.compare import SAMPLERS, diffusers_images
from diffusion_notes.practice.checkpoints.export import clip_tokenizer

PROMPT, NEGATIVE = "a small red circle on the left", "a blue square"


def tiny_pipeline(prediction_type="epsilon"):
    """SD v1's layout at toy widths, randomly initialised (GEGLU, 8 heads of 4, pads with the end token as SD 1)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    tokenizer = clip_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"  # SD 1.x's tokenizer pads with the end token
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny") / "sd"
    tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd(folder):
    return from_diffusers(folder, device="cpu")


@pytest.mark.parametrize("sampler", [*SAMPLERS, "lcm"])
def test_our_samplers_give_diffusers_pixels(sd, sampler):
    ours = sd(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=6, guidance_scale=7.5, sampler=sampler,
              generator=torch.Generator().manual_seed(3)).images
    theirs = diffusers_images(sd.diffusers_pipeline, PROMPT, sampler, sd.schedule, steps=6, guidance_scale=7.5,
                              seed=3, negative_prompt=NEGATIVE)
    assert ours.shape == theirs.shape == (1, 3, 16, 16)
    assert (ours - theirs).abs().max() <= 1e-4


def test_lcm_maps_to_lcm_scheduler_and_the_web_uis_lcm_to_none(sd):
    """Our "lcm" is diffusers' LCMScheduler on our betas; the web UI's "LCM" (k-diffusion's grid) has no equal."""
    from diffusion_notes.practice.checkpoints.schedulers import diffusers_scheduler

    scheduler = diffusers_scheduler("lcm", sd.schedule)
    assert type(scheduler).__name__ == "LCMScheduler" and scheduler.config.clip_sample is False
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), sd.schedule.alphas_cumprod, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="no diffusers scheduler that steps as it does"):
        diffusers_scheduler("LCM", sd.schedule)


def test_the_prompt_is_encoded_with_the_pipelines_own_tokenizer(sd):
    states = sd.encode_prompt([PROMPT, ""])
    theirs, _ = sd.diffusers_pipeline.encode_prompt([PROMPT, ""], "cpu", 1, False)
    torch.testing.assert_close(states, theirs)
    ids = sd.tokenizer("", padding="max_length", max_length=77).input_ids
    assert ids[:3] == [49406, 49407, 49407]  # SD 1.x pads with the end token


def test_the_trace_decodes_every_step(sd):
    seen = []
    out = sd(PROMPT, num_inference_steps=5, sampler="euler_a", generator=torch.Generator().manual_seed(0),
             callback=lambda i, t, z_t, z0_hat: seen.append((i, sd.decode_latents(z0_hat))))
    assert [i for i, _ in seen] == list(range(5))
    assert all(image.shape == (1, 3, 16, 16) and 0 <= image.min() and image.max() <= 1 for _, image in seen)
    assert out.latents.shape == (1, 4, 8, 8)


@torch.no_grad()
def test_attention_maps_come_through_diffusers_processors(sd):
    context = sd.encode_prompt([PROMPT, ""])  # (2, 77, 32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500, 500])
    eps, maps = sd.unet(x, t, context, return_attention=True)
    assert list(maps) == ["down_blocks.0.attentions.0", "mid_block.attentions.0",
                          "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    cross = maps["down_blocks.0.attentions.0"]["cross"]
    assert cross.shape == (2, 8, 64, 77) and maps["mid_block.attentions.0"]["self"].shape == (2, 8, 16, 16)
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 8, 64))
    torch.testing.assert_close(eps, sd.unet(x, t, context), rtol=1e-5, atol=1e-5)  # recording changes nothing
    assert all(type(p).__name__ != "AttentionRecorder" for p in sd.unet.unet.attn_processors.values())


def test_image_to_image_runs(sd):
    start = sd(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    same = sd(PROMPT, image=start, strength=0.0, num_inference_steps=4).images
    edit = sd("a large green star", image=start, strength=0.5, num_inference_steps=4,
              generator=torch.Generator().manual_seed(1)).images
    assert same.shape == edit.shape == (1, 3, 16, 16)
    assert (edit - same).abs().max() > 0


def test_v_prediction_is_turned_into_eps():
    pipe = tiny_pipeline("v_prediction")
    bridge = from_diffusers(pipe)
    for sampler in ("ddim", "euler_a"):  # integer timesteps, and Euler's fractional ones
        ours = bridge(PROMPT, num_inference_steps=5, guidance_scale=4.0, sampler=sampler,
                      generator=torch.Generator().manual_seed(0)).images
        theirs = diffusers_images(pipe, PROMPT, sampler, bridge.schedule, steps=5, guidance_scale=4.0, seed=0,
                                  prediction_type="v_prediction")
        assert (ours - theirs).abs().max() <= 1e-4, sampler


def test_a_folder_without_weights_says_where_it_looked_and_what_to_put_there(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        from_diffusers(empty)
    message = str(err.value)
    assert str(empty.resolve()) in message and "model_index.json" in message and "unet/" in message
    assert "--format diffusers" in message and "Nothing is downloaded" in message
    assert "does not exist" in missing_weights_message(tmp_path / "nowhere")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="from_single_file"):
        from_diffusers(tmp_path / "model.safetensors")
