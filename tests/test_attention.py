"""Attention: FAIR scoring through nn.MultiheadAttention, heads of hand-written attention."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fairfx


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=4,
    ).eval()
    torch.nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises the head
    return m


@pytest.mark.parametrize("observe", ["post_act", "module"])
def test_fair_scoring_through_multihead_attention(tiny_vit, observe: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    data = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 4) for _ in range(2)]
    analysis = fairfx.analyze(
        tiny_vit, x, data, observe=observe, progress=False, samples_per_class=4
    )
    out_proj = [g.id for g in analysis.graph.groups if g.prunable and "out_proj" in str(g)]
    assert out_proj and all(analysis.scores[g].r.max() > 0 for g in out_proj)
    plan = analysis.plan_for(params=0.5)
    pruned = analysis.compress(plan)
    info = pruned.meta["fairfx"]
    assert info["params_after"] < 0.6 * info["params_before"]
    report = fairfx.verify(tiny_vit, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
