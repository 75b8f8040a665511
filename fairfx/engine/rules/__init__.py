"""The per-op rule table: which rule moves channels through each module, function and method.

A rule is ``rule(analysis, node) -> layout``: it reads its inputs' layouts from the analysis,
records unions, blocks and edits there, and returns the layout of its output. An op that is not in
these tables blocks the channels that reach it and is reported by name; it never yields a wrong
graph. Adding support for an op means adding one entry here.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..channel_pass import ChannelPass
from . import aten, functional, heads, indexing, joins, norms, reductions, shape
from .common import (
    along_dim,
    elementwise,
    no_channels,
    param_alias,
    passthrough,
    reduce_dims,
    spatial,
    unknown,
)
from .modules import MODULE_RULES as _MODULES

MODULE_RULES = {**_MODULES, **reductions.MODULE_RULES}

Rule = Callable[[ChannelPass, fx.Node], Any]


def _get_attr(a: ChannelPass, node: fx.Node) -> None:
    a.param_src[node.name] = node.target
    return None


def _output(a: ChannelPass, node: fx.Node) -> None:
    a.block_inputs(node, "reaches the model output")
    return None


_ELEMENTWISE = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, torch.where,
)  # fmt: skip
_PASSTHROUGH = (
    operator.neg, torch.neg, torch.abs, torch.exp, torch.relu, torch.sigmoid, torch.tanh,
    torch.clamp, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.leaky_relu, F.elu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.pad,
)  # fmt: skip
_SPATIAL = (
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, F.interpolate,
)  # fmt: skip
_REDUCE = (torch.amax, torch.amin)
_ALONG_DIM = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.cumsum)

FUNCTION_RULES: dict[Any, Rule] = {
    getattr: no_channels,
    len: no_channels,
    torch._assert: no_channels,
    **{f: elementwise for f in _ELEMENTWISE},
    **{f: passthrough for f in _PASSTHROUGH},
    **{f: spatial for f in _SPATIAL},
    **{f: reduce_dims for f in _REDUCE},
    **{f: along_dim for f in _ALONG_DIM},
    **reductions.RULES,
    **shape.RULES,
    **joins.RULES,
    **functional.RULES,
    **heads.RULES,
    **aten.RULES,
    **indexing.RULES,
    **norms.RULES,
}


METHOD_RULES: dict[str, Rule] = {
    **{m: elementwise for m in ("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_")},
    **{
        m: passthrough
        for m in (
            "relu",
            "relu_",
            "sigmoid",
            "sigmoid_",
            "tanh",
            "clamp",
            "clamp_",
            "neg",
            "abs",
            "exp",
            "clone",
            "detach",
            "float",
            "half",
            "double",
            "type",
        )
    },
    **{m: param_alias for m in ("to", "contiguous")},
    **{m: no_channels for m in ("size", "dim", "numel")},
    **{m: reduce_dims for m in ("amax", "amin")},
    **reductions.METHOD_RULES,
    **{m: along_dim for m in ("softmax", "log_softmax", "cumsum")},
    **shape.METHOD_RULES,
    **joins.METHOD_RULES,
    **heads.METHOD_RULES,
    **norms.METHOD_RULES,
}

PLACEHOLDER_RULES: dict[str, Rule] = {
    "placeholder": no_channels,
    "get_attr": _get_attr,
    "output": _output,
}


def register_torchvision() -> None:
    """Rules for torchvision's own ops (stochastic depth), added once torchvision is imported.

    ``import fairfx`` does not import torchvision (1.7 s): a model holding a torchvision op has
    imported it already, so the rules are added at the first lookup after that."""
    ops = sys.modules.get("torchvision.ops")
    if ops is None or ops.stochastic_depth in FUNCTION_RULES:
        return
    FUNCTION_RULES[ops.stochastic_depth] = passthrough
    MODULE_RULES[ops.StochasticDepth] = passthrough


def rule_for(a: ChannelPass, node: fx.Node) -> Rule:
    """The rule for one node; :func:`~fairfx.engine.rules.common.unknown` when there is none."""
    register_torchvision()
    if node.op in PLACEHOLDER_RULES:
        return PLACEHOLDER_RULES[node.op]
    if node.op == "call_module":
        for cls in type(a.module(node.target)).__mro__:
            if cls in MODULE_RULES:
                return MODULE_RULES[cls]
        return unknown
    if node.op == "call_method":
        return METHOD_RULES.get(node.target, unknown)
    return FUNCTION_RULES.get(node.target, unknown)


__all__ = ["FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES", "rule_for"]
