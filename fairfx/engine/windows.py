"""torchvision Swin's window attention opened up so its heads can go.

``torchvision.models.swin_transformer.shifted_window_attention`` is one traced-as-a-leaf call that
takes the qkv and projection weights and derives the head width as ``C // num_heads`` from its
input width, and the output width from it too: with heads removed (or the stream narrowed) it
would compute with a wrong head width, so it cannot be pruned as it stands. Capture therefore
replaces every ``ShiftedWindowAttention``/``ShiftedWindowAttentionV2`` of its copy by a
:class:`WindowAttention` whose attention is written with ops the rules know (qkv ``Linear``, a
reshape into ``(3, heads, head_dim)``, ``q @ k^T``, the relative position bias, softmax,
``@ v``, ``proj``), and whose window partition, shift mask and window merge, which only move
tokens, are leaf functions with rules of their own (:mod:`fairfx.engine.rules.indexing`). The
relative position bias is read through ``F.embedding`` (v1: the table's head columns become
channels tied to the heads) or ``index_select`` of the continuous-position MLP's output (v2: its
last Linear's rows are the heads), so a head takes its bias column, its ``logit_scale`` and its
q, k, v rows and ``proj`` columns with it. The v2 qkv bias of k, zeroed on every call by
torchvision, is zeroed once in the copy.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def _pad_shift(x: torch.Tensor, window: list[int], shift: list[int]) -> tuple[torch.Tensor, list]:
    """Pad to whole windows; no shift along an axis one window covers (as torchvision)."""
    _, h, w, _ = x.shape
    pad_w, pad_h = (window[1] - w % window[1]) % window[1], (window[0] - h % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    shift = [0 if window[i] >= x.shape[1 + i] else shift[i] for i in range(2)]
    return x, shift


def window_partition(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * windows, window tokens, C]`` (padded, cyclically shifted)."""
    x, shift = _pad_shift(x, window, shift)
    b, ph, pw, c = x.shape
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(b, ph // window[0], window[0], pw // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_merge(
    y: torch.Tensor, x: torch.Tensor, window: list[int], shift: list[int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition` for ``y``; ``x`` (the input) gives the sizes only."""
    b, h, w, _ = x.shape
    padded, shift = _pad_shift(x[..., :1], window, shift)
    ph, pw, c = padded.shape[1], padded.shape[2], y.shape[-1]
    y = y.view(b, ph // window[0], pw // window[1], window[0], window[1], c)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
    return y[:, :h, :w, :].contiguous()


def shift_mask(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """The additive mask ``[B * windows, 1, N, N]`` keeping attention inside shifted regions
    (-100 across regions, as torchvision); zeros when the windows are not shifted."""
    b = x.shape[0]
    padded, shift = _pad_shift(x[..., :1], window, shift)
    ph, pw = padded.shape[1], padded.shape[2]
    n = window[0] * window[1]
    windows = (ph // window[0]) * (pw // window[1])
    if sum(shift) == 0:
        return x.new_zeros((b * windows, 1, n, n))
    regions = x.new_zeros((ph, pw))
    count = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[hs[0] : hs[1], ws[0] : ws[1]] = count
            count += 1
    regions = regions.view(ph // window[0], window[0], pw // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(windows, n)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
    return mask.unsqueeze(1).repeat(b, 1, 1, 1)


for _name in ("window_partition", "window_merge", "shift_mask"):
    fx.wrap(_name)  # they move tokens only: leaf calls with rules in rules/indexing.py


class WindowAttention(nn.Module):
    """torchvision's (shifted) window attention, v1 or v2, with the head width explicit."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.window_size, self.shift_size = list(m.window_size), list(m.shift_size)
        self.num_heads = m.num_heads
        self.head_dim = m.qkv.out_features // 3 // m.num_heads
        self.qkv, self.proj = m.qkv, m.proj
        self.register_buffer("relative_position_index", m.relative_position_index.view(-1))
        self.v2 = hasattr(m, "cpb_mlp")
        if self.v2:
            self.cpb_mlp, self.logit_scale = m.cpb_mlp, m.logit_scale
            self.register_buffer("relative_coords_table", m.relative_coords_table)
            if m.qkv.bias is not None:  # torchvision zeroes the k bias on every call
                self.qkv = nn.Linear(m.qkv.in_features, m.qkv.out_features)
                self.qkv.weight = m.qkv.weight
                bias = m.qkv.bias.detach().clone()
                bias[bias.numel() // 3 : 2 * bias.numel() // 3] = 0
                self.qkv.bias = nn.Parameter(bias, requires_grad=m.qkv.bias.requires_grad)
        else:
            self.relative_position_bias_table = m.relative_position_bias_table
        self.attn_drop = nn.Dropout(m.attention_dropout) if m.attention_dropout else None
        self.drop = nn.Dropout(m.dropout) if m.dropout else None

    def _bias(self) -> torch.Tensor:
        """``[1, heads, N, N]``: the relative position bias of every head."""
        n = self.window_size[0] * self.window_size[1]
        if self.v2:
            table = self.cpb_mlp(self.relative_coords_table)
            table = table.reshape(-1, self.num_heads)
            bias = 16 * torch.sigmoid(torch.index_select(table, 0, self.relative_position_index))
        else:
            bias = F.embedding(self.relative_position_index, self.relative_position_bias_table)
        return bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        win = window_partition(x, self.window_size, self.shift_size)
        b, n = win.shape[0], win.shape[1]
        qkv = self.qkv(win).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.v2:  # cosine attention, a learned scale per head
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.exp(torch.clamp(self.logit_scale, max=math.log(100.0)))
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        attn = attn + self._bias() + shift_mask(x, self.window_size, self.shift_size)
        attn = attn.softmax(dim=-1)
        if self.attn_drop is not None:
            attn = self.attn_drop(attn)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        if self.drop is not None:
            out = self.drop(out)
        return window_merge(out, x, self.window_size, self.shift_size)


def open_windows(root: nn.Module) -> list[str]:
    """Replace every torchvision ``ShiftedWindowAttention(V2)`` under ``root`` (a structural copy)
    by a :class:`WindowAttention`; returns the qualified names replaced."""
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:  # pragma: no cover
        return []
    done = []
    for prefix, parent in list(root.named_modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ShiftedWindowAttention):
                parent._modules[name] = WindowAttention(child).train(child.training)
                done.append(f"{prefix}.{name}" if prefix else name)
    return done
