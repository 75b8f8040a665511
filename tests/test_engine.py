"""Channel groups, rewrite and oracle on one small model per rule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

import fairfx
from fairfx import CaptureError, FairfxError, PlanError
from fairfx.engine.group_graph import build

from .conftest import assert_same_state, prune_and_verify, state_snapshot
from .models import CASES, Grouped, Unsupported


def make(case: str):
    cls, shape = CASES[case]
    return cls().eval(), torch.randn(*shape)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_plan_passes_oracle(case: str, seed: int) -> None:
    model, x = make(case)
    snap = state_snapshot(model)
    graph, _pruned, _ = prune_and_verify(model, x, seed=seed)
    assert any(g.prunable for g in graph.groups)
    assert_same_state(model, snap)


def group_of(groups, producer):
    return next(g for g in groups if producer in g.producers)


def test_residual_add_and_sub_couple_producers() -> None:
    model, x = make("residual")
    groups = fairfx.channel_groups(model, x)
    stream = group_of(groups, "stem.0")
    assert set(stream.producers) == {"stem.0", "b", "sub"}
    assert stream.size == 8 and stream.prunable
    assert "a.0" in stream.consumers and "head" in stream.consumers
    head = group_of(groups, "head")
    assert not head.prunable and "output" in head.reason


def test_cat_offsets_are_tracked_per_producer() -> None:
    model, x = make("concat")
    groups = fairfx.channel_groups(model, x)
    p, q = group_of(groups, "p"), group_of(groups, "q")
    assert p.id != q.id, "cat must not couple its inputs"
    pruned = fairfx.prune(model, x, {"p": [0, 2, 5], "q": [1]})
    # r reads [p(3), q(1), p(3), p(3)] = 10 kept of 22 input channels
    assert pruned.get_submodule("r").in_channels == 10
    assert fairfx.verify(model, pruned, x).passed


def test_split_chunk_and_slice_sizes_are_rewritten() -> None:
    model, x = make("split_chunk")
    # q reads both a = x[:, 0:6] and x[:, 3:9]: its shared weights tie 0~3~6, 1~4~7, 2~5~8.
    with pytest.raises(PlanError, match="one unit"):
        fairfx.prune(model, x, {"p": [0, 1, 4, 6, 7, 9, 11]})
    pruned = fairfx.prune(model, x, {"p": [0, 3, 6, 2, 5, 8, 9, 11]})
    report = fairfx.verify(model, pruned, x)
    assert report.passed, report
    assert "split" in pruned.code


def test_flatten_into_linear_rewrites_view_constant() -> None:
    model, x = make("flatten_linear")
    pruned = fairfx.prune(model, x, {"c.0": [1, 3, 5], "fc": list(range(8))})
    assert pruned.get_submodule("fc").in_features == 3 * 4
    assert "12" in pruned.code  # view(size, 40) became view(size, 12)
    assert fairfx.verify(model, pruned, x).passed


def _sabotage(graph, kind: type, change) -> None:
    """Replace every edit of ``kind`` in ``graph`` with ``change(edit)``: a simulated rule bug."""
    a = graph.channel_pass
    a.edits = [change(e) if isinstance(e, kind) else e for e in a.edits]


def test_size_check_catches_a_missed_shape_constant() -> None:
    from fairfx.engine.edits import ArgEdit

    model, x = make("flatten_linear")
    graph = build(model, x)
    _sabotage(graph, ArgEdit, lambda e: ArgEdit(e.node, lambda node, kept: None))
    with pytest.raises(FairfxError, match="internal error"):
        graph.prune({"c.0": [1, 3, 5], "fc": list(range(8))})


def test_size_check_catches_a_wrongly_sliced_module() -> None:
    import dataclasses

    from fairfx.engine.edits import ModuleEdit

    model, x = make("residual")
    graph = build(model, x)

    def keep_outputs(edit):  # a shrink that forgets to remove output channels
        shrink = edit.shrink
        return dataclasses.replace(edit, shrink=lambda m, i, o: shrink(m, i, None))

    _sabotage(graph, ModuleEdit, keep_outputs)
    with pytest.raises(FairfxError, match="internal error"):
        graph.prune({"stem.0": [0, 1, 2]})


def test_size_check_catches_wrong_split_sizes() -> None:
    from fairfx.engine.edits import ArgEdit

    model, x = make("split_chunk")
    graph = build(model, x)
    _sabotage(graph, ArgEdit, lambda e: ArgEdit(e.node, lambda node, kept: None))
    with pytest.raises(FairfxError, match="internal error"):
        graph.prune({"p": [0, 3, 6, 2, 5, 8, 9, 11]})


def test_one_graph_serves_many_plans_costs_and_rewrites(monkeypatch) -> None:
    from fairfx.engine import group_graph as groups_mod

    model, x = make("residual")
    graph = fairfx.channel_graph(model, x)
    assert graph.groups == fairfx.channel_groups(model, x)
    runs = []
    real = groups_mod.capture
    monkeypatch.setattr(groups_mod, "capture", lambda *a: runs.append(1) or real(*a))
    base = graph.cost()
    pruned = []
    for keep in ([0, 1, 2], [3, 4, 5, 6], [7]):
        pruned.append(graph.prune({"stem.0": keep}))
        assert pruned[-1].get_submodule("b").out_channels == len(keep)
        cost = graph.cost(pruned[-1].meta["fairfx"]["units"])
        assert cost.params == sum(p.numel() for p in pruned[-1].parameters()) < base.params
    assert not runs, "plans, costs and rewrites must not capture the model again"
    for p in pruned:
        assert fairfx.verify(model, p, x).passed


class _ConvLinearAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, groups=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)  # [N, HW, C] tokens
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def test_cost_counts_the_macs_of_conv_linear_and_attention() -> None:
    """The meta pass answers conv, linear and attention shapes without their kernels; the cost
    model must still count their multiply-accumulates (it once reported 0 for a pruned CNN's
    linear head and 0.6% of a ViT's MACs)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, x = _ConvLinearAttention().eval(), torch.randn(2, 3, 6, 6)
    graph = fairfx.channel_graph(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.conv(x)
        model.head(torch.zeros(2, 16))
    conv_and_head = counter.get_total_flops() // 2
    tokens, width = 36, 16
    projections = 2 * tokens * width * (3 * width) + 2 * tokens * width * width  # in and out
    assert graph.cost().macs >= conv_and_head + projections
    gid = graph.group_of_producer["conv"]
    half = graph.cost({gid: list(range(8))})
    assert 0 < half.macs < graph.cost().macs


def test_pruned_graph_shares_no_storage_with_the_model() -> None:
    model, x = make("residual")
    pruned = fairfx.prune(model, x, {"stem.0": [0, 1, 2]})
    theirs = {t.untyped_storage().data_ptr() for t in model.state_dict().values() if t.numel()}
    ours = {t.untyped_storage().data_ptr() for t in pruned.state_dict().values() if t.numel()}
    assert not theirs & ours
    snap = state_snapshot(pruned)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert_same_state(pruned, snap)


def test_layer_norm_over_channels_is_prunable_but_reported_inexact() -> None:
    model, x = make("channels_last")
    groups = fairfx.channel_groups(model, x)
    stream = group_of(groups, "c")
    assert stream.prunable and not stream.exact and "LayerNorm 'ln'" in stream.note
    assert group_of(groups, "up").exact
    pruned = fairfx.prune(model, x, {"c": [0, 1, 2, 5]})
    assert pruned.get_submodule("ln").normalized_shape == (4,)
    assert pruned.get_parameter("gamma").shape == (4,)
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.inexact_groups


def test_grouped_conv_ties_columns_and_depthwise_follows() -> None:
    model, x = make("grouped")
    groups = fairfx.channel_groups(model, x)
    a = group_of(groups, "a")
    assert a.size == 2  # 8 channels, 4 conv groups: 2 columns
    g = group_of(groups, "g")
    assert g.size == 1 and not g.prunable  # GroupNorm(4) over 24 = 3 units x multiplier ...
    with pytest.raises(PlanError, match="one unit"):
        fairfx.prune(model, x, {"a": [0, 1, 2, 3]})
    pruned = fairfx.prune(model, x, {"a": [1, 3, 5, 7]})
    assert pruned.get_submodule("g").in_channels == 4
    assert fairfx.verify(model, pruned, x).passed


def test_self_attention_prunes_the_residual_stream() -> None:
    model, x = make("attention")
    groups = fairfx.channel_groups(model, x)
    stream = group_of(groups, "embed")
    assert {"embed", "attn.out_proj", "mlp.2"} <= set(stream.producers)
    assert stream.prunable and not stream.exact  # LayerNorm over the stream
    pruned = fairfx.prune(model, x, {"embed": [0, 2, 3, 7]})
    attn = pruned.get_submodule("attn")  # opened into q/k/v projections (engine/mha.py)
    assert all(attn.get_submodule(p).weight.shape == (8, 4) for p in ("q_proj", "k_proj", "v_proj"))
    assert attn.out_proj.out_features == 4
    # the caller reads the head-averaged weights: a mean over the head axis, rescaled by
    # kept/original heads so the pruned model computes the masked original's average exactly
    heads = group_of(groups, "attn.q_proj")
    assert heads.unit == "head" and heads.prunable and heads.exact
    assert fairfx.verify(model, fairfx.prune(model, x, {heads.id: [1]}), x).passed
    assert fairfx.verify(model, pruned, x).passed


def test_group_norm_prunes_whole_norm_groups() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 12, 1)
            self.gn = nn.GroupNorm(3, 12)
            self.d = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.d(self.gn(self.c(x)))

    model, x = M().eval(), torch.randn(2, 3, 4, 4)
    assert group_of(fairfx.channel_groups(model, x), "c").size == 3
    pruned = fairfx.prune(model, x, {"c": [4, 5, 6, 7]})
    assert pruned.get_submodule("gn").num_groups == 1
    assert fairfx.verify(model, pruned, x).passed


def test_unknown_ops_block_by_name() -> None:
    model, x = Unsupported().eval(), torch.randn(2, 3, 8, 8)
    groups = fairfx.channel_groups(model, x)
    c, d = group_of(groups, "c"), group_of(groups, "d")
    assert not c.prunable and "cumsum" in c.reason
    assert not d.prunable and "fft2" in d.reason
    with pytest.raises(PlanError, match="cumsum"):
        fairfx.prune(model, x, {"c": [0, 1]})


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"nope": [0]}, "not a producer"),
        ({"stem.0": []}, "empty"),
        ({"stem.0": [0, 8]}, "outside"),
        ({"stem.0": [0, 0, 1]}, "repeats"),
        ({"stem.0": [0.5]}, "integer"),
        ({"stem.0": [0, 1], "b": [0, 2]}, "disagree"),
        ({"head": [0, 1]}, "cannot be pruned"),
        ({}, "empty"),
    ],
)
def test_bad_plans_are_refused(keep, message) -> None:
    model, x = make("residual")
    with pytest.raises(PlanError, match=message):
        fairfx.prune(model, x, keep)


