"""The web UI's noise (`practice/webui/seeds.py`): variation-seed slerp, ImageRNG, ENSD and the noise sources."""

import dataclasses

import numpy as np
import pytest
import torch

from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.generate import Settings, generate
from diffusion_notes.practice.webui.rng_philox import PhiloxGenerator
from diffusion_notes.practice.webui.seeds import ImageRNG, job_seeds, noise_device, slerp

SHAPE = (4, 8, 8)  # one image's latent


def a1111_slerp(val, low, high):
    """modules/rng.py `slerp`, transcribed to numpy float64: norms and the cosine along axis 1."""
    low_norm = low / np.linalg.norm(low, axis=1, keepdims=True)
    high_norm = high / np.linalg.norm(high, axis=1, keepdims=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = np.arccos(dot)
    so = np.sin(omega)
    res = np.expand_dims(np.sin((1.0 - val) * omega) / so, 1) * low + np.expand_dims(np.sin(val * omega) / so, 1) * high
    return res


def draws(seed, shape, n=1):
    """n successive N(0, I) draws of `shape` from one CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 16, 8), (2, 6), (3, 4, 5, 2)])
@pytest.mark.parametrize("strength", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_slerp_table(shape, strength):
    """modules/rng.py `slerp`: one angle per row of dim 1, the weights on the tensors themselves."""
    low, high = draws(1, shape)[0], draws(2, shape)[0]
    expected = a1111_slerp(strength, low.double().numpy(), high.double().numpy())
    np.testing.assert_allclose(slerp(strength, low, high).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_slerp_is_not_one_global_angle():
    """modules/rng.py `slerp` on (C, H, W): C x W angles; one global angle over the flattened tensor differs."""
    low, high = draws(1, SHAPE)[0].double().numpy(), draws(2, SHAPE)[0].double().numpy()
    a, b = low.ravel(), high.ravel()
    omega = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    flat = (np.sin(0.5 * omega) * low + np.sin(0.5 * omega) * high) / np.sin(omega)
    assert np.abs(a1111_slerp(0.5, low, high) - flat).max() > 0.05
    assert np.abs(slerp(0.5, torch.from_numpy(low), torch.from_numpy(high)).numpy() - flat).max() > 0.05


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.8])
def test_slerp_near_parallel_mixes_linearly_with_the_weights_swapped(strength):
    """modules/rng.py `slerp`: mean cosine > 0.9995 returns low * val + high * (1 - val), as written there."""
    low = draws(1, SHAPE)[0]
    high = low + 1e-3 * draws(2, SHAPE)[0]  # cosines about 0.999999
    out = slerp(strength, low, high)
    torch.testing.assert_close(out, strength * low + (1 - strength) * high)
    np.testing.assert_allclose(out.numpy(), a1111_slerp(strength, low.double().numpy(), high.double().numpy()),
                               rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, (1 - strength) * low + strength * high, atol=1e-5)  # not the slerp's limit


def test_job_seeds():
    """processing.py `process_images_inner`: all_seeds = seed + i, or seed for all while subseed_strength != 0;
    all_subseeds = subseed + i."""
    assert job_seeds(10, 50, 0.0, 3) == ([10, 11, 12], [50, 51, 52])
    assert job_seeds(10, 50, 0.25, 3) == ([10, 10, 10], [50, 51, 52])


def test_a_job_with_a_variation_strength_keeps_one_seed(pipe):
    """processing.py `process_images_inner` through `generate`: a batch of variations of one picture."""
    job = Settings(prompt="a small red circle", steps=2, seed=10, subseed=50, subseed_strength=0.3, batch_size=2)
    result = generate(pipe, job)
    assert (result.seeds, result.subseeds) == ([10, 10], [50, 51])
    assert "Seed: 10," in result.infotexts[1] and "Variation seed: 51," in result.infotexts[1]


def test_first_next_is_the_start_then_each_images_own_generator():
    """modules/rng.py `ImageRNG.next`: the first call returns `first()`, later calls draw on, per image."""
    rng = ImageRNG(SHAPE, [11, 12])
    start, step1, step2 = rng.next(), rng.next(5), rng.next()
    for b, seed in enumerate([11, 12]):
        x0, x1, x2 = draws(seed, SHAPE, 3)
        assert torch.equal(start[b], x0) and torch.equal(step1[b], x1) and torch.equal(step2[b], x2)
    assert torch.equal(ImageRNG(SHAPE, [12]).next()[0], start[1])  # image i alone = image i of the batch


def test_ensd_reseeds_the_step_noise_only():
    """modules/rng.py `ImageRNG.first`: after the start is drawn, generators are re-made with seed + ENSD."""
    rng = ImageRNG(SHAPE, [11, 12], eta_noise_seed_delta=31337)
    start, step1, step2 = rng.next(), rng.next(), rng.next()
    for b, seed in enumerate([11, 12]):
        assert torch.equal(start[b], draws(seed, SHAPE)[0])
        s1, s2 = draws(seed + 31337, SHAPE, 2)
        assert torch.equal(step1[b], s1) and torch.equal(step2[b], s2)


def test_variation_seed_mixes_the_start_only():
    """modules/rng.py `ImageRNG.first`: noise = slerp(strength, seed's, subseed's); the subseed's is a fresh draw."""
    rng = ImageRNG(SHAPE, [11, 12], [21, 22], 0.3)
    start, step1 = rng.next(), rng.next()
    for b, (seed, subseed) in enumerate([(11, 21), (12, 22)]):
        x0, x1 = draws(seed, SHAPE, 2)
        torch.testing.assert_close(start[b], slerp(0.3, x0, draws(subseed, SHAPE)[0]))
        assert torch.equal(step1[b], x1)  # the variation seed's draw leaves the image's generator alone
    missing = ImageRNG(SHAPE, [11, 12], [21], 0.3).next()  # fewer subseeds than seeds: 0 for the rest
    torch.testing.assert_close(missing[1], slerp(0.3, draws(12, SHAPE)[0], draws(0, SHAPE)[0]))


def test_noise_sources():
    """modules/rng.py `create_generator`, `randn`: CPU; GPU = the device's own (the CPU here, the CPU on MPS); NV."""
    cpu = ImageRNG(SHAPE, [3], randn_source="CPU").next()
    assert torch.equal(cpu[0], draws(3, SHAPE)[0])
    assert torch.equal(ImageRNG(SHAPE, [3], randn_source="GPU", device="cpu").next(), cpu)
    assert noise_device("GPU", "mps") == torch.device("cpu") and noise_device("CPU", "cuda") == torch.device("cpu")
    assert noise_device("GPU", "cuda") == torch.device("cuda")
    nv = ImageRNG(SHAPE, [3], randn_source="NV", eta_noise_seed_delta=5)
    start, step1 = nv.next(), nv.next()
    assert np.array_equal(start[0].numpy(), PhiloxGenerator(3).randn(SHAPE))
    assert np.array_equal(step1[0].numpy(), PhiloxGenerator(3 + 5).randn(SHAPE))
    assert start.dtype == torch.float32 and not torch.equal(start, cpu)


def test_nv_source_draws_what_a_gpu_draws_for_seed_0():
    """rng_philox.py's docstring: seed 0 on CUDA starts -0.9247, -0.4253, -2.6438, 0.1452, ..."""
    start = ImageRNG((1, 3, 4), [0], randn_source="NV").next()  # (1, 1, 3, 4)
    expected = [-0.92466259, -0.42534415, -2.6438457, 0.14518388]
    np.testing.assert_allclose(start[0, 0, 0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(randn_source="cuda"), "randn_source must be one of GPU, CPU, NV"),
    (dict(randn_source="cpu"), "randn_source must be one of GPU, CPU, NV"),
    (dict(eta_noise_seed_delta=-1), "eta_noise_seed_delta"),
    (dict(eta_noise_seed_delta=1.5), "eta_noise_seed_delta"),
])
def test_bad_noise_settings_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        ImageRNG(SHAPE, [1], **change)


