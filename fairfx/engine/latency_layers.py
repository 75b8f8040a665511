"""Micro-benchmarks for the latency table: which layers are timed, at which widths, and how.

Every conv and linear call of the captured graph is a :class:`Layer`, timed with the per-channel
modules right after it (BatchNorm, activation) as a fresh module of the same configuration at
other widths (the table of builders below: one entry per layer type, no model-specific code).
:func:`find_step` looks for the kernels' width steps.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .timing import median_ms

FRACTIONS = (1.0, 0.75, 0.5, 0.25)
STEPS = (16, 8, 4, 2)


def _conv(m: nn.Module, ci: int, co: int, groups: int) -> nn.Module:
    return type(m)(
        ci, co, m.kernel_size, m.stride, m.padding, m.dilation, groups,
        m.bias is not None, m.padding_mode,
    )  # fmt: skip


def _linear(m: nn.Module, ci: int, co: int, groups: int) -> nn.Module:
    return nn.Linear(ci, co, m.bias is not None)


def _norm(m: nn.Module, co: int) -> nn.Module:
    return type(m)(co, eps=m.eps, affine=m.affine).eval()


# Layers the table times, by type: how to build one at other widths.
LAYERS = {nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv, nn.Linear: _linear}
# Per-channel modules timed with the layer they follow: how to rebuild them at ``co`` channels.
FOLLOWERS = {
    **{t: _norm for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{
        t: (lambda m, co: m)
        for t in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid)
    },
}


def _layer_type(m: nn.Module) -> type | None:
    return next((t for t in LAYERS if isinstance(m, t)), None)


@dataclass
class Layer:
    """One conv/linear call: its widths, its input shape and the followers timed with it."""

    node: str
    target: str
    ci: int
    co: int
    groups: int
    shape: tuple[int, ...]  # input shape at the table's batch, channels included
    chain: tuple[str, ...]
    channel_dim: int  # 1 for a conv's input, -1 for a linear's
    sig: str = ""
    channels_last: bool = False  # timed in NHWC, as the deployment form runs 2-D convs

    @property
    def joint(self) -> bool:
        """Input and output widths move together (depthwise/grouped convs)."""
        return self.groups > 1


def find_layers(gm: fx.GraphModule, scale: float, channels_last: bool = False) -> list[Layer]:
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        kind = _layer_type(mod)
        if kind is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        shape = node.args[0].meta.get("fairfx_shape")
        if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
            continue
        shape = (max(1, round(shape[0] * scale)), *shape[1:])
        chain, cur = [], node
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            if user.op != "call_module" or type(gm.get_submodule(user.target)) not in FOLLOWERS:
                break
            chain.append(user.target)
            cur = user
        w = mod.weight
        groups = getattr(mod, "groups", 1)
        ci, co = (w.shape[1] * groups, w.shape[0])
        dim = -1 if kind is nn.Linear else 1
        layer = Layer(node.name, node.target, int(ci), int(co), groups, (*shape,), (*chain,), dim)
        layer.channels_last = channels_last and len(shape) == 4
        follow = ",".join(type(gm.get_submodule(t)).__name__ for t in chain)
        layer.sig = f"{type(mod).__name__}({mod.extra_repr()})|{list(shape)}|{follow}"
        out.append(layer)
    return out


def _snap(c: float, size: int, multiple: int = 8) -> int:
    if size < 2 * multiple:
        return max(1, round(c))
    return int(min(size, max(multiple, round(c / multiple) * multiple)))


def _widths(size: int, multiple: int = 8) -> list[int]:
    return sorted({_snap(f * size, size, multiple) for f in FRACTIONS})


def bench_module(gm: fx.GraphModule, layer: Layer, ci: int, co: int) -> nn.Module:
    mod = gm.get_submodule(layer.target)
    groups = layer.groups
    if layer.joint and groups == layer.ci:  # depthwise: one group per channel
        groups = ci
    parts = [LAYERS[_layer_type(mod)](mod, ci, co, groups)]
    for t in layer.chain:
        follower = gm.get_submodule(t)
        parts.append(FOLLOWERS[type(follower)](follower, co))
    bench = nn.Sequential(*parts).eval()
    return bench.to(memory_format=torch.channels_last) if layer.channels_last else bench


def bench_input(layer: Layer, ci: int) -> torch.Tensor:
    shape = list(layer.shape)
    shape[layer.channel_dim] = ci
    x = torch.randn(shape)
    return x.contiguous(memory_format=torch.channels_last) if layer.channels_last else x


def _joint(layer: Layer, f: float) -> tuple[int, int]:
    """Widths of a depthwise conv (one group per channel: ``groups`` follows the width) or a
    grouped one (the groups stay; each loses the same columns) at fraction ``f``."""
    if layer.groups == layer.ci:
        c = _snap(f * layer.ci, layer.ci)
        return c, c * layer.co // layer.ci
    g = layer.groups
    return g * max(1, round(f * layer.ci / g)), g * max(1, round(f * layer.co / g))


def configs(layer: Layer) -> list[tuple[int, int]]:
    """The (input, output) widths measured for one layer."""
    if layer.joint:
        return sorted({_joint(layer, f) for f in FRACTIONS})
    outs = [(layer.ci, w) for w in _widths(layer.co)]
    ins = [(w, layer.co) for w in _widths(layer.ci)] if layer.ci > 3 else []
    return sorted(set(outs + ins))


def macs(layer: Layer, ci: int, co: int) -> float:
    spatial = float(np.prod(layer.shape[2:])) if len(layer.shape) > 2 else 1.0
    linear = layer.channel_dim == -1
    lead = float(np.prod(layer.shape[:-1])) if linear else layer.shape[0]
    spatial = 1.0 if linear else spatial
    groups = ci if (layer.joint and layer.groups == layer.ci) else layer.groups
    return lead * spatial * ci * co / max(groups, 1)


def find_step(gm, layers: Sequence[Layer], curves, repeats: int) -> tuple[int, list[dict]]:
    """The kernels' width step: the largest s such that removing s-1 channels below a multiple
    of 16 saves under a quarter of what a proportional model predicts, voted over up to three
    mid-width dense layers (the slowest ones)."""
    dense = [
        lay for lay in {lay.sig: lay for lay in layers}.values()
        if not lay.joint and 48 <= lay.co <= 1024
    ]  # fmt: skip
    dense.sort(key=lambda lay: -max(t for _, _, t in curves[lay.sig]))
    votes, evidence = [], []
    for lay in dense[:3]:
        w = 16 * int(0.75 * lay.co // 16)
        times = {}
        for d in (0, 1, 3, 7, 15):
            bench = bench_module(gm, lay, lay.ci, w - d)
            times[w - d] = median_ms(
                bench, (bench_input(lay, lay.ci),), repeats=repeats, warmup=2, fastest=True
            )
        step = next(
            (s for s in STEPS if times[w - s + 1] >= times[w] * (1 - 0.25 * (s - 1) / w)), 1
        )
        votes.append(step)
        evidence.append({"layer": lay.target, "ms": {str(k): v for k, v in times.items()}})
    step = int(statistics.median_low(votes)) if votes else 1
    return step, evidence


__all__ = ["Layer", "bench_input", "bench_module", "configs", "find_layers", "find_step", "macs"]
