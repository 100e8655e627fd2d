"""The ControlNet extension's preprocessors that fit our conditions, and its resize modes.

A unit of the web UI's ControlNet extension names a preprocessor ("module") that turns the
picture it is sent into the condition image, and a resize mode that fits that condition to the
size being drawn:

    module "none"    the picture is the condition (white strokes on black, as ours were trained on)
    module "invert"  255 - picture: a black drawing on white becomes white on black
    module "canny"   the picture's edges (skimage's Canny detector), white on black

    "Just Resize"      stretch to H x W
    "Crop and Resize"  scale until it covers H x W, then cut the middle out  (the extension's default)
    "Resize and Fill"  scale until it fits inside H x W, then pad with the border's median colour

Preprocessors run at `processor_res` pixels on the short side (the extension's "Preprocessor
Resolution"); pixel-perfect mode picks the resolution that lands on the size being drawn. Maps
of two colours (edges, masks) are resized the way the extension resizes them: area-averaged,
thresholded back to two colours by Otsu's method, and thinned back to one-pixel lines when the
map was made of such lines (the extension thins with its own routine; this one uses skimage's).

Arrays are (H, W, 3) uint8, as the extension's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill"}


@dataclass(frozen=True)
class Slider:
    """A preprocessor's setting as the extension's module_list describes it (its `api_json`)."""

    name: str
    value: float
    min: float
    max: float
    step: float = 1.0

    def api(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Module:
    """A preprocessor: its name, its label in the extension's list, its sliders and the control types it serves."""

    name: str
    label: str
    sliders: tuple  # (resolution or None, threshold_a or None, threshold_b or None)
    tags: tuple = ()

    def api(self) -> dict:
        return {"model_free": False, "sliders": [s.api() for s in self.sliders if s is not None]}


MODULES = {  # in the extension's order: "none" first, then by its sorting priority (canny 100, invert 20)
    "none": Module("none", "none", (RESOLUTION, None, None)),
    "canny": Module("canny", "canny", (RESOLUTION, Slider("Low Threshold", 100, 1, 255),
                                        Slider("High Threshold", 200, 1, 255)), ("Canny",)),
    "invert": Module("invert", "invert (from white bg & black line)", (None, None, None), ("Canny",)),
}


def module(name: str) -> Module:
    """A preprocessor by its name or its label; a ValueError lists the ones there are."""
    for m in MODULES.values():
        if name in (m.name, m.label):
            return m
    raise ValueError(f"unknown ControlNet preprocessor (module) {name!r}; the preprocessors here are "
                     f"{', '.join(MODULES)}")


def resize_mode(value) -> str:
    """The extension's resize mode from its name, an alias or its number (0, 1, 2; 3 is "Just Resize")."""
    if isinstance(value, bool):
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)} or 0-2, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return RESIZE_MODES[value] if value < len(RESIZE_MODES) else RESIZE_MODES[0]
    value = RESIZE_ALIASES.get(value, value)
    if value not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)} or 0-2, got {value!r}")
    return value