def test_infotext_writes_rng_and_ensd_only_when_not_the_default():
    """processing.py `create_infotext`: "RNG" unless the source is GPU; "ENSD" when not 0. Read back by
    infotext_utils.parse_generation_parameters (a missing "RNG" means GPU)."""
    base = Settings(prompt="a red circle", steps=5, seed=1)
    assert "RNG" not in infotext.create(base, 1, 0) and "ENSD" not in infotext.create(base, 1, 0)
    assert infotext.to_settings(infotext.parse(infotext.create(base, 1, 0)))["randn_source"] == "GPU"
    for source in ("CPU", "NV"):
        text = infotext.create(dataclasses.replace(base, randn_source=source, eta_noise_seed_delta=31337), 1, 0)
        assert ", ENSD: 31337," in text + "," and f", RNG: {source}," in text + ","
        fields = infotext.to_settings(infotext.parse(text))
        assert (fields["randn_source"], fields["eta_noise_seed_delta"]) == (source, 31337)


def test_an_a1111_infotext_gives_its_noise_settings():
    """infotext_utils.parse_generation_parameters on a web UI 1.10 line: ENSD and RNG become the job's options."""
    text = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, "
            "Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
            "ENSD: 31337, RNG: NV, Version: v1.10.1")
    fields = infotext.to_settings(infotext.parse(text))
    assert (fields["eta_noise_seed_delta"], fields["randn_source"], fields["seed"]) == (31337, "NV", 1234)


