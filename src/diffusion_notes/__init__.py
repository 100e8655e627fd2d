"""diffusion_notes: the small PyTorch library behind the book.

Each module holds one part of the story; the book's chapters import them.
"""

__version__ = "0.1.0"
