"""timm models (random init, no download): captured (symbolic_trace or torch.export), pruned with
a random plan, verified and exported again; attention heads pruned in ViT, MobileViT and LeViT."""

from __future__ import annotations

import pytest
import torch

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build
from fairfx.engine.rewrite import count_params

# name -> (create_model options, input size, capture path, heads prunable, params kept at most)
CASES = {
    "tf_mobilenetv3_small_100": ({}, 64, "torch.export", False, 0.5),
    "mobilevit_xxs": ({}, 64, "torch.export", True, 0.5),
    # LeViT's heads add attention biases gathered per head from a parameter: they stay.
    "levit_128s": ({"img_size": 64}, 64, "symbolic_trace", False, 0.6),
    "vit_tiny_patch16_224": ({"img_size": 32, "patch_size": 8}, 32, "symbolic_trace", True, 0.5),
}
SLOW = {"mobilevit_xxs", "tf_mobilenetv3_small_100"}  # torch.export captured twice: ~25 s each


@pytest.fixture(scope="module")
def timm():
    import timm

    return timm


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES]
)
def test_timm_prune_verify_export(timm, name: str) -> None:
    options, size, path, heads, kept = CASES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **options).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    graph = build(model, x)
    assert graph.channel_pass.gm.meta.get("fairfx_capture", "symbolic_trace") == path
    blocked = [g for g in graph.groups if not g.prunable]
    if heads or name != "levit_128s":
        assert [g.reason for g in blocked] == ["reaches the model output"]
    head_groups = [g for g in graph.groups if g.unit == "head"]
    assert bool(head_groups) == (name != "tf_mobilenetv3_small_100")  # a CNN has no heads
    if head_groups:  # all() of none is True: the flag is about models that have heads
        assert all(g.prunable for g in head_groups) == heads
    pruned = graph.prune(random_plan(graph))
    assert count_params(pruned) <= kept * count_params(model)
    report = fairfx.verify(model, pruned, x)
    assert report.passed, str(report)
    with torch.no_grad():
        assert torch.equal(torch.export.export(pruned, (x,)).module()(x), pruned(x))