def pixels(result):
    return np.asarray(result.images[0], dtype=np.int16)


def test_generate_uses_the_noise_settings(pipe):
    """The job's randn_source and ENSD reach the noise: NV is another picture than CPU; ENSD moves Euler a's
    step noise and leaves DPM++ 2M (no step noise) alone."""
    job = Settings(prompt="a small red circle on the left", steps=4, seed=7, sampler_name="Euler a", cfg_scale=4)
    cpu, gpu = generate(pipe, dataclasses.replace(job, randn_source="CPU")), generate(pipe, job)
    assert np.array_equal(pixels(cpu), pixels(gpu))  # on a CPU, GPU is the CPU's generator
    nv = generate(pipe, dataclasses.replace(job, randn_source="NV"))
    assert np.abs(pixels(nv) - pixels(cpu)).max() > 10 and ", RNG: NV," in nv.infotexts[0]
    ensd = generate(pipe, dataclasses.replace(job, eta_noise_seed_delta=31337))
    assert np.abs(pixels(ensd) - pixels(cpu)).max() > 10 and "ENSD: 31337" in ensd.infotexts[0]
    plain = dataclasses.replace(job, sampler_name="DPM++ 2M")
    assert np.array_equal(pixels(generate(pipe, plain)),
                          pixels(generate(pipe, dataclasses.replace(plain, eta_noise_seed_delta=31337))))
    with pytest.raises(ValueError, match="one of GPU, CPU, NV"):
        generate(pipe, dataclasses.replace(job, randn_source="XPU"))


def test_the_server_keeps_one_seed_over_batches_of_variations(pipe, tmp_path):
    """processing.py `process_images_inner` through the server's batch-by-batch queue (n_iter 2)."""
    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.models import ModelRegistry
    from diffusion_notes.practice.webui.state import WebUIState

    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"), tmp_path))
    job = Settings(prompt="a small red circle", steps=2, seed=10, subseed=50, subseed_strength=0.3, batch_size=2,
                   n_iter=2)
    result = state.run(job, save=False)
    assert (result.seeds, result.subseeds) == ([10, 10, 10, 10], [50, 51, 52, 53])
