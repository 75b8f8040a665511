"""No false promises: reparametrized convs prune, and no op with weights is missing from the
channel groups (prunable, or blocked with its reason)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fairfx
from fairfx.apps.cli import main
from fairfx.engine.capture import capture
from fairfx.engine.coverage import unlisted_parameters
from fairfx.engine.group_graph import build
from fairfx.errors import FairfxError

from . import models
from .conftest import assert_same_state, prune_and_verify, state_snapshot


def _wrap(kind: str, conv: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old hook API is deprecated
        return {
            "weight_norm": parametrizations.weight_norm,
            "spectral_norm": parametrizations.spectral_norm,
            "old_weight_norm": torch.nn.utils.weight_norm,
            "old_spectral_norm": torch.nn.utils.spectral_norm,
        }[kind](conv)


def reparametrized(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        _wrap(kind, nn.Conv2d(3, 8, 3, padding=1)),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _wrap(kind, nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        _wrap(kind, nn.Linear(8, 3)),
    ).eval()


KINDS = ["weight_norm", "spectral_norm", "old_weight_norm", "old_spectral_norm"]


@pytest.mark.parametrize("kind", KINDS)
def test_reparametrized_convs_are_baked_and_prune(kind) -> None:
    model = reparametrized(kind)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    snap = state_snapshot(model)
    classes = [type(m) for m in model.modules()]
    captured = capture(model, x).gm
    with torch.no_grad():
        torch.testing.assert_close(captured(x), want, rtol=0, atol=0)  # baked == computed
    assert set(captured.meta["fairfx_baked"]) == {"0.weight", "3.weight", "7.weight"}
    groups = fairfx.channel_groups(model, x)
    assert [g.prunable for g in groups] == [True, True, False]
    _, pruned, _ = prune_and_verify(model, x)
    assert pruned.get_submodule("0").weight.shape[0] < 8  # the weight shrinks, not only the bias
    assert not parametrize.is_parametrized(pruned.get_submodule("0"))
    assert_same_state(model, snap)  # the user's module keeps its parametrization and tensors
    assert [type(m) for m in model.modules()] == classes
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_reparametrized_model_scores_and_compresses() -> None:
    model = reparametrized("weight_norm")
    x = torch.randn(24, 3, 8, 8)
    y = torch.arange(24) % 3
    pruned = fairfx.compress(model, x[:2], 0.3, data=[(x, y)], samples_per_class=8, progress=False)
    assert fairfx.verify(model, pruned, x[:2]).passed


class ScaledStdConv2d(nn.Conv2d):
    """timm's nf_resnet pattern: the weight is standardized in forward, then F.conv2d."""

    def __init__(self, cin: int, cout: int, k: int, **kw) -> None:
        super().__init__(cin, cout, k, **kw)
        self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5

    def forward(self, x):
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).reshape(-1),
            training=True,
            momentum=0.0,
            eps=1e-6,
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class NormFree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = ScaledStdConv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.conv(F.relu(self.stem(x))))
        return self.head(F.relu(self.mid(x)).mean((2, 3)))


