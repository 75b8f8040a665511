"""Randomly generated architectures must pass the oracle for random plans (hypothesis)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from .conftest import prune_and_verify

BLOCKS = ("conv", "residual", "concat", "depthwise", "grouped", "se", "split", "shuffle")


class Block(nn.Module):
    """One randomly chosen block; ``out`` is its channel count."""

    def __init__(self, kind: str, cin: int, width: int, bn: bool) -> None:
        super().__init__()
        self.kind = kind
        norm = nn.BatchNorm2d if bn else nn.Identity
        if kind == "conv":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), norm(width), nn.ReLU())
            self.out = width
        elif kind == "residual":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), norm(width), nn.ReLU())
            self.g = nn.Conv2d(width, cin, 1)
            self.out = cin
        elif kind == "concat":
            self.f = nn.Conv2d(cin, width, 1)
            self.g = nn.Conv2d(cin, width + 2, 3, padding=1)
            self.out = cin + 2 * width + 2
        elif kind == "depthwise":
            self.f = nn.Sequential(nn.Conv2d(cin, cin * 2, 3, padding=1, groups=cin), norm(cin * 2))
            self.out = cin * 2
        elif kind == "grouped":
            self.f = nn.Conv2d(cin, 2 * width, 1)
            self.g = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2)
            self.out = 2 * width
        elif kind == "se":
            self.f = nn.Conv2d(cin, 2, 1)
            self.g = nn.Conv2d(2, cin, 1)
            self.out = cin
        elif kind == "split":
            self.f = nn.Conv2d(cin, 2 * width, 1)
            self.g = nn.Conv2d(width, width, 3, padding=1)
            self.out = 2 * width
        else:  # shuffle
            self.f = nn.Conv2d(cin, 2 * width, 1)
            self.out = 2 * width

    def forward(self, x):
        k = self.kind
        if k in ("conv", "depthwise"):
            return self.f(x)
        if k == "residual":
            return x + self.g(self.f(x))
        if k == "concat":
            return torch.cat([x, F.relu(self.f(x)), self.g(x)], dim=1)
        if k == "grouped":
            return F.relu(self.g(self.f(x)))
        if k == "se":
            return x * torch.sigmoid(self.g(F.relu(self.f(x.mean((2, 3), keepdim=True)))))
        if k == "split":
            a, b = self.f(x).chunk(2, dim=1)
            return torch.cat([self.g(b), a], dim=1)
        y = self.f(x)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class RandomNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int], bn: bool, flatten: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        blocks, c = [], 4
        for kind, w in zip(kinds, widths, strict=True):
            blocks.append(Block(kind, c, w, bn))
            c = blocks[-1].out
        self.blocks = nn.Sequential(*blocks)
        self.flatten = flatten
        self.head = nn.Linear(c * (4 if flatten else 1), 3)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1) if self.flatten else x.mean((2, 3))
        return self.head(x)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    widths=st.lists(st.integers(2, 6), min_size=5, max_size=5),
    bn=st.booleans(),
    flatten=st.booleans(),
    seed=st.integers(0, 3),
    fraction=st.sampled_from([0.25, 0.5, 0.75]),
)
def test_random_architecture_passes_oracle(kinds, widths, bn, flatten, seed, fraction) -> None:
    torch.manual_seed(seed)
    model = RandomNet(kinds, widths[: len(kinds)], bn, flatten).eval()
    x = torch.randn(2, 3, 6, 6)
    prune_and_verify(model, x, seed=seed, fraction=fraction)
