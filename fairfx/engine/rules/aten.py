"""ATen entries of the rule table, for graphs captured with ``torch.export``.

Export produces a small, closed op set; each op maps to the rule that already serves its
``torch``/``F`` counterpart, with ATen's argument order where it differs (batch norm, embedding,
addmm). An ATen op missing here blocks the channels that reach it, as any op without a rule.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.fx as fx

from ..channel_pass import ChannelPass
from ..edits import ArgEdit
from . import functional, heads, joins, reductions, shape
from .common import along_dim, elementwise, no_channels, passthrough, reduce_dims, spatial, unknown

aten = torch.ops.aten


def _on_other_axis(a: ChannelPass, node: fx.Node) -> Any:
    """slice/select along an axis other than the channel axis (which they would cut) pass."""
    lay, shp = a.layout(node.args[0]), a.shape(node.args[0])
    if lay is None:
        return None
    dim = a.value(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
    if shp is None or not isinstance(dim, int) or dim % len(shp) == lay.dim:
        return unknown(a, node)
    return shape.index_shape(a, node)


def _slice(a: ChannelPass, node: fx.Node) -> Any:
    """``slice`` along the channel axis (Phi-3's fused ``qkv_proj`` cut into q, k and v) hands
    the piece its slots, with the bounds rewritten to the kept counts before them, as Python
    slicing does (:func:`~fairfx.engine.rules.shape.getitem`); along another axis it passes."""
    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dim = a.value(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
    if shp is None or not isinstance(dim, int):
        return unknown(a, node)
    if dim % len(shp) != lay.dim:  # the channel axis passes whole, even into an empty piece
        out = a.shape(node)
        return lay if out is not None and out[lay.dim] == lay.size else unknown(a, node)
    bounds = [node.args[i] if len(node.args) > i else None for i in (2, 3)]
    step = node.args[4] if len(node.args) > 4 else node.kwargs.get("step", 1)
    if step != 1 or node.kwargs or not all(b is None or isinstance(b, int) for b in bounds):
        return unknown(a, node)
    start, stop, _ = slice(*bounds).indices(lay.size)
    a.edit(ArgEdit(node.name, _bounds_rewriter(start, stop, lay.slots)))
    return shape.index_shape(a, node)


def _bounds_rewriter(start: int, stop: int, slots: Any):
    def rewrite(n: fx.Node, kept_slot: Any) -> None:
        keep = kept_slot[slots]
        args = list(n.args) + [None] * (4 - len(n.args))
        args[2], args[3] = int(keep[:start].sum()), int(keep[:stop].sum())
        n.args = tuple(args)

    return rewrite


def _gather_rows(a: ChannelPass, node: fx.Node) -> Any:
    """``table[idx]`` of a 2-D parameter, rows picked by an index tensor, is an embedding lookup:
    the table's columns are new channels on the last axis (the per-head relative position bias
    of Swin and BEiT, ``table[index]`` of shape [positions, heads]). Any other advanced index
    that reaches channels has no rule."""
    x, indices = node.args[0], node.args[1]
    target, shp = a.param(x), a.shape(x)
    rows = isinstance(indices, (list, tuple)) and len(indices) == 1
    rows = rows and isinstance(indices[0], fx.Node)
    # the parameter itself (not a reshaped alias), rows picked by one index tensor
    if target is not None and shp is not None and rows and a.param_shape(target) == shp:
        return functional.embedding(a, node, weight_pos=0) if len(shp) == 2 else unknown(a, node)
    return unknown(a, node)


def _ops(*names: str) -> list[Any]:
    """The named ATen overloads that exist in this torch build."""
    out = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(aten, packet, None), overload or "default", None)
        if op is not None:
            out.append(op)
    return out


_PASSTHROUGH = _ops(
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "mish", "neg", "abs", "exp", "rsqrt", "sqrt", "cos", "sin", "erf",
    "clone", "alias", "detach", "dropout", "to.dtype", "to.dtype_layout", "to.device",
    "_to_copy", "contiguous", "pow.Tensor_Scalar", "type_as", "clamp", "gelu_", "silu_",
    "hardswish_", "hardsigmoid_", "sigmoid_", "tanh_", "hardtanh_", "leaky_relu_", "elu_",
    "clamp_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_", "relu6", "mish_",
    "softplus", "log_sigmoid", "erf_", "exp_",
    "constant_pad_nd", "pad",  # padding other axes (Swin pads channels-last windows)
)  # fmt: skip
_ELEMENTWISE = _ops(
    "add.Tensor", "add_.Tensor", "sub.Tensor", "sub_.Tensor", "mul.Tensor", "mul_.Tensor",
    "div.Tensor", "div_.Tensor", "add.Scalar", "sub.Scalar", "mul.Scalar", "div.Scalar",
    "where.self", "where.ScalarOther", "where.ScalarSelf", "maximum", "minimum",
)  # fmt: skip
_SPATIAL = _ops(
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "upsample_nearest2d.vec", "upsample_bilinear2d.vec",
)  # fmt: skip
_INDEX_SHAPE = _ops(
    "view", "reshape", "_unsafe_view", "expand", "permute", "transpose.int", "t",
    "unsqueeze", "squeeze.dim", "squeeze.dims", "flatten.using_ints", "unflatten.int",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
)  # fmt: skip
_NO_CHANNELS = _ops("sym_size.int", "_assert_tensor_metadata", "sym_numel", "sym_stride.int")

RULES: dict[Any, Any] = {
    **{op: passthrough for op in _PASSTHROUGH},
    **{op: elementwise for op in _ELEMENTWISE},
    **{op: spatial for op in _SPATIAL},
    **{op: shape.index_shape for op in _INDEX_SHAPE},
    **{op: no_channels for op in _NO_CHANNELS},
    **{op: reduce_dims for op in _ops("amax", "amin")},
    **{op: reductions.channel_mean for op in _ops("mean.dim")},
    **{op: reductions.channel_sum for op in _ops("sum.dim_IntList")},
    **{op: along_dim for op in _ops("softmax.int", "_softmax", "log_softmax.int", "cumsum")},
    **{op: _on_other_axis for op in _ops("select.int")},
    **{op: _slice for op in _ops("slice.Tensor")},
    **{op: _gather_rows for op in _ops("index.Tensor")},
    **{op: joins.cat for op in _ops("cat", "concat")},
    **{op: joins.split for op in _ops("split.Tensor", "split_with_sizes", "chunk")},
    **{op: joins.unbind for op in _ops("unbind.int")},
    **{op: heads.matmul for op in _ops("matmul", "bmm")},
    **{op: heads.sdpa for op in _ops("scaled_dot_product_attention")},
    **{op: functional.linear for op in _ops("linear")},
    **{
        op: functional.conv
        for op in _ops(
            "conv1d", "conv2d", "conv3d", "conv1d.padding", "conv2d.padding", "conv3d.padding"
        )
    },
    **{op: functional.layer_norm for op in _ops("layer_norm")},
    **{op: functional.aten_batch_norm for op in _ops("batch_norm")},
    **{op: partial(functional.embedding, weight_pos=0) for op in _ops("embedding")},
    **{op: functional.addmm for op in _ops("addmm")},
}