def test_agreeing_names_of_one_group_are_fine() -> None:
    model, x = make("residual")
    pruned = fairfx.prune(model, x, {"stem.0": [0, 2, 4], "b": [0, 2, 4]})
    assert pruned.get_submodule("b").out_channels == 3


def test_model_is_never_modified_and_pruned_owns_its_weights() -> None:
    model, x = make("residual")
    model.train()
    snap = state_snapshot(model)
    pruned = fairfx.prune(model, x, {"stem.0": [0, 1, 2]})
    assert_same_state(model, snap)
    assert pruned.training
    kept = pruned.get_submodule("head")
    with torch.no_grad():
        kept.weight.add_(1.0)
    assert_same_state(model, snap)


def test_pruned_graph_trains_and_switches_modes() -> None:
    model, x = make("residual")
    pruned = fairfx.prune(model, x, {"stem.0": [0, 1, 2, 5]})
    pruned.train()
    bn = pruned.get_submodule("stem.1")
    before = bn.running_mean.clone()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    loss = pruned(x).square().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, bn.running_mean)
    pruned.eval()
    a, b = pruned(x), pruned(x)
    assert torch.equal(a, b)


def test_frozen_parameters_do_not_change_capture() -> None:
    model, x = make("residual")
    frozen = copy.deepcopy(model).requires_grad_(False)
    groups_a = fairfx.channel_groups(model, x)
    groups_b = fairfx.channel_groups(frozen, x)
    assert groups_a == groups_b
    pruned = fairfx.prune(frozen, x, {"stem.0": [0, 1]})
    assert not any(p.requires_grad for p in pruned.parameters())


