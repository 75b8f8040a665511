"""Attention: FAIR scoring through nn.MultiheadAttention, heads of hand-written attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fairfx

from .conftest import prune_and_verify


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


class TimmStyleAttention(nn.Module):
    """timm's pattern: one qkv Linear, C read from x.shape, ``reshape(B, N, 3, H, C // H)``."""

    def __init__(self, dim: int = 32, heads: int = 4, sdpa: bool = False) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class GroupedQueryAttention(nn.Module):
    """Four query heads reading two kv heads (``enable_gqa``), Llama's layout."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, kv_heads * self.head_dim)
        self.v = nn.Linear(dim, kv_heads * self.head_dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q = self.q(x).view(B, N, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, N, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, N, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(B, N, -1))


class Transformer(nn.Module):
    def __init__(self, attention: type[nn.Module], **kw) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            block = nn.ModuleDict(
                {
                    "n1": nn.LayerNorm(32),
                    "attn": attention(**kw),
                    "n2": nn.LayerNorm(32),
                    "mlp": nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)),
                }
            )
            self.blocks.append(block)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = x + b["attn"](b["n1"](x))
            x = x + b["mlp"](b["n2"](x))
        return self.head(x.mean(1))


def _head_groups(graph, producer: str):
    return [g for g in graph.groups if producer in g.producers]


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa"])
def test_timm_style_attention_prunes_whole_heads(sdpa: bool) -> None:
    model = Transformer(TimmStyleAttention, sdpa=sdpa).eval()
    x = torch.randn(2, 5, 6)
    graph, pruned, report = prune_and_verify(model, x)
    (qkv,) = _head_groups(graph, "blocks.0.attn.qkv")
    assert qkv.prunable and qkv.unit == "head" and qkv.size == 4
    kept_heads = len(pruned.meta["fairfx"]["units"][qkv.id])
    assert pruned.get_submodule("blocks.0.attn.qkv").out_features == 3 * 8 * kept_heads
    assert pruned.get_submodule("blocks.0.attn.proj").in_features == 8 * kept_heads
    # The residual stream (C read from x.shape) shrank too; C // heads stayed the head width.
    assert pruned.get_submodule("embed").out_features < 32
    assert report.max_abs_diff <= report.tolerance
    other_batch = torch.randn(3, 7, 6)
    assert pruned(other_batch).shape == (3, 3)


def test_grouped_query_attention_keeps_kv_groups() -> None:
    model = Transformer(GroupedQueryAttention).eval()
    x = torch.randn(2, 5, 6)
    graph, pruned, _ = prune_and_verify(model, x)
    (group,) = _head_groups(graph, "blocks.0.attn.q")
    assert set(group.producers) >= {"blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"}
    assert group.unit == "head" and group.size == 2  # two kv groups of two query heads each
    kept = len(pruned.meta["fairfx"]["units"][group.id])
    assert pruned.get_submodule("blocks.0.attn.q").out_features == 16 * kept
    assert pruned.get_submodule("blocks.0.attn.k").out_features == 8 * kept


def test_fair_scores_heads_end_to_end() -> None:
    model = Transformer(TimmStyleAttention).eval()
    x = torch.randn(4, 5, 6)
    data = [(torch.randn(12, 5, 6), torch.arange(12) % 3) for _ in range(2)]
    analysis = fairfx.analyze(model, x, data, progress=False, samples_per_class=8)
    (qkv,) = _head_groups(analysis.graph, "blocks.0.attn.qkv")
    assert analysis.scores[qkv.id].u.shape == (4,) and analysis.scores[qkv.id].r.max() > 0
    pruned = analysis.compress(analysis.plan_for(params=0.6))
    assert fairfx.verify(model, pruned, x).passed


class ShapeIntoTensor(nn.Module):
    """A size read on the channel axis builds a new tensor: the channels must be blocked."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        return self.b(y + torch.ones(y.shape[-1]))


def test_run_time_size_building_a_tensor_blocks() -> None:
    groups = fairfx.channel_groups(ShapeIntoTensor(), torch.randn(2, 6))
    (a,) = [g for g in groups if g.producers == ("a",)]
    assert not a.prunable and "size read at run time" in a.reason
