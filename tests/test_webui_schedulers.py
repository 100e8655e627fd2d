"""practice/webui/schedulers and foundations/sigmas: the web UI's schedules and sampler options, as its code has them.

Each table's expected values are worked out from the web UI's (AUTOMATIC1111 v1.10) and k-diffusion's
own code, transcribed below with the function named: `modules/sd_schedulers.py`,
`modules/sd_samplers_kdiffusion.py` (`samplers_k_diffusion`, `sampler_extra_params`,
`KDiffusionSampler.get_sigmas`), `modules/sd_samplers_common.py` (`Sampler.initialize`),
`k_diffusion/sampling.py` (`get_sigmas_*`, `get_ancestral_step`, `sample_*`) and
`k_diffusion/external.py` (`DiscreteSchedule.sigma_to_t`, `t_to_sigma`, `get_sigmas`).
"""

import math

import numpy as np
import pytest
import torch

from diffusion_notes.foundations import sigmas as S
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES
from diffusion_notes.practice.webui import infotext, schedulers
from diffusion_notes.practice.webui.generate import Settings, check, generate
from diffusion_notes.stable_diffusion.denoise import denoise, make_plan
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

SCHEDULE = ldm_schedule()
# SD v1's training sigmas, sqrt((1 - alpha_bar) / alpha_bar), from its betas, independently of the library
BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
SIGMAS = np.sqrt((1 - np.cumprod(1 - BETAS)) / np.cumprod(1 - BETAS))  # (1000,) increasing
SIGMA_MIN, SIGMA_MAX = SIGMAS[0], SIGMAS[-1]


# --- k-diffusion's DiscreteSchedule (external.py), transcribed -------------------------------------------------

def kd_sigma_to_t(sigma):
    """DiscreteSchedule.sigma_to_t (quantize=False): the bracketing log sigmas, w clamped to [0, 1]."""
    log_sigmas = np.log(SIGMAS)
    log_sigma = np.log(np.atleast_1d(np.asarray(sigma, dtype=np.float64)))
    dists = log_sigma - log_sigmas[:, None]
    low = np.minimum(np.argmax(np.cumsum(dists >= 0, axis=0), axis=0), len(SIGMAS) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def kd_t_to_sigma(t):
    """DiscreteSchedule.t_to_sigma: log sigma linear between floor(t) and ceil(t)."""
    t = np.asarray(t, dtype=np.float64)
    low, high, w = np.floor(t).astype(int), np.ceil(t).astype(int), t - np.floor(t)
    return np.exp((1 - w) * np.log(SIGMAS[low]) + w * np.log(SIGMAS[high]))


def test_sd_sigma_range():
    """The range every range-based schedule spans (`KDiffusionSampler.get_sigmas`: model_wrap.sigmas[0], [-1])."""
    assert S.sigma_range(SCHEDULE) == pytest.approx((0.029167, 14.614642), abs=1e-6)
    assert S.sigma_range(SCHEDULE) == pytest.approx((SIGMA_MIN, SIGMA_MAX), rel=1e-12)


@pytest.mark.parametrize("sigma", [SIGMAS[0], SIGMAS[500], 0.5, 1.0, 3.3, SIGMAS[-1], 100.0, 1e-4])
def test_sigma_to_t_is_k_diffusions(sigma):
    """`DiscreteSchedule.sigma_to_t`: training sigmas map to their t, others between, outside clamped to 0 or 999."""
    assert float(S.sigma_to_t(sigma, SCHEDULE)) == pytest.approx(float(kd_sigma_to_t(sigma)[0]), abs=1e-9)


@pytest.mark.parametrize("t", [0.0, 1.0, 10.5, 499.25, 998.9, 999.0])
def test_t_to_sigma_is_k_diffusions(t):
    """`DiscreteSchedule.t_to_sigma`, and its round trip through sigma_to_t."""
    assert float(S.t_to_sigma(t, SCHEDULE)) == pytest.approx(float(kd_t_to_sigma(t)), rel=1e-12)
    assert float(S.sigma_to_t(S.t_to_sigma(t, SCHEDULE), SCHEDULE)) == pytest.approx(t, abs=1e-9)


# --- the schedules: k-diffusion's get_sigmas_* and sd_schedulers' functions, transcribed ------------------------

def expected(label, n):
    """Each schedule's n + 1 noise levels, from the formula in the function named."""
    i = np.arange(n, dtype=np.float64)
    zero = [0.0]
    if label == "Karras":  # get_sigmas_karras(n, sigma_min, sigma_max, rho=7)
        ramp = np.linspace(0, 1, n)
        return np.append((SIGMA_MAX ** (1 / 7) + ramp * (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7))) ** 7, zero)
    if label in ("Exponential", "Polyexponential"):  # get_sigmas_exponential; polyexponential with rho = 1
        return np.append(np.exp(np.linspace(np.log(SIGMA_MAX), np.log(SIGMA_MIN), n)), zero)
    if label in ("Uniform", "Normal"):  # DiscreteSchedule.get_sigmas(n): t = linspace(t_max, 0, n)
        return np.append(kd_t_to_sigma(np.linspace(999, 0, n)), zero)
    if label == "SGM Uniform":  # sgm_uniform: linspace(t(sigma_max), t(sigma_min), n + 1)[:-1]
        return np.append(kd_t_to_sigma(np.linspace(999, 0, n + 1)[:-1]), zero)
    if label == "KL Optimal":  # kl_optimal: tan(i/n atan(sigma_min) + (1 - i/n) atan(sigma_max)), i = 0..n
        j = np.arange(n + 1) / n
        return np.tan(j * np.arctan(SIGMA_MIN) + (1 - j) * np.arctan(SIGMA_MAX))
    if label == "Simple":  # simple_scheduler: sigmas[-(1 + int(x * len / n))]
        return np.append([SIGMAS[-(1 + int(x * 1000 / n))] for x in range(n)], zero)
    if label == "DDIM":  # ddim_scheduler: sigmas[1], sigmas[1 + 1000 // n], ..., reversed
        return np.append(SIGMAS[1::max(1000 // n, 1)][::-1], zero)
    if label == "Align Your Steps":  # get_align_your_steps_sigmas: SD 1.5's list, loglinear_interp to n
        ays = np.array([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029])
        if n == len(ays):
            return np.append(ays, zero)
        return np.append(np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(ays[::-1])))[::-1], zero)
    if label == "Beta":  # beta_scheduler: sigma_min + ppf(1 - linspace(0, 1, n); 0.6, 0.6) (sigma_max - sigma_min)
        from scipy import stats
        return np.append(SIGMA_MIN + stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (SIGMA_MAX - SIGMA_MIN), zero)
    raise AssertionError(label, i)


LABELS = ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
          "Simple", "Normal", "DDIM", "Beta"]


