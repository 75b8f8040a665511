"""Modules fairfx puts into pruned graphs where a stock module cannot express the smaller shape.

``nn.MultiheadAttention`` ties its input width, its internal width and its output width to one
``embed_dim``. Pruning the residual stream of a transformer changes the input and output widths
but not the attention heads, so the pruned graph uses :class:`PrunedMultiheadAttention`, which
keeps the heads and lets the projections in and out have their own widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.Module):
    """Attention with ``in_features -> num_heads x head_dim -> out_features``.

    Same call signature and outputs as ``nn.MultiheadAttention`` (query, key and value share one
    input width); attention weights are returned averaged over heads when asked.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_features))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, out_features, bias=bias)

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention, in_keep, out_keep) -> PrunedMultiheadAttention:
        in_idx = None if in_keep is None else torch.as_tensor(in_keep.nonzero()[0])
        out_idx = None if out_keep is None else torch.as_tensor(out_keep.nonzero()[0])
        w_in = m.in_proj_weight.detach()
        w_out, b_out = m.out_proj.weight.detach(), m.out_proj.bias
        if in_idx is not None:
            w_in = w_in.index_select(1, in_idx)
        if out_idx is not None:
            w_out = w_out.index_select(0, out_idx)
            b_out = None if b_out is None else b_out.detach().index_select(0, out_idx)
        new = cls(
            w_in.shape[1],
            w_out.shape[0],
            m.num_heads,
            m.head_dim,
            bias=m.in_proj_bias is not None,
            dropout=m.dropout,
            batch_first=m.batch_first,
        )
        # Assign, never copy_: the cost model runs this on meta tensors, which hold no data.
        new.in_proj_weight = _like(w_in, m.in_proj_weight)
        if m.in_proj_bias is not None:
            new.in_proj_bias = _like(m.in_proj_bias.detach(), m.in_proj_bias)
        new.out_proj.weight = _like(w_out, m.out_proj.weight)
        if b_out is not None:
            new.out_proj.bias = _like(b_out.detach(), m.out_proj.bias)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:  # [L, N, C] -> [N, L, C]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        w = self.in_proj_weight.chunk(3)
        b = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q, k, v = (
            F.linear(t, wi, bi)
            .reshape(n, t.shape[1], self.num_heads, self.head_dim)
            .transpose(1, 2)
            for t, wi, bi in zip((query, key, value), w, b, strict=True)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(n, -1, lq, lk)
            scores = _apply_mask(scores, mask)
        if key_padding_mask is not None:
            scores = _apply_mask(scores, key_padding_mask.view(n, 1, 1, lk))
        if is_causal:
            causal = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        weights = scores.softmax(dim=-1)
        attn = F.dropout(weights, self.dropout, self.training) @ v
        out = self.out_proj(attn.transpose(1, 2).reshape(n, lq, -1))
        out = out if self.batch_first else out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _like(value: torch.Tensor, old: torch.Tensor) -> nn.Parameter:
    """A parameter holding a copy of ``value`` with ``old``'s ``requires_grad`` flag."""
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boolean masks hide positions (True = masked); float masks are added, as in PyTorch."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask
