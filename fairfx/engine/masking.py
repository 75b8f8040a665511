"""Masked evaluations of ops that zero-masking cannot model exactly.

LayerNorm over the channel axis renormalizes over whatever channels exist, so removing a channel is
not the same as zeroing it. The channel rules register this function for such nodes; the oracle
calls it to evaluate the norm over the kept channels only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F


def masked_layer_norm(gm: fx.GraphModule, node: fx.Node, args, kwargs, keep: np.ndarray):
    """LayerNorm over the last axis computed on the kept channels, zeros elsewhere."""
    x = args[0]
    idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        w, b, eps = m.weight, m.bias, m.eps
    else:
        w = kwargs.get("weight", args[2] if len(args) > 2 else None)
        b = kwargs.get("bias", args[3] if len(args) > 3 else None)
        eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
    sub = F.layer_norm(
        x.index_select(-1, idx),
        (len(idx),),
        None if w is None else w.index_select(0, idx),
        None if b is None else b.index_select(0, idx),
        eps,
    )
    out = torch.zeros_like(x)
    out.index_copy_(-1, idx, sub)
    return out