class Mixer(nn.Module):
    """MLP-Mixer: token mixing is a Linear over the token axis of a transposed tensor."""

    def __init__(self, tokens: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.norm = nn.LayerNorm(dim)
        self.token1, self.token2 = nn.Linear(tokens, 12), nn.Linear(12, tokens)
        self.chan1, self.chan2 = nn.Linear(dim, 16), nn.Linear(16, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = self.norm(x).transpose(1, 2)
        x = x + self.token2(F.gelu(self.token1(y))).transpose(1, 2)
        x = x + self.chan2(F.gelu(self.chan1(x)))
        return self.head(x.mean(1))


class Embedded(nn.Module):
    """An op without a channel rule holding weights (an embedding table, a matmul weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.proj = nn.Parameter(torch.randn(8, 8))
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens):
        x = torch.matmul(self.emb(tokens), self.proj)
        return self.head(F.relu(self.fc(x))).mean(1)


def _by_producer(groups):
    return {p: g for g in groups for p in g.producers}


def test_computed_weight_conv_is_listed_blocked_with_reason() -> None:
    model, x = NormFree().eval(), torch.randn(2, 3, 8, 8)
    groups = fairfx.channel_groups(model, x)
    conv = _by_producer(groups)["conv"]
    assert not conv.prunable and "weight computed in forward" in conv.reason
    assert "conv.gain" in conv.reason and "conv.weight" in conv.reason
    assert _by_producer(groups)["mid"].prunable  # what it feeds is still tracked and prunable
    graph = build(model, x)
    assert unlisted_parameters(graph.channel_pass.gm, graph.groups) == []
    prune_and_verify(model, x)


def test_token_mixing_linear_is_listed_blocked_with_reason() -> None:
    model, x = Mixer().eval(), torch.randn(2, 3, 8, 8)
    groups = _by_producer(fairfx.channel_groups(model, x))
    for name in ("token1", "token2"):
        assert not groups[name].prunable and "token mixing" in groups[name].reason
    assert groups["chan1"].prunable
    pruned = fairfx.prune(model, x, {"chan1": [0, 2, 4, 6, 8]})
    assert fairfx.verify(model, pruned, x).passed


def test_weights_of_an_op_without_rule_are_listed() -> None:
    model, tokens = Embedded().eval(), torch.randint(0, 10, (2, 5))
    graph = build(model, tokens)
    groups = _by_producer(graph.groups)
    assert "emb" in groups and "proj" in groups
    for name in ("emb", "proj"):
        assert not groups[name].prunable and "no channel rule ties" in groups[name].reason
    assert groups["fc"].prunable
    assert unlisted_parameters(graph.channel_pass.gm, graph.groups) == []


HANDMADE = [
    (models.Residual, (2, 3, 8, 8)),
    (models.Concat, (2, 3, 8, 8)),
    (models.SplitChunk, (2, 3, 8, 8)),
    (models.FlattenLinear, (2, 3, 8, 8)),
    (models.Grouped, (2, 3, 8, 8)),
    (models.SqueezeExcite, (2, 3, 8, 8)),
    (models.Shuffle, (2, 3, 8, 8)),
    (models.Functional, (2, 3, 8, 8)),
    (models.Unsupported, (2, 3, 8, 8)),
    (NormFree, (2, 3, 8, 8)),
    (Mixer, (2, 3, 8, 8)),
]


@pytest.mark.parametrize(("factory", "shape"), HANDMADE, ids=[f.__name__ for f, _ in HANDMADE])
def test_every_parameter_is_in_a_group(factory, shape) -> None:
    model = factory().eval()
    graph = build(model, torch.randn(shape))
    assert unlisted_parameters(graph.channel_pass.gm, graph.groups) == []
    for g in graph.groups:
        assert g.prunable or g.reason


def test_inspect_shows_blocked_producers_with_reasons(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "fairfx_mixer_net.py").write_text(
        "from tests.test_coverage import Mixer\n\ndef net():\n    return Mixer()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "--model", "fairfx_mixer_net:net", "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if " token1 " in f" {row} ")
    assert "fixed: Linear 'token1' mixes axis 2" in line
    assert "producer(s) blocked, each with its reason" in out


def test_a_wrong_rewrite_is_reported_as_a_fairfx_bug(monkeypatch) -> None:
    from fairfx.engine.rules import modules as module_rules

    model, x = models.Residual().eval(), torch.randn(2, 3, 8, 8)

    def forgets_the_weight(m, in_keep, out_keep):  # a broken shrink: slices the bias only
        new = module_rules._copy(m)
        module_rules._set(new, "bias", 0, out_keep)
        return new

    monkeypatch.setattr(
        module_rules, "_shrink_conv", lambda mode, m, i, o: forgets_the_weight(m, i, o)
    )
    graph = build(model, x)
    with pytest.raises(FairfxError) as exc:
        graph.prune({"stem.0": [0, 1, 2]})
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith("internal error (a fairfx bug):")
    assert "node '" in text and "Conv2d module" in text
    assert "not your model or example_input" in text
