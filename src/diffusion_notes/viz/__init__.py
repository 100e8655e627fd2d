"""Figures and slider panels for the book (imports nothing of the library).

- `figures`: image grids, PNG bytes, and animations that play without a kernel.
- `panels`: the live sampler panel and its static companions.
- `precomputed`: panels whose frames are stored in the page, so the sliders answer on the
  static website too, and draw live in JupyterLab.
"""

from diffusion_notes.viz.figures import (
                                         denoising_animation,
                                         figure_png,
                                         image_grid,
                                         offline_player,
                                         scatter_animation,
                                         show_jpeg,
                                         to_image,
)
from diffusion_notes.viz.panels import Setting, companion_animation, companion_grid, sampler_panel
from diffusion_notes.viz.precomputed import (
                                         Control,
                                         PrecomputedPanel,
                                         control,
                                         png_parameters,
                                         precomputed_panel,
                                         stamp_png,
)

__all__ = ["Control", "PrecomputedPanel", "Setting", "companion_animation", "companion_grid", "control",
           "denoising_animation", "figure_png", "image_grid", "offline_player", "png_parameters",
           "precomputed_panel", "sampler_panel", "scatter_animation", "show_jpeg", "stamp_png", "to_image"]
