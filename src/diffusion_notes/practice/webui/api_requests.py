"""A txt2img or img2img request read as the web UI reads it: the job's Settings, and what was not done.

    job = build_job(request, state)   # job.settings, job.checkpoint, job.warnings, job.save, job.send

In the web UI's order: the `infotext` fills the fields the request leaves out; the server's options,
then `override_settings`, give the settings that are options there (clip skip, ENSD, the noise
source, old prompt editing, the sampler's churn and noise, eta, the checkpoint), unless the request
sets the field itself; the styles are applied to the prompts; "<lora:...>" tags are taken out when
extra networks are off. Every field of `api_models.A1111_FIELDS` that is set to a value we cannot
honour is named in the warnings (or refused), and so is any key the API does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.api_models import (
    A1111_FIELDS,
    IMG2IMG_ONLY,
    OFF,
    SETTINGS,
    TXT2IMG_ONLY,
    Img2ImgRequest,
    Txt2ImgRequest,
)
from diffusion_notes.practice.webui.extra_networks import parse_tags
from diffusion_notes.practice.webui.generate import Settings, sampler_name
from diffusion_notes.practice.webui.styles import StyleDatabase

# the web UI's options that are Settings fields here (an override, or the server's option, sets them)
OVERRIDES = {"CLIP_stop_at_last_layers": "clip_skip", "eta_noise_seed_delta": "eta_noise_seed_delta",
             "randn_source": "randn_source", "use_old_scheduling": "old_prompt_editing",
             "s_churn": "s_churn", "s_tmin": "s_tmin", "s_tmax": "s_tmax", "s_noise": "s_noise"}
# the server's options besides those, with the web UI's defaults
OPTION_DEFAULTS = {"randn_source": "GPU", "use_old_scheduling": False, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0,
                   "s_noise": 1.0, "eta_ddim": 0.0, "eta_ancestral": 1.0, "sd_vae": "Automatic"}
VAES = ("Automatic", "None")  # the shipped autoencoder is every checkpoint's: "Automatic" and "None" both mean it
# infotext keys -> request fields, besides infotext.to_settings' (the web UI's paste fields)
INFOTEXT_FIELDS = {"Schedule type": ("scheduler", str), "Hires upscale": ("hr_scale", float),
                   "Hires steps": ("hr_second_pass_steps", int), "Hires upscaler": ("hr_upscaler", str),
                   "Hires resize-1": ("hr_resize_x", int), "Hires resize-2": ("hr_resize_y", int),
                   "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str),
                   "Seed resize from-1": ("seed_resize_from_w", int), "Seed resize from-2": ("seed_resize_from_h", int)}
# infotext keys -> the options they override (the web UI's infotext_to_setting_name_mapping, those we have)
INFOTEXT_OPTIONS = {"Clip skip": ("CLIP_stop_at_last_layers", int), "ENSD": ("eta_noise_seed_delta", int),
                    "RNG": ("randn_source", str), "Old prompt editing timelines": ("use_old_scheduling", "bool")}


@dataclass
class Job:
    settings: Settings
    checkpoint: str | None = None
    warnings: list[str] = field(default_factory=list)
    save: bool = False  # write the PNGs (the request's save_images)
    send: bool = True  # answer with the pictures (send_images)
    keep: dict = field(default_factory=dict)  # overrides kept as the server's options afterwards


def styles_of(state) -> StyleDatabase:
    """The server's styles (`state.styles`), an empty database when it keeps none."""
    styles = getattr(state, "styles", None)
    return styles.current() if styles is not None else StyleDatabase(None)


def fill_from_infotext(request: Txt2ImgRequest, state) -> dict:
    """Set the fields the request leaves out from its `infotext`, as the web UI's apply_infotext; returns the parse."""
    if not request.infotext:
        return {}
    parsed = infotext.parse(request.infotext)
    found, prompt, negative = styles_of(state).extract(parsed["Prompt"], parsed["Negative prompt"])
    if found:
        parsed.update({"Prompt": prompt, "Negative prompt": negative, "Styles array": found})
    values = {k: v for k, v in infotext.to_settings(parsed).items() if k not in ("sd_model_hash", "sd_model_name")}
    for key, (name, kind) in INFOTEXT_FIELDS.items():
        if key in parsed:
            values[name] = _typed(key, parsed[key], kind)
    if "Styles array" in parsed:
        values["styles"] = parsed["Styles array"]
    if "Denoising strength" in parsed and any(k in parsed for k in ("Hires upscale", "Hires upscaler",
                                                                    "Hires resize-1")):
        values["enable_hr"] = True
    for name, value in values.items():
        if name in type(request).model_fields and name not in request.model_fields_set:
            setattr(request, name, value)
    overrides = dict(request.override_settings or {})
    for key, (option, kind) in INFOTEXT_OPTIONS.items():
        if key in parsed:
            overrides.setdefault(option, _typed(key, parsed[key], kind))
    request.override_settings = overrides
    return parsed


def _typed(key: str, value, kind):
    if kind == "bool":
        return str(value).lower() == "true"
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"the infotext's {key!r} is {value!r}, not a {kind.__name__}") from None


