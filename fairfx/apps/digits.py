"""Real bundled data for demos, tests and benchmarks: scikit-learn's handwritten digits.

1,797 8x8 grey images of 10 digits ship inside scikit-learn, so quality can be measured on real
data with no download. The split is fixed (seeded, stratified) and the test part is never used for
tuning. Three small CNN families (VGG-, ResNet- and DenseNet-style) train in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load(seed: int = 0, size: int = 8) -> Split:
    """Digits as ``[N, 1, size, size]`` floats in [0, 1]; 60/15/25 train/val/test split.

    ``size`` other than the native 8 resamples bilinearly (for architectures that need more).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the demo/dev extras
        raise ImportError("the digits data needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        a, b = int(0.6 * len(idx)), int(0.75 * len(idx))
        parts[0] += idx[:a]
        parts[1] += idx[a:b]
        parts[2] += idx[b:]
    tr, va, te = (torch.tensor(sorted(p)) for p in parts)
    return Split(x[tr], y[tr], x[va], y[va], x[te], y[te])


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, seed: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches, shuffled when ``seed`` is given."""
    order = torch.arange(len(x))
    if seed is not None:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def _cbr(cin: int, cout: int, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VGGStyle(nn.Module):
    """Plain conv stacks and a flatten -> Linear classifier (``bn=False`` for the peer check)."""

    def __init__(self, width: int = 16, bn: bool = True, size: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _cbr(1, w, bn),
            _cbr(w, w, bn),
            nn.MaxPool2d(2),
            _cbr(w, 2 * w, bn),
            _cbr(2 * w, 2 * w, bn),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * w * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNetStyle(nn.Module):
    """A small ResNet: stem, three stages of two basic blocks, global pooling."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _cbr(1, w)
        self.layer1 = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1))
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class DenseNetStyle(nn.Module):
    """Two dense blocks of concat layers with a transition, as in DenseNet."""

    def __init__(self, growth: int = 12) -> None:
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*layers)
        self.trans = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2)
        )
        c //= 2
        layers = []
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block2 = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


ARCHITECTURES = {"vgg": VGGStyle, "resnet": ResNetStyle, "densenet": DenseNetStyle}


def train(
    model: nn.Module,
    split: Split,
    *,
    epochs: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = 64,
) -> nn.Module:
    """Adam on the training split (a few seconds on a CPU); returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        for x, y in batches(split.x_train, split.y_train, batch_size, seed=seed * 1000 + epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, 256))
    model.train(was)
    return correct / len(y)
