"""The web UI's scripts through the API: `script_name`/`script_args`, `alwayson_scripts`, and their lists.

    {"script_name": "x/y/z plot", "script_args": [4, "5, 10, 20", [], 6, "2, 4", [], 0, "", [],
                                                   True, False, False, False, False, False, False, 0, False]}

`script_args` for the X/Y/Z plot are in the web UI's order (its xyz_grid.py `run`): x_type,
x_values, x_values_dropdown, the same for y and z, draw_legend, include_lone_images,
include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size,
csv_mode. An axis type is its index in the web UI's list of axes for that tab (`axis_labels`), or
its label; the axes our plot (`xyz`) has are Nothing, Seed, Steps, CFG Scale, Prompt S/R and
Sampler, and another is a 422 that lists them. Arguments the plot cannot honour are warned.

`alwayson_scripts` may name the ControlNet extension ("controlnet" or "ControlNet"); any other name
is a 422, as the web UI answers for a script it does not have. GET /sdapi/v1/scripts lists the
ControlNet extension as the web UI does, with its "controlnet m2m" script, which clients such as
webuiapi look for to know that they must send an empty unit list to switch ControlNet off; that
script itself is not run here.
"""

from __future__ import annotations

from diffusion_notes.practice.webui import xyz

XYZ = "x/y/z plot"
CONTROLNET = "controlnet"
CONTROLNET_M2M = "controlnet m2m"
# the web UI's X/Y/Z axes in order (its xyz_grid.py axis_options, v1.10); "t2i"/"i2i" mark one tab's own
_AXES = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "t2i:Hires steps", "CFG Scale",
         "i2i:Image CFG Scale", "Prompt S/R", "Prompt order", "t2i:Sampler", "t2i:Hires sampler", "i2i:Sampler",
         "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max",
         "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
         "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
         "Extra noise", "t2i:Hires upscaler", "i2i:Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order",
         "Face restore", "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
         "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size"]
ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
             "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
             "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")
ARG_DEFAULTS = (1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False)
# arguments the plot cannot honour, with the value that leaves each off
UNHONOURED = {"draw_legend": True, "include_sub_grids": False, "no_fixed_seeds": False, "vary_seeds_x": False,
              "vary_seeds_y": False, "vary_seeds_z": False, "margin_size": 0}


def axis_labels(img2img: bool) -> list[str]:
    """The web UI's axis labels for the txt2img or img2img tab, in the order its x_type indices count."""
    own, other = ("i2i:", "t2i:") if img2img else ("t2i:", "i2i:")
    return [a.removeprefix(own) for a in _AXES if not a.startswith(other)]


def scripts_list() -> dict:
    """GET /sdapi/v1/scripts: the scripts' names on each tab, as the web UI lists them."""
    names = [XYZ, CONTROLNET, CONTROLNET_M2M]
    return {"txt2img": names, "img2img": names}


def script_info() -> list[dict]:
    """GET /sdapi/v1/script-info: each script's arguments (label, default value, choices)."""
    out = []
    for img2img in (False, True):
        labels = axis_labels(img2img)
        args = [{"label": name, "value": value, "minimum": None, "maximum": None, "step": None,
                 "choices": labels if name.endswith("_type") else None}
                for name, value in zip(ARG_NAMES, ARG_DEFAULTS)]
        out.append({"name": XYZ, "is_alwayson": False, "is_img2img": img2img, "args": args})
        out.append({"name": CONTROLNET, "is_alwayson": True, "is_img2img": img2img, "args": []})
    return out


def check_alwayson(scripts: dict | None) -> dict | None:
    """alwayson_scripts' ControlNet entry (either spelling), or a 422 for a script that is not here."""
    if not scripts:
        return None
    if not isinstance(scripts, dict):
        raise ValueError("alwayson_scripts must be a JSON object")
    for name in scripts:
        if name.lower() == XYZ:
            raise ValueError("Cannot have a selectable script in the always on scripts params")
        if name.lower() != CONTROLNET:
            raise ValueError(f"always on script {name!r} not found; the always-on scripts here are: ControlNet")
    found = [v for k, v in scripts.items() if k.lower() == CONTROLNET]
    return found[0] if found else None


def plot_arguments(script_name: str | None, script_args: list, img2img: bool) -> dict | None:
    """The X/Y/Z plot's keyword arguments for `xyz.run` (with "warnings"), None without a script; a 422 otherwise."""
    if not script_name:
        return None
    if script_name.lower() != XYZ:
        raise ValueError(f"Script {script_name!r} not found; the scripts here are: {XYZ}")
    if not isinstance(script_args, list) or len(script_args) > len(ARG_NAMES):
        raise ValueError(f"script_args for {XYZ!r} must be a list of at most {len(ARG_NAMES)} values: "
                         f"{', '.join(ARG_NAMES)}")
    args = dict(zip(ARG_NAMES, ARG_DEFAULTS)) | dict(zip(ARG_NAMES, script_args))
    out, warnings = {}, []
    for axis in "xyz":
        label = _axis(args[f"{axis}_type"], img2img)
        values = args[f"{axis}_values"]
        dropdown = args[f"{axis}_values_dropdown"]
        if label == "Sampler" and not args["csv_mode"] and dropdown:  # a choice axis reads its dropdown
            values = ", ".join(map(str, dropdown))
        out[f"{axis}_type"], out[f"{axis}_values"] = label, "" if values is None else str(values)
    for name, off in UNHONOURED.items():
        if args[name] != off:
            warnings.append(f"script_args {name}={args[name]!r} was not applied: the plot draws its grid one way")
    return {**out, "include_lone_images": bool(args["include_lone_images"]), "warnings": warnings}


def _axis(value, img2img: bool) -> str:
    labels = axis_labels(img2img)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"an X/Y/Z axis type is an index into {labels} or a label, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(labels):
            raise ValueError(f"X/Y/Z axis index {value} is out of range 0-{len(labels) - 1}")
        value = labels[value]
    if value not in xyz.AXES:
        raise ValueError(f"the X/Y/Z axis {value!r} is not offered here; the axes are {', '.join(xyz.AXES)}")
    return value