def field_warnings(request: Txt2ImgRequest) -> list[str]:
    """The fields set to a value the API cannot honour (a ValueError for a refused one), and the unknown keys."""
    img2img = isinstance(request, Img2ImgRequest)
    out = []
    for name in [n for n in type(request).model_fields if n in request.model_fields_set]:
        status, note = A1111_FIELDS.get(name, ("honoured", ""))
        value = getattr(request, name)
        if status != "honoured" and value not in OFF.get(name, (None,)) and _active(request, name):
            if status == "refused":
                raise ValueError(f"{name}={value!r} is not offered here: {note}")
            out.append(f"{name}={_short(value)} was not applied: {note}")
    wrong = TXT2IMG_ONLY if img2img else IMG2IMG_ONLY
    defaults = {f.name: f.default for f in SETTINGS}
    for name in sorted(wrong & request.model_fields_set & set(defaults)):
        if getattr(request, name) not in (None, defaults[name]):
            out.append(f"{name} has no effect in {'img2img' if img2img else 'txt2img'}")
    if request.model_extra:
        out.append(f"unknown field(s) ignored: {', '.join(sorted(request.model_extra))}")
    return out


def _active(request: Txt2ImgRequest, name: str) -> bool:
    """Whether a field acts at all in the web UI with the rest of this request (hires fields need enable_hr)."""
    if name in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "firstpass_image"):
        return bool(request.enable_hr) and not (name == "hr_sampler_name"
                                                and request.hr_sampler_name == request.sampler_name)
    if name == "refiner_switch_at":
        return request.refiner_checkpoint not in OFF["refiner_checkpoint"]
    return True


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def apply_options(values: dict, request: Txt2ImgRequest, state, warnings: list[str]) -> tuple[str | None, dict]:
    """The options' and overrides' Settings fields into `values`; returns (the job's checkpoint, the overrides)."""
    overrides = dict(request.override_settings or {})
    options = {**OPTION_DEFAULTS, **getattr(state, "options", {})}
    for option, name in OVERRIDES.items():
        if name not in request.model_fields_set:
            value = overrides.get(option, options.get(option))
            if value is not None:
                values[name] = value
    if "eta" not in request.model_fields_set:
        eta = _eta(values.get("sampler_name", Settings.sampler_name), overrides, options)
        if eta is not None:
            values["eta"] = eta
    vae = overrides.get("sd_vae", options.get("sd_vae"))
    if vae not in VAES:
        raise ValueError(f"unknown sd_vae {vae!r}: the autoencoder is every checkpoint's own; use one of "
                         f"{', '.join(VAES)}")
    known = {*OVERRIDES, *OPTION_DEFAULTS, "sd_model_checkpoint", "sd_checkpoint_hash"}
    if overrides.get("samples_format", "png") != "png":
        warnings.append(f"override_settings.samples_format={overrides['samples_format']!r}: the PNGs stay PNGs")
    ignored = sorted(set(overrides) - known - {"samples_format"})
    if ignored:
        warnings.append(f"override_settings: {', '.join(ignored)} not applied (not options this server has)")
    return overrides.get("sd_model_checkpoint"), overrides


def _eta(name: str, overrides: dict, options: dict):
    """eta from the eta_ancestral or eta_ddim option, as the web UI reads it when the request has none.

    None where it is the sampler's own default (ancestral 1, DDIM 0) or the sampler reads neither.
    """
    try:
        name = sampler_name(name)
    except ValueError:
        return None  # generate names the unknown sampler
    key, default = ("eta_ancestral", 1.0) if re.search(r" a\b", name) else ("eta_ddim", 0.0) if name == "DDIM" \
        else (None, None)
    if key is None:
        return None
    value = overrides.get(key, options.get(key, default))
    return None if value == default else value


def apply_styles(values: dict, request: Txt2ImgRequest, state, warnings: list[str]) -> None:
    """The named styles applied to the prompt, the negative prompt and the hires prompts that are set."""
    names = request.styles or []
    if not names:
        return
    styles = styles_of(state)
    unknown = styles.unknown(names)
    if unknown:
        warnings.append(f"styles: {', '.join(map(repr, unknown))} not in the styles file; they add nothing")
    prompt, negative = styles.apply(values.get("prompt", ""), values.get("negative_prompt", ""), names)
    values.update(prompt=prompt, negative_prompt=negative)
    if values.get("hr_prompt") or values.get("hr_negative_prompt"):
        hr, hr_negative = styles.apply(values.get("hr_prompt", ""), values.get("hr_negative_prompt", ""), names)
        values.update(hr_prompt=hr if values.get("hr_prompt") else "",
                      hr_negative_prompt=hr_negative if values.get("hr_negative_prompt") else "")


def build_job(request: Txt2ImgRequest, state) -> Job:
    """The request's Settings (without its images and units), checkpoint and warnings."""
    fill_from_infotext(request, state)
    warnings = field_warnings(request)
    values = request.values()
    checkpoint, overrides = apply_options(values, request, state, warnings)
    apply_styles(values, request, state, warnings)
    if request.firstphase_width or request.firstphase_height:  # the web UI's older name for the first pass's size
        values.update(width=request.firstphase_width, height=request.firstphase_height)
    if request.disable_extra_networks:
        values["prompt"] = parse_tags(values.get("prompt", ""))[0]
    keep = {} if request.override_settings_restore_afterwards else overrides
    return Job(Settings(**values), checkpoint, warnings, save=request.save_images, send=request.send_images,
               keep=keep)
