"""Capture through ``torch.export`` for models ``torch.fx.symbolic_trace`` cannot trace.

Hugging Face models branch on shapes and iterate over proxies, timm models compute sizes from the
input: symbolic tracing refuses them, ``torch.export.export(model, args, strict=False)`` does not.
The exported program is an ATen graph whose parameters are ``get_attr`` nodes named by the
module path (``bert.encoder.layer.0.attention.self.query.weight``), so the same channel pass runs
on it with the ATen entries of the rule table (:mod:`fairfx.engine.rules.aten`), and producers
keep the module names users know.

What the result is (decisions, see README):

- a plain ``torch.fx.GraphModule`` taking the flat tensor inputs and returning the flat outputs
  (one tensor when the model returns one, e.g. a ``SequenceClassifierOutput``'s logits);
- captured in eval mode: dropout is gone and BatchNorm uses its running statistics, baked into
  the ATen ops. ``.train()``/``.eval()`` are accepted and change nothing; fine-tuning trains the
  weights with frozen normalization statistics and no dropout;
- the batch axis is exported as dynamic where the model allows it, so other batch sizes run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import CaptureError


def export_graph(model: nn.Module, inputs: Sequence[Any]) -> fx.GraphModule:
    """``torch.export`` a model (already a structural copy, in eval mode) into a GraphModule."""
    args = tuple(inputs)
    try:
        program = _export(model, args)
    except Exception as exc:  # export raises many types (UserError, Unsupported, ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} either: "
            f"{type(exc).__name__}: {text}"
        ) from exc
    return _plain(program.module(), type(model).__name__)


def _export(model: nn.Module, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    dynamic = tuple(
        {0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() > 0 else None
        for a in args
    )
    try:
        return torch.export.export(model, args, dynamic_shapes=dynamic, strict=False)
    except Exception:  # a model that fixes its batch size: export it static
        return torch.export.export(model, args, strict=False)


def _plain(exported: fx.GraphModule, name: str) -> fx.GraphModule:
    """A plain GraphModule over flat inputs and outputs, without export's guard call."""
    graph = exported.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    graph._codegen = fx.graph.CodeGen()
    out = graph.find_nodes(op="output")[0]
    flat = out.args[0]
    if isinstance(flat, (tuple, list)) and len(flat) == 1:
        out.args = (flat[0],)
    for node in graph.nodes:  # export metadata holds values that do not deep-copy cheaply
        for key in ("val", "example_value", "tensor_meta", "unbacked_bindings"):
            node.meta.pop(key, None)
    graph.eliminate_dead_code()
    gm = fx.GraphModule(exported, graph, name)
    gm.meta["fairfx_capture"] = "torch.export"
    return gm
