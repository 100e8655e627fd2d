"""unCLIP's parts: the training bank, both priors, the decoder's two changes to GLIDE, the upsampler, slerp,
and the pipelines' contracts (with small untrained models; trained quality is in test_shipped_models.py)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_notes import pretrained
from diffusion_notes.foundations.diffusion import q_sample, x0_from_eps
from diffusion_notes.unclip.ar_prior import ARPrior, ARPriorConfig, ar_prior_loss
from diffusion_notes.unclip.conditions import (
    N_TOKENS,
    TextConditions,
    bank_indices,
    build_bank,
    downsample,
    drop_text,
    embed_scale,
    encode_text,
    null_text,
    upsample,
)
from diffusion_notes.unclip.decoder import (
    Decoder,
    DecoderConfig,
    Upsampler,
    UpsamplerConfig,
    augment_low_res,
    decoder_loss,
    drop_image_embedding,
    slerp,
    upsampler_loss,
)
from diffusion_notes.unclip.pipeline import GLIDEPipeline, UnCLIPPipeline
from diffusion_notes.unclip.prior import (
    DiffusionPrior,
    EpsFromX0,
    PriorConfig,
    prior_loss,
    prior_schedule,
)

pytestmark = pytest.mark.skipif("clip" not in pretrained.available(), reason="needs the shipped 'clip'")
torch.set_num_threads(1)


@functools.cache
def frozen_clip():
    """The shipped CLIP on the CPU, frozen: the part every unCLIP model reads (passed in, never fetched)."""
    return pretrained.load("clip", "cpu").requires_grad_(False)

SMALL_PRIOR = PriorConfig(width=32, layers=2, heads=2)
SMALL_AR = ARPriorConfig(width=32, layers=2, heads=2, n_components=6, n_bins=8)
SMALL_DECODER = DecoderConfig(channels=(16, 32), attention=(False, True), heads=2)
SMALL_UPSAMPLER = UpsamplerConfig(channels=(8, 16))


@pytest.fixture(scope="module")
def bank():
    return build_bank(frozen_clip(), 96, seed=3, progress=False)


def batch_of(bank, n=8):
    return {"images": None, "z_i": bank.z_i[:n], "z_t": bank.text.z_t[:n], "tokens": bank.text.tokens[:n],
            "mask": bank.text.mask[:n]}


def text_of(bank, n=4):
    return TextConditions(bank.text.z_t[:n], bank.text.tokens[:n], bank.text.mask[:n])


# ----------------------------------------------------------------------------- data


def test_bank_holds_unit_embeddings_and_masks_that_end_at_the_end_token(bank):
    assert bank.z_i.shape == (96, 64) and bank.text.tokens.shape == (96, N_TOKENS, 128)
    assert torch.allclose(bank.z_i.norm(dim=-1), torch.ones(96), atol=1e-5)
    assert torch.allclose(bank.text.z_t.norm(dim=-1), torch.ones(96), atol=1e-5)
    again = encode_text(frozen_clip(), bank.captions[:3])
    assert torch.allclose(again.z_t, bank.text.z_t[:3], atol=1e-6)
    from diffusion_notes.data.tokenizer import tokenize

    lengths = tokenize(bank.captions).argmax(-1) + 1  # through the end token
    assert torch.equal(bank.text.mask.sum(1), lengths)
    assert (bank.z_i * bank.text.z_t).sum(-1).mean() > 0.5  # CLIP put matching pairs close


def test_bank_indices_walk_a_new_permutation_each_pass():
    rows = torch.cat([bank_indices(s, 4, seed=0, n=12) for s in range(6)])  # two passes over 12 rows
    assert sorted(rows[:12].tolist()) == list(range(12)) and sorted(rows[12:].tolist()) == list(range(12))
    assert not torch.equal(rows[:12], rows[12:])
    assert torch.equal(bank_indices(2, 4, 0, 12), rows[8:12])  # a pure function of the step


def test_downsample_averages_blocks_and_upsample_restores_the_size():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    low = downsample(x, 2)
    assert torch.allclose(low[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert upsample(torch.rand(2, 3, 16, 16)).shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- diffusion prior


def test_prior_predicts_an_embedding_and_ignores_padding_tokens(bank):
    torch.manual_seed(0)
    prior = DiffusionPrior(SMALL_PRIOR).eval()
    cond = {k: v for k, v in batch_of(bank, 4).items() if k in ("z_t", "tokens", "mask")}
    x = torch.randn(4, 64)
    t = torch.tensor([10, 200, 500, 900])
    out = prior(x, t, cond)
    assert out.shape == (4, 64)
    padded = dict(cond, tokens=torch.where(cond["mask"][..., None], cond["tokens"], torch.randn_like(cond["tokens"])))
    assert torch.allclose(prior(x, t, padded), out, atol=1e-5)  # padding is never attended to
    real = dict(cond, tokens=cond["tokens"] + 0.5 * cond["mask"][..., None])
    assert not torch.allclose(prior(x, t, real), out, atol=1e-3)  # real tokens are
    assert not torch.allclose(prior(x + 1, t, cond), out, atol=1e-3)
    assert not torch.allclose(prior(x, t + 50, cond), out, atol=1e-3)


def test_prior_is_causal_only_the_last_position_reads_everything(bank):
    prior = DiffusionPrior(SMALL_PRIOR).eval()
    cond = {k: v for k, v in batch_of(bank, 2).items() if k in ("z_t", "tokens", "mask")}
    mask = prior.attention_mask(cond["mask"])  # (B, 1, L, L)
    L = N_TOKENS + 4
    assert mask.shape == (2, 1, L, L)
    assert mask[:, 0, -1, :].sum(-1).tolist() == (cond["mask"].sum(1) + 4).tolist()  # the query sees all real inputs
    assert not mask[:, 0].triu(1).any()  # nothing sees the future


def test_drop_text_replaces_the_whole_caption_with_the_empty_one(bank):
    cond = {k: v for k, v in batch_of(bank, 8).items() if k in ("z_t", "tokens", "mask")}
    null = null_text(frozen_clip())
    dropped = drop_text(cond, 1.0, null)
    assert torch.equal(dropped["z_t"], null.z_t.expand(8, -1)) and torch.equal(dropped["mask"], null.mask.expand(8, -1))
    assert all(torch.equal(drop_text(cond, 0.0, null)[k], cond[k]) for k in cond)
    half = drop_text(cond, 0.5, null, torch.Generator().manual_seed(0))
    rows = (half["z_t"] != cond["z_t"]).any(-1)
    assert torch.equal(rows, (half["tokens"] != cond["tokens"]).flatten(1).any(-1))  # together, per row
    assert torch.equal(rows, torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.5)


def test_prior_loss_asks_for_z_i_itself_not_the_noise(bank):
    """L_prior by hand: the same draws (drop, t, noise) from the same generator, the target is scaled z_i."""
    prior = DiffusionPrior(SMALL_PRIOR)
    batch = batch_of(bank, 8)
    loss = prior_loss(prior, batch, torch.Generator().manual_seed(5), null=null_text(frozen_clip()), p_uncond=0.1)
    g = torch.Generator().manual_seed(5)
    cond = drop_text({k: batch[k] for k in ("z_t", "tokens", "mask")}, 0.1, null_text(frozen_clip()), g)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 64, generator=g)
    x0 = batch["z_i"] * embed_scale(64)
    expected = F.mse_loss(prior(q_sample(x0, t, noise, prior_schedule()), t, cond), x0)
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, F.mse_loss(prior(q_sample(x0, t, noise, prior_schedule()), t, cond), noise))


def test_eps_from_x0_hands_the_samplers_the_noise_that_gives_back_x0():
    schedule = prior_schedule()
    target = torch.randn(3, 64)
    wrapped = EpsFromX0(lambda x, t, c: target, schedule)
    x_t, t = torch.randn(3, 64), torch.tensor([5, 400, 990])
    assert torch.allclose(x0_from_eps(x_t, t, wrapped(x_t, t, None), schedule), target, atol=1e-4)


def test_sample_prior_keeps_the_candidate_with_the_larger_dot_product(bank):
    torch.manual_seed(0)
    prior = DiffusionPrior(SMALL_PRIOR)
    text = text_of(bank, 3)
    best, candidates, scores = prior.sample(text, num_inference_steps=4, num_candidates=2, null=null_text(frozen_clip()),
                                            generator=torch.Generator().manual_seed(0), return_candidates=True)
    assert best.shape == (3, 64) and candidates.shape == (3, 2, 64) and scores.shape == (3, 2)
    assert torch.allclose(best.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(scores, (candidates * text.z_t[:, None]).sum(-1))
    for b in range(3):
        assert torch.equal(best[b], candidates[b, scores[b].argmax()])
    with pytest.raises(ValueError, match="num_candidates"):
        prior.sample(text, num_candidates=0, null=null_text(frozen_clip()))
    with pytest.raises(ValueError, match="null_text"):
        prior.sample(text, num_inference_steps=2)  # guidance needs the empty caption of the same CLIP


# ----------------------------------------------------------------------------- autoregressive prior


def test_ar_prior_codes_round_trip_through_pca_and_buckets(bank):
    prior = ARPrior(ARPriorConfig(width=32, layers=1, heads=2))  # 16 components, 64 buckets
    with pytest.raises(ValueError, match="fit"):
        prior.encode(bank.z_i)
    prior.fit(bank.z_i)
    codes = prior.encode(bank.z_i)
    assert codes.shape == (96, 16) and codes.min() >= 0 and codes.max() < 64
    back = prior.decode(codes)
    assert (back * bank.z_i).sum(-1).mean() > 0.95
    assert torch.allclose(prior.pca_components @ prior.pca_components.T, torch.eye(16), atol=1e-4)
    assert (prior.pca_variance[:-1] >= prior.pca_variance[1:]).all()  # the most informative first


def test_ar_prior_is_trained_by_teacher_forcing_and_never_sees_the_code_it_predicts(bank):
    torch.manual_seed(0)
    prior = ARPrior(SMALL_AR).eval()
    prior.fit(bank.z_i)
    batch = batch_of(bank, 4)
    cond = {k: batch[k] for k in ("z_t", "tokens", "mask")}
    codes = prior.encode(batch["z_i"])  # (4, 6)
    logits = prior(codes, cond)
    assert logits.shape == (4, 6, 8)
    changed = codes.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 8
    other = prior(changed, cond)
    assert torch.allclose(other[:, :4], logits[:, :4], atol=1e-5)  # logits for codes 1..4 do not see code 4
    assert not torch.allclose(other[:, 4:], logits[:, 4:], atol=1e-4)
    expected = F.cross_entropy(logits.reshape(-1, 8), codes.reshape(-1))
    assert torch.allclose(ar_prior_loss(prior, batch), expected, atol=1e-6)


def test_ar_prior_samples_unit_embeddings_and_keeps_the_best_candidate(bank):
    torch.manual_seed(0)
    prior = ARPrior(SMALL_AR)
    prior.fit(bank.z_i)
    text = text_of(bank, 3)
    best, candidates, scores = prior.sample(text, num_candidates=3, return_candidates=True,
                                               generator=torch.Generator().manual_seed(0))
    assert best.shape == (3, 64) and candidates.shape == (3, 3, 64)
    assert torch.allclose(best.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert all(torch.equal(best[b], candidates[b, scores[b].argmax()]) for b in range(3))
    again = prior.sample(text, num_candidates=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(best, again)


def test_both_priors_take_one_call(bank):
    """The pipeline's call, with the diffusion prior's options: the AR prior draws what its own call draws."""
    torch.manual_seed(0)
    ar, diffusion = ARPrior(SMALL_AR), DiffusionPrior(SMALL_PRIOR).eval()
    ar.fit(bank.z_i)
    text, null = text_of(bank, 3), null_text(frozen_clip())
    call = dict(null=null, num_candidates=2, num_inference_steps=3, guidance_scale=2.0)
    for prior in (ar, diffusion):
        z_i = prior.sample(text, generator=torch.Generator().manual_seed(1), **call)
        assert z_i.shape == (3, 64) and torch.allclose(z_i.norm(dim=-1), torch.ones(3), atol=1e-5)
    own = ar.sample(text, num_candidates=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ar.sample(text, generator=torch.Generator().manual_seed(1), **call), own)


# ----------------------------------------------------------------------------- decoder and upsampler


def test_decoder_reads_z_i_in_the_timestep_embedding_and_as_four_extra_tokens(bank):
    torch.manual_seed(0)
    decoder = Decoder(SMALL_DECODER).eval()
    cond = {k: v for k, v in batch_of(bank, 2).items() if k in ("z_t", "tokens", "mask", "z_i")}
    emb, context = decoder.condition(cond)
    assert context.shape == (2, N_TOKENS + 4, 128)
    assert torch.equal(context[:, :N_TOKENS], cond["tokens"])
    s = embed_scale(64)
    assert torch.allclose(emb, decoder.text_embedding(cond["z_t"] * s) + decoder.image_embedding(cond["z_i"] * s))
    assert torch.allclose(context[:, N_TOKENS:], decoder.image_tokens(cond["z_i"] * s).view(2, 4, 128))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    out = decoder(x, t, cond)
    assert out.shape == (2, 3, 16, 16)
    assert not torch.allclose(decoder(x, t, dict(cond, z_i=cond["z_i"].flip(0))), out, atol=1e-4)
    with pytest.raises(ValueError, match="z_i"):
        decoder(x, t, {k: v for k, v in cond.items() if k != "z_i"})


def test_glide_baseline_is_the_same_decoder_without_z_i(bank):
    unclip, glide = Decoder(SMALL_DECODER), Decoder(DecoderConfig(**{**SMALL_DECODER.__dict__, "image_embedding": False}))
    extra = sum(p.numel() for p in unclip.parameters()) - sum(p.numel() for p in glide.parameters())
    assert extra == (64 * 4 * 16 + 4 * 16) + (64 * 4 * 128 + 4 * 128)  # the two projections of z_i only
    cond = {k: v for k, v in batch_of(bank, 2).items() if k in ("z_t", "tokens", "mask")}
    assert glide(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), cond).shape == (2, 3, 16, 16)


def test_decoder_condition_dropout_rates(bank):
    z_i = torch.randn(4000, 64)
    dropped = drop_image_embedding(z_i, 0.1, torch.Generator().manual_seed(0))
    zero_rows = (dropped == 0).all(-1)
    assert 0.08 < zero_rows.float().mean() < 0.12
    assert torch.equal(dropped[~zero_rows], z_i[~zero_rows])

    seen = []

    class Recording(Decoder):
        def forward(self, x, t, cond, return_attention=False):
            seen.append(cond)
            return super().forward(x, t, cond)

    torch.manual_seed(0)
    decoder = Recording(DecoderConfig(**{**SMALL_DECODER.__dict__, "p_drop_text": 1.0, "p_drop_image": 1.0}))
    batch = dict(batch_of(bank, 4), images=torch.rand(4, 3, 32, 32) * 2 - 1)
    loss = decoder_loss(decoder, batch, torch.Generator().manual_seed(0), null=null_text(frozen_clip()))
    assert loss.ndim == 0 and torch.isfinite(loss)
    null = null_text(frozen_clip())
    assert torch.equal(seen[0]["z_t"], null.z_t.expand(4, -1)) and not seen[0]["z_i"].any()


def test_upsampler_reads_the_noise_augmented_low_resolution_image():
    torch.manual_seed(0)
    low = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(augment_low_res(low, 0.0), upsample(low))
    noisy = augment_low_res(low, torch.tensor([0.0, 0.2]), torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], upsample(low)[0]) and 0.15 < float((noisy[1] - upsample(low)[1]).std()) < 0.25
    upsampler = Upsampler(SMALL_UPSAMPLER)
    x = torch.randn(2, 3, 32, 32)
    assert upsampler(x, torch.tensor([3, 4]), upsample(low)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="low"):
        upsampler(x, torch.tensor([3, 4]), low)
    loss = upsampler_loss(upsampler, {"images": torch.rand(2, 3, 32, 32) * 2 - 1}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_slerp_moves_along_the_great_circle_at_constant_speed():
    a, b = F.normalize(torch.randn(1, 64), dim=-1), F.normalize(torch.randn(1, 64), dim=-1)
    thetas = torch.linspace(0, 1, 6)
    path = slerp(a.expand(6, -1), b.expand(6, -1), thetas)
    assert torch.allclose(path[0], a[0], atol=1e-5) and torch.allclose(path[-1], b[0], atol=1e-5)
    assert torch.allclose(path.norm(dim=-1), torch.ones(6), atol=1e-5)
    omega = math.acos(float((a * b).sum()))
    steps = torch.acos((path[:-1] * path[1:]).sum(-1).clamp(-1, 1))
    assert torch.allclose(steps, torch.full((5,), omega / 5), atol=1e-3)
    assert torch.allclose(slerp(a, b, 0.5), F.normalize(a + b, dim=-1), atol=1e-5)  # the midpoint bisects


# ----------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return UnCLIPPipeline(DiffusionPrior(SMALL_PRIOR), Decoder(SMALL_DECODER), Upsampler(SMALL_UPSAMPLER), frozen_clip())


FAST = dict(num_inference_steps=2, upsampler_num_inference_steps=2)


def test_unclip_pipeline_follows_the_sd_pipeline_conventions(pipe):
    out = pipe(["a red circle", "a blue square"], prior_num_inference_steps=2, num_images_per_prompt=2,
               generator=torch.Generator().manual_seed(0), **FAST)
    assert out.images.shape == (4, 3, 32, 32) and 0 <= out.images.min() and out.images.max() <= 1
    assert out.image_embeddings.shape == (4, 64) and out.low_res.shape == (4, 3, 16, 16)
    again = pipe(["a red circle", "a blue square"], prior_num_inference_steps=2, num_images_per_prompt=2,
                 generator=torch.Generator().manual_seed(0), **FAST)
    assert torch.equal(out.images, again.images)
    z = F.normalize(torch.randn(1, 64), dim=-1)
    given = pipe("a red circle", image_embeddings=z, **FAST)
    assert torch.allclose(given.image_embeddings, z, atol=1e-6)
    pil = pipe("a red circle", prior_num_inference_steps=2, output_type="pil", **FAST).images
    assert pil[0].size == (32, 32)


@pytest.mark.parametrize("bad, message", [
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(upsampler_num_inference_steps=1001), "upsampler_num_inference_steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(prior_guidance_scale=float("inf")), "prior_guidance_scale"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(num_candidates=0), "num_candidates"),
    (dict(output_type="np"), "output_type"),
    (dict(sampler="plms"), "sampler"),
    (dict(image_embeddings=torch.randn(3, 10)), "image_embeddings"),
])
def test_unclip_pipeline_rejects_bad_settings(pipe, bad, message):
    with pytest.raises(ValueError, match=message):
        pipe("a red circle", **bad)


def test_variations_interpolations_and_text_diffs(pipe):
    a, b = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    z_a, z_b = pipe.encode_image(a), pipe.encode_image(b)
    variations = pipe.variations(a, 3, generator=torch.Generator().manual_seed(0), **FAST)
    assert variations.images.shape == (3, 3, 32, 32)
    assert torch.allclose(variations.image_embeddings, z_a.expand(3, -1), atol=1e-6)
    assert not torch.equal(variations.images[0], variations.images[1])  # new noise for each

    frames = []
    path = pipe.interpolate(a, b, 4, invert=False, generator=torch.Generator().manual_seed(0),
                            callback=lambda i, t, x, x0: frames.append(x.clone()) if i == 0 else None, **FAST)
    assert torch.allclose(path.image_embeddings[0], z_a[0], atol=1e-5)
    assert torch.allclose(path.image_embeddings[-1], z_b[0], atol=1e-5)
    x_T = frames[0]
    assert all(torch.equal(x_T[i], x_T[0]) for i in range(4))  # without inversion, one noise for the whole path
    frames.clear()
    pipe.interpolate(a, b, 4, callback=lambda i, t, x, x0: frames.append(x.clone()) if i == 0 else None, **FAST)
    inverted = pipe.invert(torch.stack([a, b]), num_inference_steps=2)
    assert torch.allclose(frames[0][0], inverted[0], atol=1e-5) and torch.allclose(frames[0][-1], inverted[1], atol=1e-5)
    with pytest.raises(ValueError, match="ddim"):
        pipe.interpolate(a, b, 3, sampler="euler_a", **FAST)

    diff = pipe.text_diff(a, "a red circle", "a blue circle", 3, max_theta=0.5, **FAST)
    assert torch.allclose(diff.image_embeddings[0], z_a[0], atol=1e-5)
    z = pipe.encode_prompt(["a red circle", "a blue circle"]).z_t
    z_d = F.normalize(z[1] - z[0], dim=-1)
    assert (diff.image_embeddings[-1] @ z_d) > (diff.image_embeddings[0] @ z_d)
    with pytest.raises(ValueError, match="max_theta"):
        pipe.text_diff(a, "x", "y", max_theta=2)
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        pipe.variations(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="n must be"):
        pipe.interpolate(a, b, 1)


def test_glide_pipeline_takes_no_embedding():
    torch.manual_seed(0)
    glide = GLIDEPipeline(Decoder(DecoderConfig(**{**SMALL_DECODER.__dict__, "image_embedding": False})),
                          Upsampler(SMALL_UPSAMPLER), frozen_clip())
    out = glide("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), **FAST)
    assert out.images.shape == (2, 3, 32, 32) and out.image_embeddings is None
    with pytest.raises(ValueError, match="UnCLIPPipeline needs"):
        UnCLIPPipeline(DiffusionPrior(SMALL_PRIOR), glide.decoder, glide.upsampler, frozen_clip())


def test_the_ar_prior_plugs_into_the_same_pipeline(bank):
    prior = ARPrior(SMALL_AR)
    prior.fit(bank.z_i)
    pipe = UnCLIPPipeline(prior, Decoder(SMALL_DECODER), Upsampler(SMALL_UPSAMPLER), frozen_clip())
    out = pipe("a red circle", generator=torch.Generator().manual_seed(0), **FAST)
    assert out.image_embeddings.shape == (1, 64)


def test_the_cached_caption_prefix_gives_the_full_forward_pass(bank):
    """Causal attention: [tokens, z_t] never see t or z_i^(t), so their keys and values can be computed once."""
    torch.manual_seed(0)
    prior = DiffusionPrior(SMALL_PRIOR).eval()
    cond = {k: v for k, v in batch_of(bank, 5).items() if k in ("z_t", "tokens", "mask")}
    x, t = torch.randn(5, 64), torch.tensor([1, 99, 400, 800, 999])
    with torch.no_grad():
        full = prior(x, t, cond)
        cached = prior(x, t, dict(cond, cache=prior.caption_cache(cond)))
    assert torch.allclose(cached, full, atol=1e-5)
    assert len(prior.caption_cache(cond)) == SMALL_PRIOR.layers


def test_the_pipelines_guide_against_the_empty_caption_of_their_own_clip():
    """The unconditional side of guidance is "" through the pipeline's CLIP, not through the shelf's.

    The prior and the decoder both see it: with another CLIP (here an untrained one) the empty
    caption's z_t differs, and every unconditional row handed to the models must be that CLIP's.
    """
    from diffusion_notes.unclip.clip import CLIP, CLIPConfig

    torch.manual_seed(1)
    other = CLIP(CLIPConfig()).eval()
    own, shelf = null_text(other).z_t[0], null_text(frozen_clip()).z_t[0]
    assert not torch.allclose(own, shelf, atol=1e-3)
    seen = {"prior": [], "decoder": []}

    class RecordingPrior(DiffusionPrior):
        def forward(self, z_i_t, t, cond, return_attention=False):
            seen["prior"].append(cond["z_t"])
            return super().forward(z_i_t, t, cond, return_attention)

    class RecordingDecoder(Decoder):
        def forward(self, x, t, cond, return_attention=False):
            seen["decoder"].append(cond["z_t"])
            return super().forward(x, t, cond, return_attention)

    pipe = UnCLIPPipeline(RecordingPrior(SMALL_PRIOR), RecordingDecoder(SMALL_DECODER), Upsampler(SMALL_UPSAMPLER),
                          other)
    pipe("a red circle", prior_num_inference_steps=2, generator=torch.Generator().manual_seed(0), **FAST)
    for part, calls in seen.items():
        assert calls, part
        for z_t in calls:  # guided calls stack [cond; uncond]: the last half is the empty caption
            assert torch.allclose(z_t[len(z_t) // 2:], own.expand(len(z_t) - len(z_t) // 2, -1), atol=1e-6), part