def hwc3(image) -> np.ndarray:
    """A PIL image or an array -> (H, W, 3) uint8; grey is repeated, alpha is laid over white (the extension's HWC3)."""
    x = np.asarray(image.convert("RGBA") if isinstance(image, Image.Image) and image.mode not in ("RGB", "L")
                   else image)
    if x.dtype != np.uint8:
        raise ValueError(f"a condition image must be 8-bit, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.repeat(x, 3, axis=2)
    if x.shape[2] == 4:
        alpha = x[:, :, 3:4].astype(np.float32) / 255
        return (x[:, :, :3] * alpha + 255 * (1 - alpha)).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(x[:, :, :3])


def _resize(x: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    return np.asarray(Image.fromarray(x).resize(size, resample))  # size = (W, H)


def canny(image, low_threshold: float = 100, high_threshold: float = 200) -> np.ndarray:
    """Edges of an (H, W, 3) uint8 picture, white (255) on black, (H, W, 3).

    skimage's Canny detector on the picture's brightest channel in 0-255 units, with no smoothing
    first; the thresholds are its hysteresis bounds. The extension calls OpenCV's Canny, which also
    smooths nothing and on a colour picture follows the channel whose gradient is strongest.
    """
    from skimage.feature import canny as skimage_canny  # scikit-image: the web UI's extra

    grey = hwc3(image).max(axis=2).astype(np.float64)  # (H, W) in 0..255
    edges = skimage_canny(grey, sigma=0, low_threshold=min(low_threshold, high_threshold),
                          high_threshold=max(low_threshold, high_threshold))
    return np.repeat((edges * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def invert(image) -> np.ndarray:
    """255 - the picture: a black drawing on white made white on black."""
    return 255 - hwc3(image)


def at_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """The picture scaled so that its short side is `resolution` (bicubic up, area down), as the extension does."""
    h, w, _ = image.shape
    k = resolution / min(h, w)
    size = (int(round(w * k)), int(round(h * k)))
    return image if size == (w, h) else _resize(image, size, Image.BICUBIC if k > 1 else Image.BOX)


def _bounded(value, slider: Slider | None) -> float:
    """The extension's bound check: a value outside the slider's range (-1 by default) takes the slider's value."""
    if slider is None:
        return -1
    return slider.value if value is None or not slider.min <= value <= slider.max else value


def detect(name: str, image, processor_res=-1, threshold_a=-1, threshold_b=-1, exact_res: bool = False) -> np.ndarray:
    """Run preprocessor `name` on a picture -> its map (H', W', 3) uint8, before resizing to the size drawn.

    Settings outside a slider's range take its default, unless `exact_res` (pixel-perfect mode) keeps the resolution.
    """
    m = module(name)
    image = hwc3(image)
    res, a, b = (_bounded(v, s) for v, s in zip((processor_res, threshold_a, threshold_b), m.sliders))
    res = processor_res if exact_res else res
    if m.name == "none":
        return image
    if m.name == "invert":
        return invert(image)
    return canny(at_resolution(image, int(res)), a, b)


def pixel_perfect_resolution(image: np.ndarray, height: int, width: int, mode: str) -> int:
    """The preprocessor resolution that lands on the size drawn: the short side after the resize mode's scaling.

    $$\\text{res} = \\operatorname{round}(k \\cdot \\min(H, W)),\\quad k = \\min \\text{ or } \\max(h / H, w / W)$$
    with min for "Resize and Fill" and max otherwise (the extension's `pixel_perfect_resolution`).
    """
    h, w = image.shape[:2]
    k = (min if mode == "Resize and Fill" else max)(height / h, width / w)
    return int(np.round(k * min(h, w)))


def _two_colour_resize(x: np.ndarray, size: tuple[int, int], bigger: bool) -> np.ndarray:
    """A two-colour map resized, thresholded by Otsu's method and, if it was one-pixel lines, thinned."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import thin

    opened = ndimage.grey_dilation(ndimage.grey_erosion(x, size=(3, 3, 1)), size=(3, 3, 1))
    one_pixel_edges = np.count_nonzero(opened < x) * 2 > np.count_nonzero(x > 127)
    y = _resize(x, size, Image.BICUBIC if bigger else Image.BOX).astype(np.float32).mean(axis=2)  # (h, w)
    on = y > threshold_otsu(y) if y.max() > y.min() else y > 127
    if one_pixel_edges:
        on = thin(on)
    return np.repeat((on * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def high_quality_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The extension's map resize: nearest for few-colour maps, area down, bicubic up; two-colour maps stay so."""
    w, h = size
    if x.shape[:2] == (h, w):
        return x
    colours = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
    smaller, bigger = w * h < x.shape[0] * x.shape[1], w * h > x.shape[0] * x.shape[1]
    if colours == 2 and x.min() < 16 and x.max() > 240:
        return _two_colour_resize(x, size, bigger)
    resample = Image.NEAREST if 2 < colours < 200 else Image.BOX if smaller else Image.BICUBIC
    return _resize(x, size, resample)


def fit(detected: np.ndarray, mode: str, height: int, width: int) -> np.ndarray:
    """A map fitted to (height, width) by the resize mode (the extension's `detectmap_proc`), (height, width, 3)."""
    mode = resize_mode(mode)
    if mode == "Just Resize":
        return high_quality_resize(detected, (width, height))
    h0, w0, _ = detected.shape
    k = (min if mode == "Resize and Fill" else max)(height / h0, width / w0)
    scaled = high_quality_resize(detected, (int(np.round(w0 * k)), int(np.round(h0 * k))))
    h1, w1, _ = scaled.shape
    if mode == "Resize and Fill":  # pad with the median of the border pixels
        border = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]])
        out = np.tile(np.median(border, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        top, left = max(0, (height - h1) // 2), max(0, (width - w1) // 2)
        out[top:top + h1, left:left + w1] = scaled
        return out
    top, left = max(0, (h1 - height) // 2), max(0, (w1 - width) // 2)  # crop the middle
    return scaled[top:top + height, left:left + width]


def condition_image(image, name: str = "none", mode="Crop and Resize", size: int = 32, processor_res=-1,
                    threshold_a=-1, threshold_b=-1, pixel_perfect: bool = False) -> tuple[Image.Image, np.ndarray]:
    """A unit's picture -> (the size x size condition the ControlNet reads, the preprocessor's map before fitting)."""
    mode = resize_mode(mode)
    picture = hwc3(image)
    if pixel_perfect:
        processor_res = pixel_perfect_resolution(picture, size, size, mode)
    detected = detect(name, picture, processor_res, threshold_a, threshold_b, exact_res=pixel_perfect)
    return Image.fromarray(fit(detected, mode, size, size)), detected
