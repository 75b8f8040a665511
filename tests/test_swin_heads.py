"""Whole heads of torchvision Swin window attention (opened by engine/windows.py), v1 and v2."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

import fairfx
from fairfx.engine.group_graph import build
from fairfx.engine.rewrite import count_params


def _swin(v2: bool) -> SwinTransformer:
    torch.manual_seed(0)
    kw = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=5, **kw,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_swin_heads_go_whole(v2: bool) -> None:
    model, x = _swin(v2), torch.randn(2, 3, 32, 32)
    graph = build(model, x)
    with torch.no_grad():  # the opened attention computes what torchvision's computes
        assert torch.allclose(graph.channel_pass.gm(x), model(x), atol=1e-6)
    heads = [g for g in graph.groups if g.unit == "head"]
    assert [g.size for g in heads] == [2, 2, 4, 4] and all(g.prunable for g in heads)
    bias = "cpb_mlp.2" if v2 else "relative_position_bias_table"
    assert heads[2].producers == ("features.3.0.attn.qkv", f"features.3.0.attn.{bias}")
    pruned = graph.prune({g.id: [0, 3] if g.size == 4 else [1] for g in heads})
    attn = pruned.get_submodule("features.3.0.attn")
    assert attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 2 * 8
    if v2:
        assert (
            attn.logit_scale.shape == (2, 1, 1)
            and attn.get_submodule("cpb_mlp.2").out_features == 2
        )
    else:
        assert attn.relative_position_bias_table.shape[1] == 2
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
    assert count_params(pruned) < count_params(model)
    y = torch.randn(3, 3, 32, 32)
    program = torch.export.export(pruned, (y,))
    assert torch.allclose(program.module()(y), pruned(y), atol=1e-6)


def test_fair_scores_swin_heads() -> None:
    model, x = _swin(False), torch.randn(2, 3, 32, 32)
    data = [(torch.randn(10, 3, 32, 32), torch.arange(10) % 5) for _ in range(2)]
    analysis = fairfx.analyze(model, x, data, progress=False, samples_per_class=4)
    for g in (g for g in analysis.graph.groups if g.unit == "head"):
        s = analysis.scores[g.id]
        assert s.u.shape == (g.size,) and s.r.max() > 0
    pruned = analysis.compress(analysis.plan_for(params=0.5))
    assert fairfx.verify(model, pruned, x).passed