@pytest.mark.parametrize("n", [1 + 1, 7, 11, 20])
@pytest.mark.parametrize("label", LABELS)
def test_each_schedule_is_the_web_uis(label, n):
    """`sd_schedulers.schedulers[label].function(n, sigma_min, sigma_max, ...)`, to float64 rounding."""
    got = schedulers.find(label).sigmas(n, SCHEDULE).numpy()
    want = expected(label, n)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_few_schedules_by_hand():
    """Hand-checkable values: Exponential's geometric steps, Polyexponential's rho, DDIM's count, KL's end."""
    e = S.exponential_sigmas(0.1, 10.0, 3).tolist()
    assert e == pytest.approx([10.0, 1.0, 0.1, 0.0])  # log-even from 10 to 0.1
    p = S.polyexponential_sigmas(0.1, 10.0, 3, rho=2.0).tolist()
    assert p == pytest.approx([10.0, math.exp(0.25 * math.log(100) + math.log(0.1)), 0.1, 0.0])
    assert S.karras_schedule(0.1, 10.0, 2).tolist() == pytest.approx([10.0, 0.1, 0.0])
    assert len(S.ddim_sigmas(7, SCHEDULE)) == 9  # 1000 // 7 = 142: t = 1, 143, ..., 995: 8 steps for n = 7
    assert S.kl_optimal_sigmas(0.1, 10.0, 4)[-1].item() == pytest.approx(0.1)  # ends at sigma_min, not 0


def test_discard_next_to_last_sigma_for_dpm2():
    """DPM2 and DPM2 a ask for n + 1 levels and drop the last but one (`discard_next_to_last_sigma`)."""
    got = schedulers.schedule_sigmas("dpm2", schedulers.find("Karras"), 5, SCHEDULE).numpy()
    full = expected("Karras", 6)
    np.testing.assert_allclose(got, np.append(full[:-2], 0.0), rtol=1e-12)
    assert len(schedulers.webui_plan("DPM2", 5, SCHEDULE, "Karras").grid.sigmas) == 2 * 5  # 2n - 1 calls, then 0


