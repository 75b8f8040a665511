"""Shapes without arithmetic: meta-tensor evaluation of one op, with shape rules for cheap ops.

Capture records shapes by running the graph on meta tensors (no data), and the rewrite checks
the modules it rebuilt the same way. PyTorch's meta kernels for elementwise ops and
normalizations are Python decompositions: measured on one CPU, a meta ``relu`` costs 2.5 ms,
``hardswish`` 7.5 ms and an eval ``BatchNorm2d`` 3.7 ms per call, against 0.13 ms for a meta
``conv2d`` (fairfx docs/decisions.md). Their output shape needs none of that: it is the input
shape (activations, dropout, normalizations), the broadcast of the inputs (arithmetic), or one
line of arithmetic (``nn.Linear``, whose meta kernel on a 3-D input is a Python ``addmm``). This
module answers those ops from shapes alone and leaves every other op to its meta kernel.

A module's shape rule also checks its parameters against the input, as its kernel would: a
BatchNorm whose ``running_mean`` does not have one entry per input channel, or a Linear whose
weight does not match the input's width, is an error here too, so a wrong rewrite cannot pass
through the shortcut unnoticed.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_SAME_SHAPE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_UNARY = {
    torch.relu, torch.sigmoid, torch.tanh, torch.neg, torch.abs, torch.exp, F.relu, F.relu6,
    F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.mish,
    F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, operator.neg,
}  # fmt: skip
_BINARY = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
    torch.div, torch.maximum, torch.minimum,
}  # fmt: skip
_INPLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "neg", "abs", "exp", "contiguous",
    "clone",
}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_INPLACE_METHODS = {"add_", "sub_", "mul_", "div_"}


def _empty(shape: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _meta_floats(*values: Any) -> bool:
    """Shape rules hold for floating meta tensors; anything else goes to the real kernel."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    return bool(tensors) and all(t.is_meta and t.is_floating_point() for t in tensors)


