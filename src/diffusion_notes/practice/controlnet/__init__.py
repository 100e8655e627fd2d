"""Part IV, Chapter 17: ControlNet on the book's own UNet (Zhang et al. 2023)."""
