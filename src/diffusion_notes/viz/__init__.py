"""Figures and slider panels for the book (imports nothing of the library).

- `figures`: image grids, PNG bytes, and animations that play without a kernel.
- `diagrams`: boxes and arrows, for the block diagrams of the architecture chapters.
- `panels`: the live sampler panel and its static companions.
- `precomputed`: panels whose frames are stored in the page, so the sliders answer on the
  static website too, and draw live in JupyterLab.
"""

from diffusion_notes.viz.diagrams import arrow, box
from diffusion_notes.viz.figures import (
                                         denoising_animation,
                                         figure_png,
                                         image_grid,
                                         offline_player,
                                         pil_row,
                                         scatter_animation,
                                         show_jpeg,
                                         show_row,
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

__all__ = ["Control", "PrecomputedPanel", "Setting", "arrow", "box", "companion_animation", "companion_grid", "control",
           "denoising_animation", "figure_png", "image_grid", "offline_player", "pil_row", "png_parameters",
           "precomputed_panel", "sampler_panel", "scatter_animation", "show_jpeg", "show_row", "stamp_png",
           "to_image"]