# --- names, the API's list, which samplers offer what -------------------------------------------------------------

API = [  # sd_schedulers.schedulers, as api.get_schedulers returns them
    ("automatic", "Automatic", None, -1, False), ("uniform", "Uniform", None, -1, True),
    ("karras", "Karras", None, 7.0, False), ("exponential", "Exponential", None, -1, False),
    ("polyexponential", "Polyexponential", None, 1.0, False), ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1, True),
    ("kl_optimal", "KL Optimal", None, -1, False), ("align_your_steps", "Align Your Steps", None, -1, False),
    ("simple", "Simple", None, -1, True), ("normal", "Normal", None, -1, True), ("ddim", "DDIM", None, -1, True),
    ("beta", "Beta", None, -1, True),
]


def test_api_list_is_the_web_uis():
    """GET /sdapi/v1/schedulers: name, label, aliases, default_rho, need_inner_model of each, in order."""
    keys = ("name", "label", "aliases", "default_rho", "need_inner_model")
    assert schedulers.api_list() == [dict(zip(keys, row)) for row in API]


@pytest.mark.parametrize("given, label", [("Karras", "Karras"), ("karras", "Karras"), ("SGMUniform", "SGM Uniform"),
                                          ("sgm_uniform", "SGM Uniform"), (None, "Automatic"),
                                          ("align_your_steps", "Align Your Steps")])
def test_names_labels_and_aliases(given, label):
    """`schedulers_map`: a label or a name; the alias list as `get_sampler_and_scheduler` reads it."""
    assert schedulers.find(given).label == label


AUTOMATIC = {  # samplers_k_diffusion's 'scheduler' option (v1.10); None means model_wrap.get_sigmas: Uniform
    "Euler a": "Uniform", "Euler": "Uniform", "LMS": "Uniform", "Heun": "Uniform", "DPM2": "Karras",
    "DPM2 a": "Karras", "DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential",
    "DDIM": "Automatic", "UniPC": "Automatic", "DDPM": "Automatic",  # timestep samplers: no schedule
}


@pytest.mark.parametrize("sampler, default", list(AUTOMATIC.items()))
def test_which_samplers_offer_which_schedules(sampler, default):
    """k-diffusion samplers offer every schedule; the timestep samplers (DDIM, UniPC) none but Automatic."""
    assert schedulers.automatic(sampler) == default
    offered = schedulers.offered(sampler)
    assert offered == ([s[1] for s in API] if default != "Automatic" else ["Automatic"])


@pytest.mark.parametrize("sampler, eta, uses", [("Euler a", None, True), ("Euler a", 0.0, False), ("DPM2 a", 0.5, True),
                                               ("DPM2 a Karras", None, True), ("Euler", None, False),
                                               ("DPM++ 2M SDE", None, False), ("DDIM", 1.0, False)])
def test_which_samplers_use_ensd(sampler, eta, uses):
    """`samplers_k_diffusion`'s "uses_ensd" and `is_sampler_using_eta_noise_seed_delta`'s eta == 0 exception."""
    assert schedulers.uses_ensd(sampler, eta) is uses


def test_every_web_ui_sampler_is_in_the_table():
    names = {schedulers.resolve(ui, "Automatic")[0] for ui in SAMPLER_ALIASES}
    assert names <= set(schedulers.K_SAMPLERS) | {"ddim", "unipc", "ddpm", "lcm_webui"}  # LCM: its own grid only


@pytest.mark.parametrize("sampler, scheduler, message", [
    ("Euler", "Karras Exponential", "scheduler must be one of Automatic, Uniform, Karras"),
    ("Euler", "karras ", "scheduler must be one of"),
    ("Euler", 3, "scheduler must be one of"),
    ("DDIM", "Karras", "takes the scheduler Automatic"),
    ("UniPC", "Uniform", "takes the scheduler Automatic"),
    ("DPM++ 2M Karras", "Exponential", "names the Karras schedule"),
])
def test_bad_schedulers_are_refused(sampler, scheduler, message):
    with pytest.raises(ValueError, match=message):
        schedulers.webui_plan(sampler, 5, SCHEDULE, scheduler)


# --- the options each sampler is handed (sampler_extra_params, Sampler.initialize) ------------------------------

