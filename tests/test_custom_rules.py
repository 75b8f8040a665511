"""fairfx.register_rule: a user describes how a custom layer's tensors follow its channels, and
the layer prunes exactly; an undescribed one is blocked with its name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.capture import CUSTOM_LEAVES
from fairfx.engine.group_graph import build
from fairfx.engine.rewrite import count_params
from fairfx.engine.rules import MODULE_RULES


class EinsumLinear(nn.Module):
    """A linear layer written with einsum, weight stored [in, out] (fairfx has no einsum rule)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_features, self.out_features = cin, cout
        self.weight = nn.Parameter(torch.randn(cin, cout) / cin**0.5)
        self.bias = nn.Parameter(torch.randn(cout))

    def forward(self, x):
        return torch.einsum("bi,io->bo", x, self.weight) + self.bias


class ChannelGate(nn.Module):
    """A per-channel learned gate on NCHW data, through einsum."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return torch.einsum("bchw,c->bchw", x, self.gate)


class Registered(EinsumLinear):
    pass


class RegisteredGate(ChannelGate):
    pass


class Net(nn.Module):
    def __init__(self, linear: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = gate(8)
        self.fc1 = linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = self.gate(torch.relu(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module", autouse=True)
def registered():
    fairfx.register_rule(
        Registered, kind="mix", inputs={"weight": 0}, outputs={"weight": 1, "bias": 0},
        channel_dim=-1, sizes={"in_features": "in", "out_features": "out"},
    )  # fmt: skip
    fairfx.register_rule(RegisteredGate, kind="per_channel", inputs={"gate": 0})
    yield
    # The registry is global: leave the rule tables as the other test modules expect them.
    for cls in [c for c, r in MODULE_RULES.items() if isinstance(r, fairfx.LayerRule)]:
        del MODULE_RULES[cls]
        CUSTOM_LEAVES.discard(cls)


def test_registered_layers_prune_exactly() -> None:
    torch.manual_seed(0)
    model = Net(Registered, RegisteredGate).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = build(model, x)
    by_producer = {p: g for g in graph.groups for p in g.producers}
    assert by_producer["conv"].prunable and by_producer["fc1"].prunable
    assert "gate" in by_producer["conv"].members
    pruned = graph.prune(random_plan(graph))
    assert pruned.fc1.weight.shape == (4, 8) and pruned.fc1.in_features == 4
    assert pruned.fc1.out_features == 8 and pruned.gate.gate.shape == (4,)
    assert count_params(pruned) < count_params(model)
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.intermediates_compared > 0, str(report)
    assert isinstance(model.fc1.weight, nn.Parameter) and model.fc1.weight.shape == (8, 16)


def test_an_unregistered_layer_is_blocked_with_its_name() -> None:
    model = Net(EinsumLinear, ChannelGate).eval()
    graph = build(model, torch.randn(2, 3, 8, 8))
    conv = next(g for g in graph.groups if "conv" in g.producers)
    assert not conv.prunable
    assert "inside ChannelGate 'gate'" in conv.reason and "register_rule" in conv.reason


def test_a_rule_that_does_not_fit_the_layer_blocks_it_with_the_cause() -> None:
    class Wrong(EinsumLinear):
        pass

    fairfx.register_rule(Wrong, kind="mix", inputs={"weight": 1}, outputs={"weight": 0})
    model = Net(Wrong, RegisteredGate).eval()
    graph = build(model, torch.randn(2, 3, 8, 8))
    fc1 = next(g for g in graph.groups if "fc1" in g.producers)
    assert not fc1.prunable and "does not match its registered rule" in fc1.reason


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(cls=int, kind="mix"), "torch.nn.Module subclass"),
        (dict(cls=nn.Linear, kind="mix"), "own channel rule"),
        (dict(cls=ChannelGate, kind="gather"), "kind must be"),
        (dict(cls=ChannelGate, kind="mix", sizes={"n": "middle"}), "'in' or 'out'"),
    ],
)
def test_bad_registrations_are_one_line_errors(kwargs, words) -> None:
    cls = kwargs.pop("cls")
    with pytest.raises(fairfx.FairfxError, match=words) as info:
        fairfx.register_rule(cls, **kwargs)
    assert "\n" not in str(info.value)
