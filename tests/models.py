"""Small models exercising one channel rule each (used by the engine tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, **kw), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.sub = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.b(self.a(x)) + x
        y = y - self.sub(y)
        return self.head(y.mean(dim=(2, 3)))


class Concat(nn.Module):
    """cat of two producers, cat([x, x]) and a consumer reading the offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Conv2d(3, 6, 3, padding=1)
        self.q = nn.Conv2d(3, 4, 3, padding=1)
        self.r = nn.Conv2d(22, 7, 1)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        a, b = F.relu(self.p(x)), self.q(x)
        y = torch.cat([a, b, torch.cat([a, a], dim=1)], dim=1)
        return self.head(F.adaptive_avg_pool2d(self.r(y), 1).flatten(1))


class SplitChunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Conv2d(3, 12, 3, padding=1)
        self.q = nn.Conv2d(6, 5, 1)
        self.r = nn.Conv2d(4, 5, 1)
        self.s = nn.Conv2d(2, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        x = self.p(x)
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(b, [4, 2], dim=1)
        y = self.q(a) + self.r(c) + self.s(d) + self.q(x[:, 3:9])
        return self.head(y.mean((2, 3)))


class FlattenLinear(nn.Module):
    """flatten -> Linear with a hard-coded view size (VGG / AlexNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = cbr(3, 10)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(40, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(self.c(x))
        x = x.view(x.size(0), 10 * 2 * 2)
        return self.fc2(F.relu(self.fc(x)))


class ChannelsLast(nn.Module):
    """permute to channel-last, Linear and LayerNorm over channels, permute back (ConvNeXt)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.rand(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.c(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.ln(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(12, 24, 3, padding=1, groups=12)  # depthwise, multiplier 2
        self.gn = nn.GroupNorm(4, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.gn(self.dw(self.g(self.a(x)))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = cbr(3, 16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.c(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head((x * s).mean((2, 3)))


class Shuffle(nn.Module):
    """ShuffleNet channel shuffle through view/transpose/view, then pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 8, 1)
        self.e = nn.Conv2d(2, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.c(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        x = F.pixel_shuffle(self.d(x), 2)
        return self.head(self.e(x).mean((2, 3)))


class Functional(nn.Module):
    """F.conv2d / F.linear on parameters and a module called twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)
        self.b = nn.Parameter(torch.zeros(8))
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.lw = nn.Parameter(torch.randn(6, 8) * 0.1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w, self.b, padding=1))
        x = self.shared(F.relu(self.shared(x)))
        return self.head(F.linear(x.mean((2, 3)), self.lw))


class Conv1d3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.c2 = nn.Conv1d(6, 4, 1)
        self.t = nn.ConvTranspose1d(4, 5, 2, stride=2)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y = self.t(self.c2(F.relu(self.bn(self.c1(x)))))
        return self.head(y.amax(dim=2))


class Unsupported(nn.Module):
    """cumsum along channels has no rule: the producer's channels must be blocked, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.d = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.cumsum(self.c(x), dim=1) + torch.fft.fft2(self.d(x)).real
        return self.head(y.mean((2, 3)))


class Attention(nn.Module):
    """Tokens through self-attention (sequence-first, weights returned) with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.mlp = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)  # [L, N, 8]
        y, w = self.attn(self.ln(x), self.ln(x), self.ln(x))
        x = x + y + w.sum() * 0
        x = x + self.mlp(x)
        return self.head(x.mean(0))


CASES = {
    "residual": (Residual, (2, 3, 8, 8)),
    "concat": (Concat, (2, 3, 8, 8)),
    "split_chunk": (SplitChunk, (2, 3, 8, 8)),
    "flatten_linear": (FlattenLinear, (2, 3, 8, 8)),
    "channels_last": (ChannelsLast, (2, 3, 8, 8)),
    "grouped": (Grouped, (2, 3, 8, 8)),
    "squeeze_excite": (SqueezeExcite, (2, 3, 8, 8)),
    "shuffle": (Shuffle, (2, 3, 8, 8)),
    "functional": (Functional, (2, 3, 8, 8)),
    "conv1d": (Conv1d3d, (2, 2, 10)),
    "attention": (Attention, (5, 2, 6)),
}