OPTIONS = [  # (sampler, what it takes of eta=0.5, s_churn=1, s_tmin=0.2, s_tmax=0, s_noise=0.9)
    ("Euler", {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": math.inf, "s_noise": 0.9}),
    ("Heun", {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": math.inf, "s_noise": 0.9}),
    ("DPM2", {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": math.inf, "s_noise": 0.9}),
    ("DPM2 a", {"s_noise": 0.9, "eta_ancestral": 0.5}),
    ("DPM++ 2M SDE", {"s_noise": 0.9, "eta_ancestral": 0.5}),
    ("Euler a", {"eta_ancestral": 0.5}),  # v1.10 hands it eta only
    ("LMS", {}), ("DPM++ 2M", {}), ("UniPC", {}), ("DDPM", {}),
    ("DDIM", {"eta": 0.5}),  # eta_ddim
]


@pytest.mark.parametrize("sampler, taken", OPTIONS)
def test_each_sampler_gets_the_options_it_takes(sampler, taken):
    """`sampler_extra_params[funcname]` plus eta where the k-diffusion function has it; s_tmax 0 is inf."""
    got = schedulers.sampler_options(sampler, eta=0.5, s_churn=1, s_tmin=0.2, s_tmax=0, s_noise=0.9)
    assert got == taken


def test_eta_none_is_the_samplers_default():
    """`p.eta if p.eta is not None else opts.eta_ancestral (1) / opts.eta_ddim (0)`: no option passed at all."""
    assert schedulers.sampler_options("Euler a") == {}
    assert schedulers.sampler_options("DDIM") == {}
    assert make_plan("euler_a", 4, SCHEDULE).options == ()


@pytest.mark.parametrize("field, value", [("eta", -0.1), ("eta", 1.5), ("eta", float("nan")), ("eta", True),
                                          ("s_churn", -1), ("s_noise", float("inf")), ("s_tmax", "inf"),
                                          ("s_tmin", [0.5])])
def test_bad_option_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        check(Settings(sampler_name="Euler", **{field: value}))


def test_none_is_the_default():
    """`StableDiffusionProcessing.__post_init__`: a None s_churn, s_tmin, s_tmax or s_noise takes opts' default."""
    assert schedulers.sampler_options("Euler", s_churn=None, s_tmin=None, s_tmax=None, s_noise=None) == \
        {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}


def test_make_plan_refuses_an_option_its_sampler_lacks():
    with pytest.raises(ValueError, match="s_churn applies to the euler, heun, dpm2 samplers"):
        make_plan("dpmpp_2m", 5, SCHEDULE, s_churn=1.0)


# --- the samplers on a schedule against k-diffusion's loops, transcribed ----------------------------------------

def toy_eps(x, t):
    """A smooth stand-in for the UNet: eps(x_t, t), depending on both."""
    return 0.5 * torch.tanh(x) + 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1) - 0.2


def kd_denoiser(x, sigma):
    """CompVisDenoiser.forward: eps at (x c_in, t(sigma)), denoised = x - sigma eps."""
    t = torch.tensor(kd_sigma_to_t(float(sigma)), dtype=torch.float32).expand(x.shape[0])
    return x - sigma * toy_eps(x / (1 + sigma**2) ** 0.5, t)


def kd_ancestral(sigma_from, sigma_to, eta):
    """get_ancestral_step."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def kd_sample(name, x, sigmas, noise, eta=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """sample_euler, sample_euler_ancestral, sample_heun, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2m,
    sample_dpmpp_2m_sde (midpoint), in the variance-exploding scale, with `noise()` as their randn_like."""
    n, old, h_last = len(sigmas) - 1, None, None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        if name in ("euler", "heun", "dpm2"):
            gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
            eps = noise() * s_noise
            s_hat = s * (gamma + 1)
            if gamma > 0:
                x = x + eps * (s_hat**2 - s**2) ** 0.5
            d = (x - kd_denoiser(x, s_hat)) / s_hat
            if name == "euler" or s_next == 0:
                x = x + d * (s_next - s_hat)
            elif name == "heun":
                x2 = x + d * (s_next - s_hat)
                d2 = (x2 - kd_denoiser(x2, s_next)) / s_next
                x = x + (d + d2) / 2 * (s_next - s_hat)
            else:
                mid = math.exp((math.log(s_hat) + math.log(s_next)) / 2)
                x2 = x + d * (mid - s_hat)
                x = x + (x2 - kd_denoiser(x2, mid)) / mid * (s_next - s_hat)
        elif name in ("euler_a", "dpm2_a"):
            denoised = kd_denoiser(x, s)
            down, up = kd_ancestral(s, s_next, eta)
            d = (x - denoised) / s
            if name == "euler_a" or down == 0:
                x = x + d * (down - s)
            else:
                mid = math.exp((math.log(s) + math.log(down)) / 2)
                x2 = x + d * (mid - s)
                x = x + (x2 - kd_denoiser(x2, mid)) / mid * (down - s)
            if s_next > 0 and (name == "euler_a" or down != 0):
                x = x + noise() * s_noise * up
        else:  # dpmpp_2m, dpmpp_2m_sde
            denoised = kd_denoiser(x, s)
            if s_next == 0:
                x = denoised
            else:
                t, t_next = -math.log(s), -math.log(s_next)
                h = t_next - t
                e = eta * h if name == "dpmpp_2m_sde" else 0.0
                if name == "dpmpp_2m":
                    dd = denoised if old is None else (1 + 1 / (2 * h_last / h)) * denoised - old / (2 * h_last / h)
                    x = s_next / s * x - math.expm1(-h) * dd
                else:
                    x = s_next / s * math.exp(-e) * x - math.expm1(-h - e) * denoised
                    if old is not None:
                        x = x - 0.5 * math.expm1(-h - e) * (h / h_last) * (denoised - old)
                    if eta:
                        x = x + noise() * s_next * (-math.expm1(-2 * e)) ** 0.5 * s_noise
                h_last = h
            old = denoised
    return x


def ours(name, sigmas, first, noises, **options):
    plan = make_plan(name, len(sigmas) - 1, SCHEDULE, sigmas=torch.tensor(sigmas), **options)
    it = iter(noises)
    return denoise(toy_eps, plan, first, noise=lambda i: next(it))


CASES = [
    ("euler", {}), ("euler", {"s_churn": 2.0}), ("euler", {"s_churn": 40.0, "s_tmin": 0.5, "s_tmax": 5.0}),
    ("euler", {"s_churn": 1.0, "s_noise": 0.7}), ("heun", {"s_churn": 1.5, "s_tmin": 1.0}), ("dpm2", {"s_churn": 1.0}),
    ("euler_a", {}), ("euler_a", {"eta_ancestral": 0.4}), ("euler_a", {"eta_ancestral": 0.0}),
    ("dpm2_a", {"eta_ancestral": 0.6, "s_noise": 0.8}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"eta_ancestral": 0.5, "s_noise": 1.1}), ("dpmpp_2m_sde", {"eta_ancestral": 0.0}),
]


@pytest.mark.parametrize("name, options", CASES)
@pytest.mark.parametrize("label", ["Karras", "Exponential", "KL Optimal"])
def test_our_samplers_on_a_schedule_are_k_diffusions(name, options, label):
    """Our loop (DDPM scale, one model call per iteration) against the transcribed k-diffusion loop, same noises."""
    sigmas = expected(label, 6).tolist()
    g = torch.Generator().manual_seed(0)
    first = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(12)]
    it = iter(noises)
    kd_options = {("eta" if k == "eta_ancestral" else k): v for k, v in options.items()}
    want = kd_sample(name, first * sigmas[0], sigmas, lambda: next(it), **kd_options)
    got = ours(name, sigmas, first, noises, **options)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_our_grids_call_the_unet_at_k_diffusions_t():
    """Karras grids made the diffusers way already call the model at sigma_to_t (k-diffusion's) for the Euler
    family; DPM-Solver's round it, as diffusers does, so only "DPM++ 2M" with scheduler "Karras" is unrounded."""
    from diffusion_notes.foundations.grids import make_grid

    lms = make_grid("lms", 10, SCHEDULE, use_karras_sigmas=True)
    np.testing.assert_allclose(lms.timesteps.numpy(), kd_sigma_to_t(lms.sigmas[:-1].numpy()), atol=1e-9)
    dpm = make_grid("dpmpp_2m", 10, SCHEDULE, use_karras_sigmas=True)
    np.testing.assert_array_equal(dpm.timesteps.numpy(), np.round(kd_sigma_to_t(dpm.sigmas[:-1].numpy())))
    webui = schedulers.webui_plan("DPM++ 2M", 10, SCHEDULE, "Karras").grid
    np.testing.assert_allclose(webui.timesteps.numpy(), kd_sigma_to_t(dpm.sigmas[:-1].numpy()), atol=1e-9)


def test_lms_karras_is_lms_on_the_karras_schedule():
    """The legacy name "LMS Karras" (Automatic) and "LMS" with "Karras" visit the same sigmas and timesteps."""
    old, new = make_plan("LMS Karras", 8, SCHEDULE), schedulers.webui_plan("LMS", 8, SCHEDULE, "Karras")
    torch.testing.assert_close(old.grid.sigmas, new.grid.sigmas, rtol=1e-12, atol=0)
    torch.testing.assert_close(old.grid.timesteps, new.grid.timesteps, rtol=0, atol=1e-9)
    assert old.init_scale == pytest.approx(new.init_scale, rel=1e-12)


def test_churn_changes_the_picture_and_eta_zero_is_euler():
    sigmas = expected("Karras", 6).tolist()
    g = torch.Generator().manual_seed(1)
    first = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(12)]
    plain = ours("euler", sigmas, first, noises)
    assert (ours("euler", sigmas, first, noises, s_churn=2.0) - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours("euler_a", sigmas, first, noises, eta_ancestral=0.0), plain, rtol=0, atol=1e-12)


# --- the infotext's keys and the web UI's job ---------------------------------------------------------------------

@pytest.mark.parametrize("fields, keys", [
    ({}, {}),
    ({"scheduler": "Karras"}, {"Schedule type": "Karras"}),
    ({"scheduler": "sgm_uniform"}, {"Schedule type": "SGM Uniform"}),
    ({"sampler_name": "Euler", "s_churn": 0.5, "s_tmax": 3.0, "s_noise": 1.0},
     {"Sigma churn": "0.5", "Sigma tmax": "3"}),
    ({"sampler_name": "Euler a", "eta": 0.3}, {"Eta": "0.3"}),
    ({"sampler_name": "Euler a", "eta": 1.0}, {}),
    ({"sampler_name": "DDIM", "eta": 0.3}, {"Eta DDIM": "0.3"}),
    ({"sampler_name": "DPM++ 2M", "eta": 0.3, "s_churn": 1.0}, {}),  # neither is DPM++ 2M's
])
def test_the_infotext_keys(fields, keys):
    """`Sampler.initialize` writes "Eta" ("Eta DDIM"), "Sigma churn", ... when not the default; "Schedule type"."""
    settings = check(Settings(prompt="a", seed=1, **fields))
    parsed = infotext.parse(infotext.create(settings, 1, 1))
    names = ("Schedule type", "Eta", "Eta DDIM", "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise")
    assert {k: v for k, v in parsed.items() if k in names} == keys


def test_an_a1111_infotext_reads_back_to_the_fields():
    text = ("a cat\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 7, Seed: 5, "
            "Size: 32x32, Eta: 0.6, Sigma noise: 0.9")
    fields = infotext.to_settings(infotext.parse(text))
    assert (fields["scheduler"], fields["eta"], fields["s_noise"]) == ("Exponential", 0.6, 0.9)


def test_a_job_draws_on_its_schedule(pipe):
    """Settings.scheduler reaches the sampler: Karras draws another picture than Automatic, and each is repeatable."""
    def draw(**fields):
        job = Settings(prompt="a small red circle on the left", steps=4, seed=7, sampler_name="DPM++ 2M", **fields)
        return torch.from_numpy(np.asarray(generate(pipe, job).images[0], dtype=np.float32))

    automatic, karras = draw(), draw(scheduler="Karras")
    assert (automatic - karras).abs().max() > 0
    assert torch.equal(karras, draw(scheduler="Karras"))
    job = Settings(prompt="a", steps=2, seed=1, scheduler="Karras")
    assert "Schedule type: Karras" in generate(pipe, job).infotexts[0]


@pytest.mark.parametrize("sampler", list(SAMPLER_ALIASES))
def test_the_defaults_plan_what_the_app_planned_before(sampler):
    """Settings' defaults (Automatic, eta None, 0, 0, 0, 1) give every sampler the plan `make_plan` gives it."""
    defaults = Settings()
    new = schedulers.webui_plan(sampler, 10, SCHEDULE, defaults.scheduler, eta=defaults.eta, s_churn=defaults.s_churn,
                                s_tmin=defaults.s_tmin, s_tmax=defaults.s_tmax, s_noise=defaults.s_noise)
    old = make_plan(sampler, 10, SCHEDULE)
    assert new.options == () and new.init_scale == old.init_scale and new.eta == old.eta
    for a, b in zip(new.grid, old.grid):
        assert (a is None and b is None) or torch.equal(a, b)
