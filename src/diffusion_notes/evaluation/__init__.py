"""The Shapes judge: the attribute classifier, the image metrics and the 2-D toy metrics.

Imports only `data/`, `nn/` and `device`; every judge is passed to the evaluations that use it.
"""
