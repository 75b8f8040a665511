"""The channel engine: capture, channel pass, groups, rewrite, cost and the correctness oracle.

Knows nothing of how units are scored; :mod:`fairfx.method` builds on it.
"""