def _broadcast_shape(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
    if x == y:
        return x
    n = max(len(x), len(y))
    x, y = (1,) * (n - len(x)) + x, (1,) * (n - len(y)) + y
    out = []
    for p, q in zip(x, y, strict=True):
        if p != q and 1 not in (p, q):
            raise RuntimeError(f"shapes {x} and {y} do not broadcast")
        out.append(q if p == 1 else p)
    return tuple(out)


def _broadcast(a: Any, b: Any) -> torch.Tensor:
    shapes = [tuple(v.shape) for v in (a, b) if isinstance(v, torch.Tensor)]
    shape = shapes[0] if len(shapes) == 1 else _broadcast_shape(*shapes)
    return _empty(shape, torch.result_type(a, b))


def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Linear's meta kernel decomposes into a Python addmm; its shape is one line."""
    w, b = m.weight, m.bias
    if x.dim() < 1 or w.dim() != 2 or x.shape[-1] != w.shape[1]:
        raise RuntimeError(f"Linear {tuple(w.shape)} cannot take input {tuple(x.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise RuntimeError(f"Linear bias {tuple(b.shape)} does not match weight {tuple(w.shape)}")
    return _empty((*x.shape[:-1], w.shape[0]), torch.result_type(x, w))


def _inplace(a: Any, b: Any) -> torch.Tensor:
    out = _broadcast(a, b)
    if out.shape != a.shape:
        raise RuntimeError(f"in-place op cannot broadcast {tuple(a.shape)} to {tuple(out.shape)}")
    return a


def _per_channel(x: torch.Tensor, n: int, tensors: tuple[Any, ...], what: str) -> None:
    if x.dim() < 2 or x.shape[1] != n:
        raise RuntimeError(f"{what} expects {n} channels on axis 1, got shape {tuple(x.shape)}")
    for t in tensors:
        if isinstance(t, torch.Tensor) and tuple(t.shape) != (n,):
            raise RuntimeError(f"{what} holds a tensor of shape {tuple(t.shape)}, expected ({n},)")


def _batch_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fields = (m.weight, m.bias, m.running_mean, m.running_var)
    _per_channel(x, m.num_features, fields, type(m).__name__)
    return _empty(x.shape, x.dtype)


def _group_norm(m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    _per_channel(x, m.num_channels, (m.weight, m.bias), "GroupNorm")
    if m.num_channels % m.num_groups:
        raise RuntimeError(f"GroupNorm: {m.num_channels} channels in {m.num_groups} groups")
    return _empty(x.shape, x.dtype)


def _check_layer_norm(x: torch.Tensor, normalized: Any, weight: Any, bias: Any) -> torch.Tensor:
    shape = tuple(normalized)
    k = len(shape)
    if tuple(x.shape[x.dim() - k :]) != shape:
        raise RuntimeError(f"LayerNorm{shape} got shape {tuple(x.shape)}")
    for t in (weight, bias):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"LayerNorm holds a tensor of shape {tuple(t.shape)}")
    return _empty(x.shape, x.dtype)


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return _check_layer_norm(x, m.normalized_shape, m.weight, m.bias)


def _layer_norm_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.layer_norm``: its meta kernel is a Python decomposition of about 20 ms on ConvNeXt's
    LayerNorm2d; the output is the input's shape once the affine tensors match."""
    names = ("input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable")
    if len(args) > len(names) or set(kwargs) - set(names[1:]):
        return NotImplemented
    bound = dict(zip(names, args, strict=False)) | kwargs
    x, normalized = bound["input"], bound.get("normalized_shape")
    if not isinstance(normalized, (list, tuple)) or not all(isinstance(n, int) for n in normalized):
        return NotImplemented
    weight, bias = bound.get("weight"), bound.get("bias")
    if not _meta_floats(x, weight, bias):
        return NotImplemented
    return _check_layer_norm(x, normalized, weight, bias)


def _conv(m: nn.modules.conv._ConvNd, x: torch.Tensor) -> Any:
    """Conv output shape by the textbook formula; its parameters checked against the input.

    The meta kernel is cheap (0.13 ms) but the meta twin it needs copies every parameter to
    the meta device, and ResNet-50 runs 53 convs in each of capture and the post-rewrite check.
    Anything unusual (dtype mismatch, an empty output) goes to the kernel, which says why.
    """
    k = len(m.kernel_size)
    w, b = m.weight, m.bias
    if x.dim() not in (k + 1, k + 2) or x.dtype != w.dtype:
        return NotImplemented
    c = x.shape[-k - 1]
    g = m.groups
    if c != m.in_channels or c % g or m.out_channels % g:
        raise RuntimeError(f"{type(m).__name__} expects {m.in_channels} channels, got {c}")
    if tuple(w.shape) != (m.out_channels, c // g, *m.kernel_size):
        raise RuntimeError(
            f"{type(m).__name__} weight {tuple(w.shape)} cannot take {c} channels in {g} groups "
            f"to {m.out_channels}"
        )
    if b is not None and tuple(b.shape) != (m.out_channels,):
        raise RuntimeError(f"{type(m).__name__} bias {tuple(b.shape)} for {m.out_channels}")
    size = tuple(x.shape[-k:])
    if m.padding == "same":
        out = size
    else:
        pad = (0,) * k if m.padding == "valid" else m.padding
        out = tuple(
            (n + 2 * p - d * (q - 1) - 1) // s + 1
            for n, p, d, q, s in zip(size, pad, m.dilation, m.kernel_size, m.stride, strict=True)
        )
    if min(out) <= 0:
        return NotImplemented
    return _empty((*x.shape[: -k - 1], m.out_channels, *out), x.dtype)


_MODULE_RULES: dict[type, Callable[[Any, torch.Tensor], Any]] = {
    nn.modules.batchnorm._BatchNorm: _batch_norm,
    nn.GroupNorm: _group_norm,
    nn.LayerNorm: _layer_norm,
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
}


_STOCK_FORWARDS = {c.forward for c in _SAME_SHAPE_MODULES}


def _same_shape(_m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _empty(x.shape, x.dtype)


def _module_rule(m: nn.Module) -> Callable[[Any, torch.Tensor], Any] | None:
    """The shape rule of a module, unless a subclass overrides ``forward`` (then its kernels)."""
    forward = type(m).forward
    for cls in type(m).__mro__:
        if cls in _MODULE_RULES:
            return _MODULE_RULES[cls] if forward is cls.forward else None
    if isinstance(m, _SAME_SHAPE_MODULES) and forward in _STOCK_FORWARDS:
        return _same_shape
    return None


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``torch.cat``: the meta kernel is Python (1-2 ms a call, DenseNet makes hundreds)."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if set(kwargs) - {"tensors", "dim"} or not isinstance(dim, int):
        return NotImplemented
    if not isinstance(tensors, (list, tuple)) or not _meta_floats(*tensors):
        return NotImplemented
    shapes = [tuple(t.shape) for t in tensors]
    if len(shapes) != len(tensors) or any(len(x) != len(shapes[0]) or not x for x in shapes):
        return NotImplemented  # legacy empty 1-D operands and the like: the kernel decides
    d = dim % len(shapes[0])
    for x in shapes:
        if x[:d] + x[d + 1 :] != shapes[0][:d] + shapes[0][d + 1 :]:
            raise RuntimeError(f"torch.cat along {dim} of mismatched shapes {shapes}")
    out = list(shapes[0])
    out[d] = sum(x[d] for x in shapes)
    return _empty(out, functools.reduce(torch.promote_types, (t.dtype for t in tensors)))


_LAYER_NORMS = {F.layer_norm, torch.layer_norm}

_ATTENTION_KWARGS = {"need_weights", "average_attn_weights", "key", "value"}


def _attention(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Self- or cross-attention with one input width (a leaf ``nn.MultiheadAttention``): the
    output is the query with the output width, weights are ``[N, L, S]``."""
    if set(kwargs) - _ATTENTION_KWARGS or len(args) > 3:
        return NotImplemented
    if isinstance(m, nn.MultiheadAttention) and (
        not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn
    ):
        return NotImplemented
    q = args[0]
    k = args[1] if len(args) > 1 else kwargs.get("key", q)
    v = args[2] if len(args) > 2 else kwargs.get("value", k)
    if not _meta_floats(q, k, v) or q.dim() not in (2, 3) or not (q.dim() == k.dim() == v.dim()):
        return NotImplemented
    inner = m.num_heads * m.head_dim
    w_in, w_out = m.in_proj_weight, m.out_proj.weight
    width = q.shape[-1]
    if tuple(w_in.shape) != (3 * inner, width) or k.shape[-1] != width or v.shape[-1] != width:
        raise RuntimeError(f"attention in_proj {tuple(w_in.shape)} cannot take width {width}")
    if w_out.dim() != 2 or w_out.shape[1] != inner:
        raise RuntimeError(f"attention out_proj {tuple(w_out.shape)} does not read {inner}")
    out = _empty((*q.shape[:-1], w_out.shape[0]), q.dtype)
    if not kwargs.get("need_weights", True):
        return out, None
    seq = 1 if m.batch_first and q.dim() == 3 else 0
    lq, lk = q.shape[seq], k.shape[seq]
    batch = () if q.dim() == 2 else (q.shape[1 - seq],)
    heads = () if kwargs.get("average_attn_weights", True) else (m.num_heads,)
    return out, _empty((*batch, *heads, lq, lk), q.dtype)


_ATTENTION_FORWARDS = {nn.MultiheadAttention.forward}
_SDPA_KWARGS = {"attn_mask", "dropout_p", "is_causal", "scale"}


def _sdpa(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``scaled_dot_product_attention``'s meta kernel decomposes the whole attention; its
    output is the query with the value's width (q, k, v sharing batch and head axes)."""
    if len(args) != 3 or set(kwargs) - _SDPA_KWARGS or not _meta_floats(*args):
        return NotImplemented
    q, k, v = args
    mask = kwargs.get("attn_mask")
    if not (q.dim() == k.dim() == v.dim() >= 2) or q.shape[:-2] != k.shape[:-2]:
        return NotImplemented
    if k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        return NotImplemented
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or not mask.is_meta:
            return NotImplemented
        want = (*q.shape[:-1], k.shape[-2])
        if _broadcast_shape(tuple(mask.shape), want) != want:
            return NotImplemented
    return _empty((*q.shape[:-1], v.shape[-1]), q.dtype)


# Rules that stand in for kernels doing multiply-accumulates: the cost model must run those
# kernels, because it counts MACs with torch's FlopCounterMode on what actually runs.
_MAC_RULES = {_conv, _linear}


def shape_only(
    op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, macs: bool = False
) -> Any:
    """The meta output of one op from shapes alone, or ``NotImplemented`` to run its kernel.

    ``op`` is the fx node kind (``call_module`` with the module as ``target``,
    ``call_function``, ``call_method`` with the method name). ``macs=True`` leaves the ops that
    multiply-accumulate (conv, linear, attention) to their kernels, so a FlopCounterMode
    around the run sees them.
    """
    if op == "call_function" and target is torch.cat:
        return _cat(args, kwargs)
    if op == "call_function" and target is F.scaled_dot_product_attention:
        return NotImplemented if macs else _sdpa(args, kwargs)
    if op == "call_function" and target in _LAYER_NORMS and args:
        return _layer_norm_call(args, kwargs)
    if op == "call_module" and type(target).forward in _ATTENTION_FORWARDS and args:
        return NotImplemented if macs else _attention(target, args, kwargs)
    if not args or not _meta_floats(*args[:2]):
        return NotImplemented
    x = args[0]
    if op == "call_module" and len(args) == 1 and not kwargs:
        rule = _module_rule(target)
        if rule is None or (macs and rule in _MAC_RULES):
            return NotImplemented
        return rule(target, x)
    if op == "call_function":
        if target in _UNARY and isinstance(x, torch.Tensor):
            return _empty(x.shape, x.dtype)
        if target in _BINARY and len(args) == 2 and not kwargs:
            return _broadcast(*args)
        if target in _INPLACE and len(args) == 2 and isinstance(x, torch.Tensor):
            return _inplace(*args)
    if op == "call_method" and isinstance(x, torch.Tensor):
        if target in _UNARY_METHODS and len(args) == 1 and not kwargs:
            return x if target.endswith("_") else _empty(x.shape, x.dtype)
        if target in _BINARY_METHODS and len(args) == 2 and not kwargs:
            return _broadcast(*args)
        if target in _INPLACE_METHODS and len(args) == 2 and not kwargs:
            return _inplace(*args)
    return NotImplemented
