"""The deployment form of a pruned GraphModule: what it runs as once training is over.

In eval mode a BatchNorm right after a conv (or linear) is an affine map per output channel, so
it can be folded into that layer's weights and bias: one op instead of two, and one pass over
the activation less (on a CPU at batch 1, a separate BatchNorm is a visible share of a pruned
network's time; ``docs/latency.md`` has the numbers). The fold is exact up to float rounding,
so :func:`fairfx.verify` still proves the folded module against the original model.

``channels_last`` stores 4-D weights NHWC, so the convs after the first run in the layout
oneDNN's CPU kernels prefer; ``save_pruned`` and the CLI turn both on (``DEPLOY``): measured on
top of folding, 1.27-1.56x at batch 1 (``bench_latency.py --ablation``, docs/latency.md).

The user's module is never modified: the result is a copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

# (layer type, norm type) -> the fold; a BatchNorm is folded only into the layer it directly
# follows and only when that layer's output has no other reader.
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FOLDS = {
    **{(c, n): fuse_conv_bn_eval for c in _CONVS for n in _NORMS},
    (nn.Linear, nn.BatchNorm1d): fuse_linear_bn_eval,
}

_RECALIBRATED = "fairfx_bn_before_recalibration"  # written by fairfx.method.recalibrate
FOLDED = "_bn_folded"  # suffix of a layer with its BatchNorm folded in


def _fold_for(layer: nn.Module, norm: nn.Module) -> Any:
    if not getattr(norm, "track_running_stats", False) or norm.running_mean is None:
        return None  # batch statistics at inference: nothing fixed to fold
    return FOLDS.get((type(layer), type(norm)))


def fold_batchnorm(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a conv/linear into it, in place (``gm`` must
    be a copy the caller owns). Returns the (layer, norm) pairs folded."""
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or len(prev.users) != 1:
            continue
        norm, layer = gm.get_submodule(node.target), gm.get_submodule(prev.target)
        fold = _fold_for(layer, norm) if isinstance(norm, _NORMS) else None
        if fold is None:
            continue
        fused = fold(layer.eval(), norm.eval())
        # The fused layer gets a name of its own: it computes what the norm computed, and
        # fairfx.verify must not compare it with the original's layer output of that name.
        parent, _, leaf = prev.target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        setattr(owner, f"{leaf}{FOLDED}", fused)
        folded.append((prev.target, node.target))
        prev.target = f"{prev.target}{FOLDED}"
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    for names in folded:
        for name in names:
            parent, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(parent) if parent else gm, leaf)
    gm.graph.lint()
    gm.recompile()
    return folded


def deployment_form(
    module: fx.GraphModule, *, fold_bn: bool = True, channels_last: bool = False
) -> fx.GraphModule:
    """An eval-mode copy of ``module`` in the form it is shipped in: BatchNorm folded into the
    preceding layers (``fold_bn``), 4-D weights in channels_last (``channels_last``).

    ``.meta["fairfx"]["deploy"]`` records what was done, so :func:`fairfx.load_pruned` can
    rebuild the same structure from the original model and the keep lists.
    """
    gm = copy.deepcopy(module).eval()
    gm.meta = copy.deepcopy(getattr(module, "meta", {}))
    folded = fold_batchnorm(gm) if fold_bn else []
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    # Folded norms have no statistics of their own any more: verify cannot restore them.
    names = {n for _, n in folded}
    saved = gm.meta.get(_RECALIBRATED)
    if saved:
        gm.meta[_RECALIBRATED] = {k: v for k, v in saved.items() if k not in names}
    info = gm.meta.setdefault("fairfx", {})
    info["deploy"] = {"fold_bn": [list(p) for p in folded], "channels_last": channels_last}
    return gm


__all__ = ["deployment_form", "fold_batchnorm"]
