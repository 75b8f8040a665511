"""Capture through ``torch.export`` for models ``torch.fx.symbolic_trace`` cannot trace.

Hugging Face models branch on shapes and iterate over proxies, timm models compute sizes from the
input: symbolic tracing refuses them, ``torch.export.export(model, args, strict=False)`` does not.
The exported program is an ATen graph whose parameters are ``get_attr`` nodes named by the
module path (``bert.encoder.layer.0.attention.self.query.weight``), so the same channel pass runs
on it with the ATen entries of the rule table (:mod:`fairfx.engine.rules.aten`), and producers
keep the module names users know.

What the result is (decisions, see docs/decisions.md):

- a plain ``torch.fx.GraphModule`` taking the flat tensor inputs and returning the flat outputs
  (one tensor when the model returns one, e.g. a ``SequenceClassifierOutput``'s logits);
- captured in eval mode, then made to train again (:func:`restore_modes`): every ATen dropout
  and batch norm that came from a ``torch.nn`` Dropout or BatchNorm module becomes a call of
  such a module again (at the module's own path, holding the same tensors), so ``.train()``
  drops out and updates running statistics, and ``.eval()`` is deterministic, as for a traced
  model. Mode-dependent ops of other origins keep their eval behaviour (a functional
  ``F.dropout(training=self.training)`` inside a custom module, attention dropout baked into
  ``scaled_dot_product_attention`` as 0): which branch such code takes in training cannot be
  read from an eval graph, and guessing it could train a different network. They are listed in
  ``gm.meta["fairfx_eval_only"]``;
- the batch axis is exported as dynamic where the model allows it, so other batch sizes run.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import CaptureError, first_line


def export_graph(model: nn.Module, inputs: Sequence[Any]) -> fx.GraphModule:
    """``torch.export`` a model (already a structural copy, in eval mode) into a GraphModule."""
    args = tuple(inputs)
    try:
        with _quiet_torch_logs():
            program = _export(model, args)
    except Exception as exc:  # export raises many types (UserError, Unsupported, ...)
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} either: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    return _plain(program.module(), type(model).__name__)


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs warnings and prints its partial graph to stderr (66 lines for one
    data-dependent ``if``) before raising; fairfx reports the failure in one line, so those
    are held back."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
    gm.meta["fairfx_eval_only"] = restore_modes(gm)
    return gm.eval()  # captured in eval mode; capture puts it in the caller's mode


aten = torch.ops.aten
_DROPOUTS = {  # ATen op -> {torch.nn class name the op came from: module to call instead}
    aten.dropout.default: {"Dropout": nn.Dropout},
    aten.feature_dropout.default: {"Dropout1d": nn.Dropout1d, "Dropout2d": nn.Dropout2d,
                                   "Dropout3d": nn.Dropout3d},
    aten.alpha_dropout.default: {"AlphaDropout": nn.AlphaDropout},
    aten.feature_alpha_dropout.default: {"FeatureAlphaDropout": nn.FeatureAlphaDropout},
}  # fmt: skip
_NORMS = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d,
          "BatchNorm3d": nn.BatchNorm3d, "SyncBatchNorm": nn.BatchNorm2d}  # fmt: skip
_BN_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _origin(node: fx.Node) -> tuple[str, str] | None:
    """(module path, class name) of the ``torch.nn`` module whose forward emitted ``node``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    module, _, name = cls.rpartition(".")
    return (path, name) if module.startswith("torch.nn.modules") else None


def restore_modes(gm: fx.GraphModule) -> list[str]:
    """Turn eval-mode ATen dropout and batch norm back into ``torch.nn`` module calls (see the
    module docstring); returns the nodes whose eval behaviour stays, described."""
    eval_only = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            kept = _restore(gm, node, _origin(node))
            if kept:
                eval_only.append(f"{node.name} ({kept})")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return eval_only


def _restore(gm: fx.GraphModule, node: fx.Node, where: tuple[str, str] | None) -> str | None:
    """Make one mode-dependent node a module call; the reason when it must stay as captured."""
    if node.target in _DROPOUTS and node.args[2] is False:
        cls = _DROPOUTS[node.target].get(where[1]) if where else None
        if cls is None or not _call_module(gm, node, where[0], cls(node.args[1])):
            return f"{node.target}, not from a torch.nn dropout"
    elif node.target is aten.scaled_dot_product_attention.default:
        if node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0) == 0:
            return "attention dropout, if any, baked in as 0"
    elif node.target is aten.batch_norm.default and node.args[5] is False:
        restored = where is not None and where[1] in _NORMS and _batch_norm(gm, node, where)
        return None if restored else "batch norm, not from a torch.nn BatchNorm"
    return None


def _call_module(
    gm: fx.GraphModule, node: fx.Node, path: str, module: nn.Module, *, replace: bool = False
) -> bool:
    """Call ``module``, put at ``path``, on the node's input instead of the node. An existing
    module there is reused when it is of the same type, replaced when ``replace`` or empty."""
    try:
        present = gm.get_submodule(path)
    except AttributeError:
        present = None
    if present is None or (type(present) is not type(module) and replace):
        if not gm.add_submodule(path, module):
            return False
    elif type(present) is not type(module):
        if list(present.children()) or present._parameters or present._buffers:
            return False
        gm.add_submodule(path, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (node.args[0],))
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    return True


def _batch_norm(gm: fx.GraphModule, node: fx.Node, where: tuple[str, str]) -> bool:
    """A BatchNorm module holding the node's own tensors (read by ``get_attr`` from the module
    path, as export leaves them), called instead of the eval-mode ATen op."""
    w, b, mean, var, _, momentum, eps = node.args[1:8]
    path, cls = where
    reads = [t for t in (w, b, mean, var) if t is not None]
    if mean is None or var is None or momentum == 0.0:
        return False  # momentum 0.0 is also what momentum=None gives in eval: unknown
    if any(t.op != "get_attr" or t.target.rpartition(".")[0] != path for t in reads):
        return False
    holder = gm.get_submodule(path)
    own = set(holder._parameters) | set(holder._buffers)
    if list(holder.children()) or not own <= _BN_TENSORS:
        return False
    with torch.device("meta"):  # every tensor is the holder's: allocate none
        bn = _NORMS[cls](holder.running_mean.shape[0], eps, momentum, affine=w is not None)
    for name in own:
        table = bn._parameters if name in holder._parameters else bn._buffers
        table[name] = getattr(holder, name)
    if "num_batches_tracked" not in own:
        bn.num_batches_tracked = torch.tensor(0, device=holder.running_mean.device)
    return _call_module(gm, node, path, bn, replace=True)
