"""The training command: recipes, the loop, the frozen parts bound from the shelf, and shipping.

The only code (with `pretrained.py`) that knows the shipped weights.
"""
