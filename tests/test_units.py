"""Plans by unit: every group says which channels each unit holds, and plans by group id work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairfx
from fairfx.engine.group_graph import build
from fairfx.errors import PlanError

from . import models


class NormGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.mid = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.mid(torch.relu(self.gn(self.conv(x))))
        return self.head(x.mean((2, 3)))


class GroupedOut(nn.Module):
    """A grouped conv whose own output channels are prunable (read by a dense 1x1 conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.c = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.c(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


def test_grouped_conv_output_units() -> None:
    model = GroupedOut().eval()
    group = next(g for g in fairfx.channel_groups(model, X) if "g" in g.producers)
    assert group.prunable and group.size == 3  # 12 channels, 4 conv groups of 3
    assert group.channels("g") == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    pruned = fairfx.prune(model, X, {group.id: [0, 2]})
    assert pruned.get_submodule("g").out_channels == 8
    assert pruned.get_submodule("c").in_channels == 8
    assert fairfx.verify(model, pruned, X).passed
    with pytest.raises(PlanError, match="one unit"):
        fairfx.prune(model, X, {"g": [0, 1, 2, 3, 4, 5, 6, 7]})  # 8 channels, but not whole units


def test_group_norm_units_are_whole_norm_groups() -> None:
    model = NormGroups().eval()
    group = next(g for g in fairfx.channel_groups(model, X) if "conv" in g.producers)
    assert group.size == 4
    assert group.channels("conv") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    pruned = fairfx.prune(model, X, {group.id: [1, 3]})
    assert pruned.get_submodule("conv").out_channels == 8
    assert pruned.get_submodule("gn").num_groups == 2
    assert fairfx.verify(model, pruned, X).passed
    with pytest.raises(PlanError, match="one unit"):
        fairfx.prune(model, X, {"conv": [0, 1, 2]})  # splits a norm group: refused


def test_grouped_conv_units_map_to_channels_and_plans_by_id_verify() -> None:
    model = models.Grouped().eval()
    graph = build(model, X)
    prunable = [g for g in graph.groups if g.prunable]
    assert prunable
    for g in prunable:
        for producer in g.producers:
            per_unit = g.channels(producer)
            assert len(per_unit) == g.size
            flat = sorted(c for unit in per_unit for c in unit)
            width = len(
                graph.channel_pass.producers[graph.channel_pass.producer_index[producer]].slots
            )
            assert flat == list(range(width))  # the units partition the producer's channels
        keep = list(range(0, g.size, 2))
        by_id = graph.prune({g.id: keep})
        assert fairfx.verify(model, by_id, X).passed
        # The same plan written by channels, from the map, gives the same model.
        channels = sorted(c for u in keep for c in g.channels(g.producers[0])[u])
        by_channels = graph.prune({g.producers[0]: channels})
        with torch.no_grad():
            torch.testing.assert_close(by_id(X), by_channels(X), rtol=0, atol=0)
    a = next(g for g in prunable if "a" in g.producers)  # read by a conv with 4 groups:
    assert a.channels("a") == [[0, 2, 4, 6], [1, 3, 5, 7]]  # offset j of every conv group


def test_bad_plans_by_id_are_one_line_errors() -> None:
    model = models.Grouped().eval()
    graph = build(model, X)
    last = len(graph.groups)
    with pytest.raises(PlanError, match=f"there is no channel group {last}"):
        graph.prune({last: [0]})
    fixed = next(g for g in graph.groups if not g.prunable and g.size > 1)
    with pytest.raises(PlanError, match="is not prunable"):
        graph.prune({fixed.id: [0]})
    with pytest.raises(PlanError, match="mixes group ids and producer names"):
        graph.prune({0: [0], "a": [0]})
    with pytest.raises(PlanError, match="outside"):
        graph.prune({graph.groups[0].id: [graph.groups[0].size]})
    with pytest.raises(PlanError, match="is not a producer of group"):
        graph.groups[0].channels("head")
