"""``nn.MultiheadAttention`` opened up into ops the channel rules know, so its heads can go.

A leaf ``nn.MultiheadAttention`` hides its heads: the packed ``in_proj_weight`` holds q, k and v
as three blocks of ``embed_dim`` rows, head ``h`` being rows ``[h*hd, (h+1)*hd)`` of each block,
and no tensor of the graph carries them, so neither the oracle nor FAIR scoring can see a head.
Capture therefore replaces every such module of its copy (never the user's) by a
:class:`SplitAttention`: three ``nn.Linear`` projections cut from the packed weight (or taken from
the separate ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ), a ``reshape`` into
``[N, L, heads, head_dim]``, ``scaled_dot_product_attention`` (or ``softmax(q k^T) v`` when
attention weights are returned or attention dropout trains) and ``out_proj``. Tracing goes
through it, so the head split, the attention rule and the output projection's columns are found
by the general rules (:mod:`fairfx.engine.rules.shape`, :mod:`fairfx.engine.rules.heads`): a head
is one unit (its rows in q, k and v and its columns of ``out_proj``), the ``reshape`` sizes carry
the kept head count, and the head width is unchanged, so the softmax scale is too.

Returned attention weights averaged over heads (``need_weights=True`` when the caller uses them)
reduce over the heads axis, which blocks the heads by the reduction rule; unused weights are
dead code and removed after tracing. ``add_bias_kv`` and ``add_zero_attn`` are not opened
(their extra key/value rows are not sliced here): such a module stays a leaf and blocks.
Unbatched (2-D) inputs are not supported by the opened module.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def _mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    n: int,
    heads: int,
    lq: int,
    lk: int,
    is_causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """One additive float mask ``[n or 1, heads or 1, lq, lk]`` from ``nn.MultiheadAttention``'s
    masks (boolean True = masked, float = added; a 3-D ``attn_mask`` is per head). Masked
    positions get the dtype's lowest finite value instead of -inf: the softmax is the same
    (its exponential is 0 either way) unless a query sees no key at all, where
    ``nn.MultiheadAttention`` returns NaN and this gives equal weights."""

    low = torch.finfo(dtype).min  # finite: the oracle's zero-masking of -inf would give NaN

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, low)
        return m.to(dtype).clamp(min=low)

    out = None
    if attn_mask is not None:
        out = additive(attn_mask)
        out = out.view(n, heads, lq, lk) if out.dim() == 3 else out.view(1, 1, lq, lk)
    elif is_causal:
        causal = torch.ones(lq, lk, dtype=torch.bool, device=device).triu(1)
        out = additive(causal).view(1, 1, lq, lk)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(n, 1, 1, lk)
        out = pad if out is None else out + pad
    return out


fx.wrap("_mask")  # masks carry no channels: one leaf call, no control flow on proxies


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate q, k, v projections; same call and outputs."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # A module, not F.dropout(training=self.training): tracing would freeze the mode.
        self.attn_drop = nn.Dropout(dropout) if dropout > 0 else None

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention) -> SplitAttention:
        """The same attention as ``m``, its weights shared (views of the packed tensors)."""
        e = m.embed_dim
        with torch.device("meta"):  # every tensor is replaced below: allocate none
            new = cls(
                e,
                m.num_heads,
                kdim=m.kdim,
                vdim=m.vdim,
                bias=m.in_proj_bias is not None,
                dropout=m.dropout,
                batch_first=m.batch_first,
            )
        if m._qkv_same_embed_dim:
            weights = [m.in_proj_weight[i * e : (i + 1) * e] for i in range(3)]
            grad = m.in_proj_weight.requires_grad
        else:
            weights = [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]
            grad = m.q_proj_weight.requires_grad
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight = nn.Parameter(weights[i].detach(), requires_grad=grad)
            if m.in_proj_bias is not None:
                b = m.in_proj_bias[i * e : (i + 1) * e].detach()
                proj.bias = nn.Parameter(b, requires_grad=m.in_proj_bias.requires_grad)
        new.out_proj = m.out_proj  # shared, as capture's structural copy shares every tensor
        new.train(m.training)
        return new

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``[N, L, heads * head_dim] -> [N, heads, L, head_dim]``."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        mask = None
        if attn_mask is not None or key_padding_mask is not None or is_causal:
            sizes = (n, self.num_heads, lq, lk)  # a per-head mask's heads block (heads.sdpa)
            mask = _mask(attn_mask, key_padding_mask, *sizes, is_causal, q.dtype, q.device)
        weights = None
        if need_weights or self.attn_drop is not None:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            drop = weights if self.attn_drop is None else self.attn_drop(weights)
            out = drop @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def can_split(m: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` whose every tensor :class:`SplitAttention` can hold."""
    return (
        type(m) is nn.MultiheadAttention
        and m.bias_k is None
        and m.bias_v is None
        and not m.add_zero_attn
    )


def split_attention(root: nn.Module) -> list[str]:
    """Replace every openable ``nn.MultiheadAttention`` under ``root`` (a structural copy) by a
    :class:`SplitAttention`; returns the qualified names replaced."""
    done = []
    for prefix, parent in list(root.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and can_split(child):
                parent._modules[name] = SplitAttention.from_module(child)
                done.append(f"{prefix}.{name}" if prefix else name)
    return done