def test_graph_module_input_is_accepted() -> None:
    model, x = make("residual")
    gm = fx.symbolic_trace(model)
    pruned = fairfx.prune(gm, x, {"stem.0": [0, 1, 3]})
    assert fairfx.verify(gm, pruned, x).passed


def test_untraceable_model_names_the_problem() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.c(x)
            return x

    with pytest.raises(CaptureError, match="leaf module"):
        fairfx.channel_groups(Branchy(), torch.randn(1, 3, 4, 4))


def test_bad_example_input_names_the_problem() -> None:
    model, _ = make("residual")
    with pytest.raises(CaptureError, match="example_input"):
        fairfx.channel_groups(model, torch.randn(1, 5, 8, 8))
    with pytest.raises(CaptureError, match="tensor"):
        fairfx.channel_groups(model, "not a tensor")


def test_verify_detects_a_wrong_graph() -> None:
    model, x = make("residual")
    pruned = fairfx.prune(model, x, {"stem.0": [0, 1, 2]})
    with torch.no_grad():
        pruned.get_submodule("b").weight.mul_(2.0)
    report = fairfx.verify(model, pruned, x)
    assert not report.passed and report.max_abs_diff > report.tolerance


def test_plans_are_deterministic() -> None:
    a = build(Grouped().eval(), torch.randn(1, 3, 8, 8))
    b = build(Grouped().eval(), torch.randn(1, 3, 8, 8))
    assert a.groups == b.groups
    assert (a.roots == b.roots).all()


def test_export_and_compile_match_eager() -> None:
    model, x = make("residual")
    pruned = fairfx.prune(model, x, {"stem.0": [0, 1, 2, 5]}).eval()
    ep = torch.export.export(pruned, (x,))
    with torch.no_grad():
        want = pruned(x)
        assert torch.allclose(ep.module()(x), want, atol=1e-6)
        compiled = torch.compile(pruned, backend="aot_eager")
        assert torch.allclose(compiled(x), want, atol=1e-6)


def test_a_plan_cannot_empty_a_split_piece() -> None:
    model, x = make("split_chunk")
    with pytest.raises(PlanError, match="every channel"):
        fairfx.prune(model, x, {"p": list(range(10))})  # split piece d = p[10:12] loses all
