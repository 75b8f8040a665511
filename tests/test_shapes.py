"""The shape rules of the meta pass give what the ops' own kernels give, and refuse what they
refuse (a rewrite that left a parameter at the wrong size must not slip through)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairfx.engine.op_shapes import shape_only


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _shapes(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    return tuple(None if v is None else _shapes(v) for v in value)


def _kernel(op, target, args, kwargs):
    with torch.no_grad():
        if op == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        return target(*args, **kwargs)


MHA = nn.MultiheadAttention(8, 2).to("meta").eval()
MHA_BF = nn.MultiheadAttention(8, 2, batch_first=True).to("meta").eval()

CASES = [
    ("call_module", nn.BatchNorm2d(4).to("meta").eval(), (meta(2, 4, 3, 3),), {}),
    ("call_module", nn.LayerNorm(6).to("meta"), (meta(2, 5, 6),), {}),
    ("call_module", nn.GroupNorm(2, 4).to("meta"), (meta(2, 4, 3),), {}),
    ("call_module", nn.Linear(6, 3).to("meta"), (meta(2, 5, 6),), {}),
    ("call_module", nn.Hardswish(), (meta(2, 4, 3, 3),), {}),
    ("call_module", MHA, (meta(5, 2, 8), meta(7, 2, 8), meta(7, 2, 8)), {}),
    ("call_module", MHA, (meta(5, 2, 8), meta(5, 2, 8), meta(5, 2, 8)), {"need_weights": False}),
    ("call_module", MHA_BF, (meta(2, 5, 8),) * 3, {"average_attn_weights": False}),
    ("call_function", torch.cat, ([meta(2, 3, 4), meta(2, 5, 4)],), {"dim": 1}),
    (
        "call_function",
        F.scaled_dot_product_attention,
        (meta(2, 4, 5, 8), meta(2, 4, 7, 8), meta(2, 4, 7, 6)),
        {"attn_mask": meta(2, 1, 5, 7)},
    ),
    ("call_function", torch.cat, ([meta(2, 3), meta(4, 3)],), {}),
    ("call_function", operator.add, (meta(2, 4, 3, 3), meta(1, 4, 1, 1)), {}),
    ("call_function", operator.mul, (2.0, meta(2, 4)), {}),
    ("call_function", F.relu, (meta(2, 4),), {"inplace": True}),
    ("call_method", "add_", (meta(2, 4, 3), meta(4, 1)), {}),
    ("call_method", "sigmoid", (meta(2, 4),), {}),
    ("call_function", F.layer_norm, (meta(2, 5, 5, 6), (6,), meta(6), meta(6), 1e-6), {}),
    ("call_function", F.layer_norm, (meta(2, 5, 6), [5, 6]), {"weight": meta(5, 6)}),
]

# Conv shapes by formula (fairfx.engine.op_shapes._conv) against the kernels: strides, padding
# strings, dilation, groups, padding modes, 1-D to 3-D, unbatched inputs.
CONVS = [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    (nn.Conv2d(4, 6, (3, 1), padding="same", dilation=2, bias=False), (1, 4, 8, 7)),
    (nn.Conv2d(4, 8, 3, groups=4, padding="valid"), (4, 9, 9)),
    (nn.Conv2d(4, 6, 5, stride=3, padding=2, padding_mode="reflect"), (2, 4, 11, 10)),
    (nn.Conv1d(6, 4, 4, stride=2, padding=1, groups=2), (3, 6, 17)),
    (nn.Conv3d(2, 3, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 3, 8, 8)),
]
CASES += [("call_module", m.to("meta"), (meta(*shape),), {}) for m, shape in CONVS]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_shape_rules_match_the_kernels(case: int) -> None:
    op, target, args, kwargs = CASES[case]
    ours = shape_only(op, target, args, kwargs)
    assert ours is not NotImplemented
    assert _shapes(ours) == _shapes(_kernel(op, target, args, kwargs))


def test_shape_rules_refuse_what_the_kernels_refuse() -> None:
    bn = nn.BatchNorm2d(4).to("meta").eval()
    bn.running_mean = torch.empty(3, device="meta")  # a rewrite that forgot the stats
    with pytest.raises(RuntimeError):
        shape_only("call_module", bn, (meta(2, 4, 3, 3),), {})
    with pytest.raises(RuntimeError):
        shape_only("call_module", nn.Linear(6, 3).to("meta"), (meta(2, 5),), {})
    with pytest.raises(RuntimeError):
        shape_only("call_function", torch.cat, ([meta(2, 3, 4), meta(2, 5, 5)], 1), {})
    with pytest.raises(RuntimeError):
        shape_only("call_function", operator.add, (meta(2, 4), meta(3)), {})
    with pytest.raises(RuntimeError):
        shape_only("call_module", MHA, (meta(5, 2, 6),) * 3, {})
    conv = nn.Conv2d(4, 6, 3).to("meta")
    with pytest.raises(RuntimeError):  # input channels the conv does not take
        shape_only("call_module", conv, (meta(1, 5, 8, 8),), {})
    conv.weight = nn.Parameter(torch.empty(6, 3, 3, 3, device="meta"))  # in_channels left at 4
    with pytest.raises(RuntimeError):
        shape_only("call_module", conv, (meta(1, 4, 8, 8),), {})
    conv = nn.Conv2d(4, 6, 3).to("meta")
    conv.bias = nn.Parameter(torch.empty(5, device="meta"))
    with pytest.raises(RuntimeError):
        shape_only("call_module", conv, (meta(1, 4, 8, 8),), {})
    with pytest.raises(RuntimeError):
        shape_only("call_function", F.layer_norm, (meta(2, 5, 6), (6,), meta(5)), {})


def test_shape_rules_read_parameter_shapes_of_real_modules() -> None:
    """The interpreter hands rules the module itself (no meta copy of its weights)."""
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6).eval()
    assert shape_only("call_module", conv, (meta(2, 4, 5, 5),), {}).shape == (2, 6, 5, 5)
    assert shape_only("call_module", bn, (meta(2, 6, 5, 5),), {}).shape == (2, 6, 5, 5)


def test_conv_shapes_the_formula_cannot_give_go_to_the_kernel() -> None:
    conv = nn.Conv2d(4, 6, 5).to("meta")
    assert shape_only("call_module", conv, (meta(1, 4, 3, 3),), {}) is NotImplemented
    half = nn.Conv2d(4, 6, 3).to("meta").half()
    assert shape_only("call_module", half, (meta(1, 4, 8, 8),), {}) is NotImplemented


def test_real_tensors_and_other_ops_use_the_kernels() -> None:
    x = torch.randn(2, 4)
    assert shape_only("call_function", F.relu, (x,), {}) is NotImplemented
    assert shape_only("call_function", torch.cumsum, (meta(2, 4), 1), {}) is NotImplemented


@pytest.mark.parametrize("n", [0, 1, 2, 7, 300])
def test_sort_based_unique_matches_numpy(n: int) -> None:
    import numpy as np

    from fairfx.engine.slots import common, unique, unique_first

    values = np.random.default_rng(n).integers(0, max(2 * n, 1), size=n).astype(np.int64)
    assert np.array_equal(unique(values), np.unique(values))
    got, first = unique_first(values)
    want, want_first = np.unique(values, return_index=True)
    assert np.array_equal(got, want) and np.array_equal(first, want_first)
    other = np.random.default_rng(n + 1).integers(0, max(2 * n, 1), size=n).astype(np.int64)
    assert np.array_equal(common(values, other), np.intersect1d(values, other))


def _union_find_roots(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """The reference: a per-element union-find where the smaller root wins."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for x, y in pairs:
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return [find(i) for i in range(n)]


@pytest.mark.parametrize("seed", range(12))
def test_slot_classes_match_a_union_find(seed: int) -> None:
    """The vectorised classes equal a sequential union-find's, each named by its smallest slot,
    on chains (the longest hook-and-jump case), stars and random unions."""
    import numpy as np

    from fairfx.engine.slots import SlotTable

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    table = SlotTable()
    table.new(n, 0)
    pairs: list[tuple[int, int]] = []
    shapes = ("chain", "reversed chain", "star", "random")
    for _ in range(int(rng.integers(0, 12))):
        kind = shapes[int(rng.integers(len(shapes)))]
        if kind == "chain":
            a = np.arange(n - 1)
            b = a + 1
        elif kind == "reversed chain":
            b = np.arange(n - 1)[::-1].copy()
            a = b + 1
        elif kind == "star":
            b = rng.integers(0, n, size=n)
            a = np.full(n, int(rng.integers(n)))
        else:
            k = int(rng.integers(1, n + 1))
            a, b = rng.integers(0, n, size=k), rng.integers(0, n, size=k)
        table.union(a, b)
        pairs.extend(zip(a.tolist(), b.tolist(), strict=True))
    assert table.roots().tolist() == _union_find_roots(n, pairs)
