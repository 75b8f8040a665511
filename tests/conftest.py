"""Shared helpers: build a random plan, prune, and check the result against the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairfx.apps.zoo import random_plan
from fairfx.engine.groups import build
from fairfx.engine.oracle import verify
from fairfx.engine.rewrite import count_params


def prune_and_verify(model: torch.nn.Module, x, *, seed: int = 0, fraction: float = 0.5):
    """Random plan on every prunable group; returns (graph, pruned, report)."""
    model.eval()
    graph = build(model, x)
    pruned = graph.rewrite(random_plan(graph, seed, fraction))
    report = verify(model, pruned, x)
    assert report.passed, str(report)
    with torch.no_grad():
        want, got = model(x), pruned(x)
    assert got.shape == want.shape
    if any(g.prunable for g in graph.groups):
        assert count_params(pruned) < count_params(model)
    return graph, pruned, report


def state_snapshot(model: torch.nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_same_state(model: torch.nn.Module, snap) -> None:
    tensors, modes, grads = snap
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
