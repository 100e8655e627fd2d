"""vae.py: the diagonal Gaussian against torch.distributions and diffusers, the loss, PSNR, the autoencoder."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch.distributions import Normal, kl_divergence

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.stable_diffusion.vae import (
    AutoencoderKL,
    DiagonalGaussian,
    VAEConfig,
    latent_scale_factor,
    psnr,
    vae_batch,
    vae_loss,
    vae_training_loss,
)
from diffusion_notes.training.recipes import get_recipe

TINY = VAEConfig(channels=(8, 16, 16))


def moments(seed: int, shape=(3, 8, 4, 4)) -> torch.Tensor:
    """Random (B, 2c, h, w) encoder outputs: means and log-variances in a realistic range."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


@pytest.fixture(scope="module")
def images():
    return ShapesDataset("train", 16, seed=3).images()  # (16, 3, 32, 32) in [-1, 1]


# --- the diagonal Gaussian -------------------------------------------------------------


def test_kl_equals_torch_distributions():
    p = moments(0)
    q = DiagonalGaussian(p)
    mean, logvar = p.chunk(2, dim=1)
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    assert q.kl().shape == (3,)
    torch.testing.assert_close(q.kl(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.mean, mean)
    torch.testing.assert_close(q.std, torch.exp(0.5 * logvar))


def test_kl_is_zero_for_the_prior():
    assert torch.equal(DiagonalGaussian(torch.zeros(2, 8, 3, 3)).kl(), torch.zeros(2))


def test_gaussian_matches_diffusers_including_the_logvar_clamp():
    """diffusers' DiagonalGaussianDistribution: 0.5 * sum over dims [1, 2, 3], log-variance clamped to [-30, 20]."""
    p = moments(1) * 3
    p[:, 4:][0, 0, 0, 0], p[:, 4:][0, 1, 0, 0] = -45.0, 28.0  # outside the clamp on both sides
    ours, ref = DiagonalGaussian(p), DiagonalGaussianDistribution(p)
    torch.testing.assert_close(ours.kl(), ref.kl(), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(ours.logvar, ref.logvar)
    torch.testing.assert_close(ours.std, ref.std)
    assert ours.logvar.min() == -30.0 and ours.logvar.max() == 20.0
    # same generator, same draw
    torch.testing.assert_close(ours.sample(torch.Generator().manual_seed(2)),
                               ref.sample(torch.Generator().manual_seed(2)))


def test_sample_has_the_posterior_mean_and_std():
    n = 20000
    mu = torch.tensor([-1.5, 0.0, 0.7, 3.0])
    sigma = torch.tensor([0.2, 1.0, 2.5, 0.05])
    p = torch.cat([mu, 2 * sigma.log()]).view(1, 8, 1, 1).expand(n, 8, 1, 1)
    z = DiagonalGaussian(p).sample(torch.Generator().manual_seed(3)).view(n, 4)
    tol = 5 / math.sqrt(n)  # 5 standard errors
    assert ((z.mean(0) - mu).abs() <= tol * sigma).all(), (z.mean(0), mu)
    assert ((z.std(0) / sigma - 1).abs() <= tol).all(), (z.std(0), sigma)
    again = DiagonalGaussian(p).sample(torch.Generator().manual_seed(3)).view(n, 4)
    assert torch.equal(z, again)


# --- loss and PSNR --------------------------------------------------------------------


def test_vae_loss_is_the_formula():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    x_hat = x + 0.1 * torch.randn(x.shape, generator=g)
    posterior = DiagonalGaussian(moments(5, (3, 8, 8, 8)))
    w = 1e-3
    n = 3 * 32 * 32  # numbers per image
    by_hand = sum(((x[b] - x_hat[b]) ** 2).sum() + w * posterior.kl()[b] for b in range(3)) / 3 / n
    torch.testing.assert_close(vae_loss(x, x_hat, posterior, w), by_hand)
    # kl_weight = 0: plain mean squared error
    torch.testing.assert_close(vae_loss(x, x_hat, posterior, 0.0), F.mse_loss(x_hat, x))
    # the KL part scales linearly with the weight
    kl_part = vae_loss(x, x_hat, posterior, w) - vae_loss(x, x_hat, posterior, 0.0)
    kl_part_10 = vae_loss(x, x_hat, posterior, 10 * w) - vae_loss(x, x_hat, posterior, 0.0)
    torch.testing.assert_close(kl_part_10, 10 * kl_part, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(kl_part, w * posterior.kl().mean() / n, rtol=1e-4, atol=1e-8)


def test_psnr_of_a_constant_offset():
    """x_hat = x + delta on [-1, 1] images: MSE on [0, 1] is delta^2 / 4, so PSNR = 10 log10(4 / delta^2)."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6)) - 0.5  # in [-0.5, 0.5]
    deltas = torch.tensor([0.5, 0.1, 0.01])
    got = psnr(x, x + deltas.view(3, 1, 1, 1))
    assert got.shape == (3,)
    torch.testing.assert_close(got, 10 * torch.log10(4 / deltas**2), rtol=1e-4, atol=1e-4)


def test_psnr_clamps_to_the_image_range():
    x = torch.full((2, 3, 32, 32), 0.5)
    x_hat = torch.stack([torch.full((3, 32, 32), 7.0), torch.full((3, 32, 32), 0.5)])  # 7 is clamped to 1
    got = psnr(x, x_hat)
    torch.testing.assert_close(got[0], torch.tensor(10 * math.log10(4 / 0.5**2)))
    assert torch.isfinite(got[1]) and got[1] > 100  # identical images: capped, not infinite


# --- the autoencoder ----------------------------------------------------------------------


def test_shapes_and_downsampling_factor(images):
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig()).eval()
    assert vae.downsampling_factor == 4
    with torch.no_grad():
        posterior = vae.encode(images[:2])
        assert posterior.mean.shape == posterior.std.shape == (2, 4, 8, 8)
        assert vae.decode(posterior.mean).shape == (2, 3, 32, 32)
    assert AutoencoderKL(VAEConfig(channels=(8, 16))).downsampling_factor == 2
    with torch.no_grad():
        assert AutoencoderKL(VAEConfig(channels=(8, 16), latent_channels=3)).encode(images[:1]).mean.shape \
            == (1, 3, 16, 16)


def test_forward_decodes_a_posterior_sample(tiny_vae, images):
    with torch.no_grad():
        x_hat, posterior = tiny_vae(images[:2], torch.Generator().manual_seed(7))
        z = tiny_vae.encode(images[:2]).sample(torch.Generator().manual_seed(7))
        torch.testing.assert_close(x_hat, tiny_vae.decode(z))
    torch.testing.assert_close(posterior.mean, tiny_vae.encode(images[:2]).mean)


@pytest.mark.parametrize("bad", [
    torch.zeros(2, 3, 32, 32).add(1.5),  # outside [-1, 1] (a [0, 255] or shifted image)
    torch.zeros(2, 3, 16, 16),  # wrong size
    torch.zeros(2, 1, 32, 32),  # wrong channels
    torch.zeros(3, 32, 32),  # no batch dimension
    torch.zeros(2, 3, 32, 32, dtype=torch.long),  # not float
    torch.full((2, 3, 32, 32), float("nan")),
], ids=["range", "size", "channels", "unbatched", "long", "nan"])
def test_encode_rejects_bad_images(tiny_vae, bad):
    with pytest.raises(ValueError, match="images"):
        tiny_vae.encode(bad)


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 8, 8), torch.zeros(4, 8, 8), [0.0]], ids=["channels", "3d", "list"])
def test_decode_rejects_wrong_latents(tiny_vae, bad):
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, h, w\)"):
        tiny_vae.decode(bad)


def test_config_is_checked():
    with pytest.raises(ValueError):
        AutoencoderKL(VAEConfig(channels=()))
    with pytest.raises(ValueError):
        AutoencoderKL(VAEConfig(latent_channels=0))


def test_latent_scale_factor_gives_unit_std(tiny_vae, images):
    s = latent_scale_factor(tiny_vae, images, seed=0)
    with torch.no_grad():
        posterior = tiny_vae.encode(images)
        z = posterior.sample(torch.Generator().manual_seed(0))
        assert float((z * s).std()) == pytest.approx(1.0, abs=1e-5)  # the same draw: exactly 1
        z_other = posterior.sample(torch.Generator().manual_seed(1))
        assert float((z_other * s).std()) == pytest.approx(1.0, abs=0.05)  # another draw: about 1
    assert latent_scale_factor(tiny_vae, images, seed=0) == s


@pytest.mark.slow
def test_tiny_vae_overfits_one_batch(one_thread):
    torch.manual_seed(0)
    model = AutoencoderKL(TINY)
    batch = vae_batch(0, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = vae_training_loss(model, batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    baseline = batch["images"].pow(2).mean().item()  # the loss of predicting an all-zero image
    assert losses[-1] < 0.1 * losses[0] and losses[-1] < 0.1 * baseline, (losses[0], losses[-1], baseline)
    with torch.no_grad():
        x = batch["images"]
        assert psnr(x, model.decode(model.encode(x).mean)).mean() > 15


def test_vae_recipe_builds_and_its_batches_are_pure():
    recipe = get_recipe("vae")
    assert isinstance(recipe.build(recipe.config), AutoencoderKL)
    a, b = recipe.make_batch(3, 4, 0), recipe.make_batch(3, 4, 0)
    assert a["images"].shape == (4, 3, 32, 32)
    assert torch.equal(a["images"], b["images"])
    assert not torch.equal(a["images"], recipe.make_batch(4, 4, 0)["images"])
    assert not torch.equal(a["images"], recipe.make_batch(3, 4, 1)["images"])
    # batch `step` holds training images step * B ... (step + 1) * B - 1
    torch.testing.assert_close(a["images"], ShapesDataset("train", 16, seed=0).images(12, 16))
    assert a["images"].min() >= -1 and a["images"].max() <= 1
