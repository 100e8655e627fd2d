"""ldm.py: SD's schedule against diffusers, L_LDM's caption dropout, the training batches.

Tests that use the frozen parts (the shipped "vae" and "clip", passed in as arguments)
skip when those weights are not shipped. They check the contract only, never
trained-quality numbers, so they pass with provisional weights too.
"""

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.data.tokenizer import END_ID, START_ID
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.stable_diffusion import ldm
from diffusion_notes.stable_diffusion.ldm import (
    P_TWO_OBJECTS_TRAIN,
    P_UNCOND,
    encode_latents,
    ldm_batch,
    ldm_loss,
    ldm_schedule,
    null_context,
)
from diffusion_notes.training import frozen
from diffusion_notes.training.recipes import get_recipe

needs_frozen_parts = pytest.mark.skipif(
    not {"vae", "clip"} <= set(pretrained.available()),
    reason="needs the shipped 'vae' and 'clip' weights (during development: DIFFUSION_NOTES_WEIGHTS=/tmp/weights_dev)",
)


class Recorder(nn.Module):
    """A stand-in eps model: a fixed function of (z_t, t, context) that records what it was given."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, t, context):
        self.calls.append((x.clone(), t.clone(), context.clone()))
        return self.weight * x + 1e-3 * t.view(-1, 1, 1, 1) + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def fake_batch(B: int, seed: int, width: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"z0": torch.randn(B, 4, 8, 8, generator=g), "context": torch.randn(B, 77, width, generator=g)}


@pytest.fixture(scope="module")
def parts():
    sd = frozen.stable_diffusion("cpu")
    return sd["vae"], sd["clip"], sd["scale_factor"]


def test_ldm_schedule_is_stable_diffusions():
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    schedule = ldm_schedule()
    assert schedule.num_train_timesteps == 1000
    torch.testing.assert_close(schedule.betas.float(), ref.betas, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


@needs_frozen_parts
def test_frozen_parts_are_frozen_and_carry_the_manifest_scale(parts):
    vae, clip, scale_factor = parts
    assert not any(p.requires_grad for p in vae.parameters())
    assert not any(p.requires_grad for p in clip.parameters())
    assert scale_factor == pretrained.info("vae")["metrics"]["scale_factor"] > 0
    assert frozen.stable_diffusion("cpu")["vae"] is vae  # built once per process and device


@needs_frozen_parts
def test_null_context_is_the_empty_captions_states(parts):
    _, clip, _ = parts
    null = null_context(clip)
    assert null.shape == (77, clip.encode_text(["a red circle"]).token_states.shape[-1])
    ids = torch.zeros(1, 77, dtype=torch.long)
    ids[0, :2] = torch.tensor([START_ID, END_ID])  # "" = start, end, padding
    torch.testing.assert_close(null, clip.encode_text(ids).token_states[0])
    assert not torch.allclose(null, clip.encode_text(["a small red circle on the left"]).token_states[0])


@needs_frozen_parts
def test_caption_dropout_replaces_about_ten_percent_of_rows(parts):
    _, clip, _ = parts
    null = null_context(clip)
    model, g = Recorder(), torch.Generator().manual_seed(0)
    dropped = total = 0
    for k in range(10):
        batch = fake_batch(500, k, null.shape[-1])
        ldm_loss(model, batch, g, null=null)
        seen = model.calls[-1][2]  # (B, 77, D_c)
        is_null = (seen == null).flatten(1).all(1)
        kept = ~is_null
        assert torch.equal(seen[kept], batch["context"][kept])  # the other rows untouched
        dropped, total = dropped + int(is_null.sum()), total + len(is_null)
    assert P_UNCOND == 0.1
    assert abs(dropped / total - 0.1) < 0.02, dropped / total  # 5000 rows: standard error 0.004


@needs_frozen_parts
def test_ldm_loss_without_dropout_is_the_noise_prediction_loss(parts):
    """With p_uncond = 0, L_LDM is DDPM's loss on the latents with the schedule of SD.

    ldm_loss draws the B dropout uniforms first, whatever p_uncond is, so the
    t and noise that follow (and the noised latents) do not depend on p_uncond.
    """
    _, clip, _ = parts
    batch = fake_batch(6, 1, null_context(clip).shape[-1])
    model = Recorder()
    null = null_context(clip)
    got = ldm_loss(model, batch, torch.Generator().manual_seed(3), null=null, p_uncond=0.0)
    assert torch.equal(model.calls[-1][2], batch["context"])
    g = torch.Generator().manual_seed(3)
    torch.rand(6, generator=g)  # the dropout draw
    expected = noise_prediction_loss(model, batch["z0"], ldm_schedule(), generator=g, cond=batch["context"])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # same z_t and t with caption dropout on
    ldm_loss(model, batch, torch.Generator().manual_seed(3), null=null, p_uncond=1.0)
    assert torch.equal(model.calls[-1][0], model.calls[0][0]) and torch.equal(model.calls[-1][1], model.calls[0][1])
    assert (model.calls[-1][2] == null_context(clip)).all()
    got.backward()
    assert model.weight.grad is not None


@needs_frozen_parts
def test_ldm_batch_shapes_and_purity(parts):
    vae, clip, scale_factor = parts
    frozen_parts = dict(vae=vae, clip=clip, scale_factor=scale_factor)
    a, b = ldm_batch(2, 4, **frozen_parts), ldm_batch(2, 4, **frozen_parts)
    assert a["z0"].shape == (4, 4, 8, 8)
    assert a["context"].shape == (4, 77, null_context(clip).shape[-1])
    assert torch.equal(a["z0"], b["z0"]) and torch.equal(a["context"], b["context"])
    c = ldm_batch(3, 4, **frozen_parts)
    assert not torch.equal(a["z0"], c["z0"]) and not torch.equal(a["context"], c["context"])
    # batch 2 holds training items 8..11 of the two-object-rich mix: their captions' token states,
    # and posterior samples of their latents
    dataset = ShapesDataset("train", 16, seed=0, p_two_objects=P_TWO_OBJECTS_TRAIN)
    captions = [dataset[i]["caption"] for i in range(8, 12)]
    torch.testing.assert_close(a["context"], clip.encode_text(captions).token_states)
    with torch.no_grad():
        posterior = vae.encode(dataset.images(8, 12))
    within = (a["z0"] / scale_factor - posterior.mean).abs() <= 6 * posterior.std + 1e-5
    assert within.all()


@needs_frozen_parts
def test_encode_latents_scales_a_posterior_sample(parts):
    vae, _, scale_factor = parts
    images = ShapesDataset("train", 3, seed=2).images()
    z = encode_latents(vae, images, scale_factor, torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = vae.encode(images).sample(torch.Generator().manual_seed(4)) * scale_factor
    assert z.shape == (3, 4, 8, 8)
    torch.testing.assert_close(z, expected)


@needs_frozen_parts
def test_ldm_unet_recipe_uses_the_ldm_objective_with_the_shipped_parts(parts):
    from diffusion_notes.nn.unet import UNet

    vae, clip, scale_factor = parts
    recipe = get_recipe("ldm_unet")
    assert isinstance(recipe.build(recipe.config), UNet)
    batch = recipe.make_batch(2, 4, 0)
    expected = ldm_batch(2, 4, 0, vae=vae, clip=clip, scale_factor=scale_factor)
    assert all(torch.equal(batch[k], expected[k]) for k in ("z0", "context"))
    model = Recorder()
    got = recipe.loss(model, batch, torch.Generator().manual_seed(1))
    want = ldm_loss(model, batch, torch.Generator().manual_seed(1), null=null_context(clip))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_ldm_recipe_binds_its_frozen_parts_on_the_training_device(monkeypatch):
    """The autoencoder and CLIP that encode a batch live on the device the recipe was made for."""
    asked = []
    cpu_parts = frozen.stable_diffusion.__wrapped__

    def spy(device="cpu"):
        asked.append(device)
        return cpu_parts("cpu")  # the test machine's only device stands in for the accelerator

    monkeypatch.setattr(frozen, "stable_diffusion", spy)
    recipe = get_recipe("ldm_unet", device="cuda:0")
    assert asked == []  # nothing is loaded until a batch is asked for
    recipe.make_batch(0, 2, 0)
    assert asked == ["cuda:0"]


@needs_frozen_parts
def test_the_ldm_recipe_encodes_the_empty_caption_once_per_run(parts, monkeypatch):
    _, clip, _ = parts
    recipe = get_recipe("ldm_unet")
    batch = recipe.make_batch(0, 4, 0)
    calls = []
    original = type(clip).encode_text

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    frozen.null_context.cache_clear()
    monkeypatch.setattr(type(clip), "encode_text", counting)
    model = Recorder()
    for step in range(5):
        recipe.loss(model, batch, torch.Generator().manual_seed(step))
    assert len(calls) == 1, f"tau('') was encoded {len(calls)} times in 5 steps"


def test_the_mix_ablation_differs_from_the_shipped_recipe_only_in_its_two_object_share(monkeypatch):
    from diffusion_notes.training.recipes import get_recipe

    shipped, ablation = get_recipe("ldm_unet"), get_recipe("ldm_unet_mix30")
    same = ("config", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay")
    assert all(getattr(shipped, k) == getattr(ablation, k) for k in same)
    assert "half of the images" in shipped.dataset and "30% of the images" in ablation.dataset
    seen = []

    class Recording(ShapesDataset):  # what the batches are drawn from
        def __init__(self, *args, p_two_objects, **kwargs):
            seen.append(p_two_objects)
            super().__init__(*args, p_two_objects=p_two_objects, **kwargs)

    monkeypatch.setattr(ldm, "ShapesDataset", Recording)
    for recipe in (shipped, ablation):
        assert recipe.make_batch(0, 2, 0)["z0"].shape == (2, 4, 8, 8)
    assert seen == [0.5, 0.3]
