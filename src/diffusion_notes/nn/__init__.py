"""Network building blocks shared by the book's models."""

from .embeddings import timestep_embedding

__all__ = ["timestep_embedding"]
