"""The FAIR-Pruner method: calibration, U and R scores, Tolerance of Difference, plans, fine-tuning.

Builds on :mod:`fairfx.engine` for the channel groups and the rewrite.
"""
