"""The shape rules of the meta pass give what the ops' own kernels give, and refuse what they
refuse (a rewrite that left a parameter at the wrong size must not slip through)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairfx.engine.shapes import shape_only


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
]


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


def test_real_tensors_and_other_ops_use_the_kernels() -> None:
    x = torch.randn(2, 4)
    assert shape_only("call_function", F.relu, (x,), {}) is NotImplemented
    assert shape_only("call_function", torch.cumsum, (meta(2, 4), 1), {}) is NotImplemented
