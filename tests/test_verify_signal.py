"""verify compares intermediate tensors at the kept channels, so a model whose output carries no
signal (a zero-initialised head) still has its rewrite proved, and a corrupted one is caught."""

from __future__ import annotations

import torch
from torch import nn

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build

from .models import cbr


class ZeroHead(nn.Module):
    """A freshly built classifier whose head starts at zero (as torchvision's ViT does)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(3, 8), cbr(8, 16), cbr(16, 16))
        self.head = nn.Linear(16, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def _pruned():
    torch.manual_seed(0)
    model = ZeroHead().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = build(model, x)
    return model, x, graph.prune(random_plan(graph))


def test_verify_passes_on_the_correct_rewrite_and_says_the_output_is_silent() -> None:
    model, x, pruned = _pruned()
    report = fairfx.verify(model, pruned, x)
    assert report.passed, str(report)
    assert report.silent_outputs == [0]
    assert report.intermediates_compared >= 6  # three convs, three norms at least
    assert "carry no signal" in str(report)


def test_verify_fails_on_a_corrupted_rewrite_of_a_zero_head_model() -> None:
    model, x, pruned = _pruned()
    with torch.no_grad():
        pruned.get_submodule("body.1.0").weight.add_(0.5)  # a kept filter, wrong weights
        assert not pruned(x).any()  # the output cannot tell
    report = fairfx.verify(model, pruned, x)
    assert not report.passed
    assert "body_1_0" in report.intermediate_failure or "body.1.0" in str(report), str(report)


def test_verify_compares_intermediates_on_a_model_with_signal() -> None:
    torch.manual_seed(1)
    model = ZeroHead().eval()
    nn.init.normal_(model.head.weight)
    x = torch.randn(3, 3, 8, 8)
    graph = build(model, x)
    pruned = graph.prune(random_plan(graph))
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.silent_outputs == [] and report.intermediates_compared > 0
