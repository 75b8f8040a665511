"""Whole heads of ``nn.MultiheadAttention`` (opened by engine/mha.py): plans, oracle, export."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fairfx
from fairfx.engine.group_graph import build
from fairfx.engine.mha import SplitAttention
from fairfx.engine.rewrite import count_params


def _heads(graph):
    return [g for g in graph.groups if g.unit == "head"]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=4,
    ).eval()  # fmt: skip
    nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises the head
    return m


def test_vision_transformer_heads_go_whole(vit) -> None:
    x = torch.randn(2, 3, 32, 32)
    graph = build(vit, x)
    heads = _heads(graph)
    assert len(heads) == 2 and all(g.prunable and g.exact and g.size == 4 for g in heads)
    prefix = "encoder.layers.encoder_layer_0.self_attention"
    assert heads[0].producers == tuple(f"{prefix}.{p}_proj" for p in "qkv")
    assert list(heads[0].channels(f"{prefix}.q_proj")[1]) == list(range(8, 16))  # head 1: rows 8-15
    pruned = graph.prune({g.id: [1, 3] for g in heads})
    for p in "qkv":
        assert pruned.get_submodule(f"{prefix}.{p}_proj").out_features == 16
    assert pruned.get_submodule(f"{prefix}.out_proj").in_features == 16
    report = fairfx.verify(vit, pruned, x)
    assert report.passed and report.tolerance > 0 and report.max_abs_diff <= 1e-5, str(report)
    program = torch.export.export(pruned, (torch.randn(3, 3, 32, 32),))
    y = torch.randn(3, 3, 32, 32)
    assert torch.allclose(program.module()(y), pruned(y), atol=1e-6)


def test_fair_scores_vision_transformer_heads(vit) -> None:
    x = torch.randn(2, 3, 32, 32)
    data = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 4) for _ in range(2)]
    analysis = fairfx.analyze(vit, x, data, progress=False, samples_per_class=4)
    for g in _heads(analysis.graph):
        s = analysis.scores[g.id]
        assert s.u.shape == (4,) and s.r.shape == (4,) and s.r.max() > 0 and s.u.max() > 0


class Cross(nn.Module):
    """Tokens attend to a memory of another width (kdim/vdim) or to themselves."""

    def __init__(self, batch_first: bool, cross: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.batch_first, self.cross = batch_first, cross
        self.embed = nn.Linear(6, 16)
        self.memory = nn.Linear(5, 10 if cross else 16)
        kv = {"kdim": 10, "vdim": 10} if cross else {}
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, dropout=dropout, **kv)
        self.head = nn.Linear(16, 3)

    def forward(self, x, mem, pad):
        q, m = self.embed(x), self.memory(mem)
        if not self.batch_first:
            q, m = q.transpose(0, 1), m.transpose(0, 1)
        y, _ = self.attn(q, m, m, key_padding_mask=pad)
        y = y if self.batch_first else y.transpose(0, 1)
        return self.head(y.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [True, False], ids=["kdim", "same"])
def test_multihead_attention_configurations(batch_first: bool, cross: bool) -> None:
    torch.manual_seed(1)
    model = Cross(batch_first, cross).eval()
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    x = (torch.randn(2, 5, 6), torch.randn(2, 7, 5), pad)
    with torch.no_grad():  # the opened module computes what nn.MultiheadAttention computes
        split = SplitAttention.from_module(model.attn)
        q, m = model.embed(x[0]), model.memory(x[1])
        if not batch_first:
            q, m = q.transpose(0, 1), m.transpose(0, 1)
        want, w_want = model.attn(q, m, m, key_padding_mask=pad)
        got, w_got = split(q, m, m, key_padding_mask=pad)
        assert torch.allclose(got, want, atol=1e-6) and torch.allclose(w_got, w_want, atol=1e-6)
    graph = build(model, x)
    (heads,) = _heads(graph)
    assert heads.prunable and heads.size == 4
    pruned = graph.prune({heads.id: [0, 3]})
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
    assert pruned.get_submodule("attn.k_proj").weight.shape == (8, 10 if cross else 16)
    assert count_params(pruned) < count_params(model)


class ReadsWeights(nn.Module):
    def __init__(self, average: bool) -> None:
        super().__init__()
        self.average = average
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        q = self.embed(x)
        y, w = self.attn(q, q, q, average_attn_weights=self.average)
        return self.head(y.mean(1)) + w.mean()


@pytest.mark.parametrize("average", [True, False])
def test_returned_attention_weights_and_the_heads(average: bool) -> None:
    """Per-head weights read by the caller (``w.mean()`` over every axis) block the heads. The
    head-averaged weights are a mean over the head axis, which the rewrite rescales by
    kept/original heads (rules/reductions.py): the pruned model computes the masked original's
    average exactly, so the heads prune. The stream prunes either way."""
    model, x = ReadsWeights(average).eval(), torch.randn(2, 5, 6)
    graph = build(model, x)
    (heads,) = _heads(graph)
    assert heads.prunable == average
    if average:
        assert fairfx.verify(model, graph.prune({heads.id: [0, 2]}), x).passed
    stream = next(g for g in graph.groups if "embed" in g.producers)
    assert stream.prunable
    pruned = graph.prune({stream.id: list(range(0, 16, 2))})
    assert fairfx.verify(model, pruned, x).passed


def test_attention_dropout_still_trains() -> None:
    """Attention dropout is a module in the opened attention: the pruned model drops in train
    mode and is deterministic in eval mode."""
    torch.manual_seed(0)
    model = Cross(True, False, dropout=0.5).eval()
    x = (torch.randn(2, 5, 6), torch.randn(2, 7, 5), torch.zeros(2, 7, dtype=torch.bool))
    graph = build(model, x)
    (heads,) = _heads(graph)
    pruned = graph.prune({heads.id: [0, 1]})
    assert fairfx.verify(model, pruned, x).passed
    pruned.train()
    assert not torch.equal(pruned(*x), pruned(*x))
    pruned.eval()
    assert torch.equal(pruned(*x), pruned(*x))


def test_unopenable_attention_blocks_with_a_reason() -> None:
    class BiasKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.attn = nn.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            q = self.embed(x)
            return self.head(self.attn(q, q, q, need_weights=False)[0].mean(1))

    groups = fairfx.channel_groups(BiasKV().eval(), torch.randn(2, 5, 6))
    embed = next(g for g in groups if "embed" in g.producers)
    assert not embed.prunable and "add_bias_kv" in embed.reason
