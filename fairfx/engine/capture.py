"""Capture: trace a model into a torch.fx GraphModule with shapes and constants recorded.

Capture never touches the caller's model: it traces a copy. Modules stay modules (leaf calls in
the graph), so the captured and the pruned GraphModule keep train/eval behaviour (BatchNorm,
Dropout) and keep training like the original. The graph is traced in eval mode, because
training-only branches (Inception's auxiliary logits) are not part of a deployed model; the copy
is put back in the caller's mode afterwards.

Every node gets ``node.meta["fairfx_shape"]`` (a tuple for tensors, None otherwise) and
``node.meta["fairfx_value"]`` for small non-tensor values (ints, sizes, slices) so later passes can
evaluate shape arithmetic without re-running the model. Capture does not depend on autograd:
frozen parameters and ``requires_grad=False`` models trace the same way.
"""

from __future__ import annotations

import copy
import linecache
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import CaptureError, first_line
from .bake import bake_weights
from .export_capture import export_graph
from .mha import split_attention
from .shapes import ShapeInterpreter
from .windows import open_windows


def _extra_leaves() -> tuple[type[nn.Module], ...]:
    """torchvision modules whose forward is channel-separable and whose behaviour depends on
    ``self.training``: tracing into them would freeze the eval branch into the graph. Looked up
    only when torchvision is imported already (a model holding one has imported it), so
    ``import fairfx`` does not import torchvision."""
    ops = sys.modules.get("torchvision.ops")
    return (ops.StochasticDepth,) if ops is not None else ()


try:  # generates the Python code at the first call, not at construction
    from torch.fx._lazy_graph_module import _LazyGraphModule as _CapturedModule
except ImportError:  # pragma: no cover - a torch without it: the code is made at once
    _CapturedModule = fx.GraphModule
# The captured graph is read (shapes, rules, rewrite) far more often than it is run: channel
# graph + prune never call it, and making its code was a tenth of ViT-B/16's whole build + prune.
# torch's inductor uses the same class for the same reason; any call or ``.code`` makes the code.


# Classes given a channel rule with fairfx.register_rule (engine/custom.py): their rule reads
# the module call, so tracing stops at them.
CUSTOM_LEAVES: set[type[nn.Module]] = set()


class _Tracer(fx.Tracer):
    """Default torch.nn leaves, channel-agnostic modules with train-only behaviour, and the
    classes registered with :func:`fairfx.register_rule`."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*_extra_leaves(), *CUSTOM_LEAVES)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class Captured:
    """A traced copy of the user's model with its example inputs."""

    gm: fx.GraphModule
    inputs: tuple[Any, ...]


def as_inputs(example_input: Any) -> tuple[Any, ...]:
    """Normalise the example input to the positional-argument tuple of ``forward``."""
    if isinstance(example_input, tuple):
        return example_input
    if isinstance(example_input, list) and not isinstance(example_input, torch.Tensor):
        return tuple(example_input)
    return (example_input,)


def capture(model: nn.Module, example_input: Any) -> Captured:
    """Trace a copy of ``model`` and record shapes and constant values on every node."""
    if not isinstance(model, nn.Module):
        raise CaptureError(
            f"fairfx expects a torch.nn.Module, got {type(model).__name__}; wrap a function in a "
            "Module whose forward calls it."
        )
    inputs = as_inputs(example_input)
    if not any(isinstance(t, torch.Tensor) for t in inputs):
        raise CaptureError("example_input must be a tensor or a tuple holding at least one tensor.")
    was_training = model.training
    work = (
        copy.deepcopy(model, share_tensors(model))  # its graph is written to: copy it too
        if isinstance(model, fx.GraphModule)
        else copy_structure(model)
    )
    work.eval()
    baked = bake_weights(work)  # weight_norm / spectral_norm: plain weights in the copy
    opened = [] if isinstance(work, fx.GraphModule) else split_attention(work) + open_windows(work)
    # attention weights nobody reads would block the heads: drop them before the code is made
    gm = work if isinstance(work, fx.GraphModule) else _trace(work, inputs, prune_dead=bool(opened))
    gm.meta["fairfx_baked"] = baked
    record_shapes(gm, inputs)
    if was_training:  # else every module is in eval mode already
        gm.train()
    return Captured(gm=gm, inputs=inputs)


def tensors_of(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor a module tree holds: parameters, buffers and plain tensor attributes."""
    out: list[torch.Tensor] = []
    for m in model.modules():
        out.extend(t for t in m._parameters.values() if t is not None)
        out.extend(t for t in m._buffers.values() if t is not None)
        out.extend(v for v in vars(m).values() if isinstance(v, torch.Tensor))
    return out


def copy_structure(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """A new module tree like ``module`` that shares its tensors.

    Every module object is new and so are its containers (the parameter, buffer, submodule and
    hook dicts, lists), so modes can be set and tensors replaced on the copy without touching the
    original; the tensors themselves are shared, which makes the copy cheap. A module reached
    twice is copied once (``memo``). Not for GraphModules, whose class is made per instance.
    """
    memo = {} if memo is None else memo
    twin = memo.get(id(module))
    if twin is not None:
        return twin
    twin = object.__new__(type(module))
    memo[id(module)] = twin
    state: dict[str, Any] = {}
    for k, v in vars(module).items():
        if k == "_modules":
            state[k] = {n: None if c is None else copy_structure(c, memo) for n, c in v.items()}
        elif isinstance(v, (dict, list, set)):
            state[k] = v.copy()  # keeps the type (OrderedDict hooks)
        else:
            state[k] = v
    twin.__dict__.update(state)
    return twin


def share_tensors(model: nn.Module, device: str | None = None) -> dict[int, Any]:
    """A deepcopy memo that copies the module tree but shares (or moves) its tensors.

    Capture only reads weights and the rewrite copies only what it keeps, so the structure is
    copied (train/eval flags can be set freely) without paying for the weights.
    """
    memo: dict[int, Any] = {}
    for t in tensors_of(model):
        if device is None:
            memo[id(t)] = t
        elif isinstance(t, nn.Parameter):
            memo[id(t)] = nn.Parameter(t.detach().to(device), requires_grad=t.requires_grad)
        else:
            memo[id(t)] = t.to(device)
    return memo


def _trace(model: nn.Module, inputs: tuple[Any, ...], *, prune_dead: bool) -> fx.GraphModule:
    """symbolic_trace (modules stay modules); where it fails, torch.export (export_capture.py).

    ``prune_dead`` removes unused nodes before the GraphModule is built, so its Python code is
    generated once (generating it is a third of tracing ViT-B/16).
    """
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        try:
            gm = export_graph(model, inputs)
        except CaptureError as second:
            raise CaptureError(f"{_explain_trace_failure(model, exc)} {second}") from exc
        if prune_dead and gm.graph.eliminate_dead_code():
            gm.recompile()
        return gm
    if prune_dead:
        graph.owning_module = tracer.root  # call_module purity is looked up there
        graph.eliminate_dead_code()
    return _CapturedModule(tracer.root, graph, type(model).__name__)


def _explain_trace_failure(model: nn.Module, exc: Exception) -> str:
    text = first_line(exc)
    hint = (
        "torch.fx cannot trace this construct. Fixes: make the offending submodule a leaf "
        "(trace it yourself with a torch.fx.Tracer whose is_leaf_module returns True for it and "
        "pass the resulting GraphModule), move data-dependent Python control flow out of "
        "forward, or wrap the function with torch.fx.wrap."
    )
    if "symbolically traced variables cannot be used as inputs to control flow" in text:
        hint = (
            "forward branches on a tensor value (an `if` or loop on a tensor). Fix: make that "
            "submodule a leaf module, or trace with concrete_args for the argument that decides "
            "the branch, and pass the resulting torch.fx.GraphModule to fairfx."
        )
    where = _offending_frame(model, exc)
    return f"could not trace {type(model).__name__}{where}: {type(exc).__name__}: {text}. {hint}"


def _offending_frame(model: nn.Module, exc: BaseException) -> str:
    """`` in submodule 'a.b' (Gate) at file.py:12 `if x.sum() > 0:` ``: the innermost frame of
    the user's code in the traceback, and the module whose forward it belongs to."""
    names = {id(m): name for name, m in model.named_modules()}
    torch_dir = os.path.dirname(torch.__file__)
    module, line = None, None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            module = owner
        if not frame.f_code.co_filename.startswith(torch_dir):
            line = (frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    parts = []
    if module is not None:
        qual = names[id(module)] or "(the model itself)"
        parts.append(f" in submodule '{qual}' ({type(module).__name__})")
    if line is not None:
        source = linecache.getline(*line).strip()
        parts.append(f" at {line[0]}:{line[1]}" + (f" `{source}`" if source else ""))
    return "".join(parts)


def _describe(value: Any) -> tuple[tuple[int, ...] | None, Any]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), None
    if isinstance(value, (int, float, bool, str, slice, torch.Size, type(None))):
        return None, value
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, float, bool, slice, type(None), type(Ellipsis))) for v in value
    ):
        return None, value
    if isinstance(value, (tuple, list)):
        shapes = tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in value)
        return shapes, None  # type: ignore[return-value]
    return None, None


# The fix a failed example run suggests; the CLI replaces it with its own flags.
EXAMPLE_HINT = "Check that example_input has the shape and dtype the model expects."


class _Recorder(ShapeInterpreter):
    """Runs the graph once and stores shapes and small constants in ``node.meta``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_traceback = False  # one-line errors: no fx trailer

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            raise CaptureError(
                f"running node {n.name!r} ({n.op} {n.target}) on the example input failed: "
                f"{type(exc).__name__}: {exc}. {EXAMPLE_HINT}"
            ) from exc
        shape, value = _describe(result)
        n.meta["fairfx_shape"] = shape
        n.meta["fairfx_value"] = value
        n.meta["fairfx_dtype"] = result.dtype if isinstance(result, torch.Tensor) else None
        return result


@torch.no_grad()
def record_shapes(gm: fx.GraphModule, inputs: Sequence[Any], *, fake: bool = True) -> Any:
    """Run ``gm`` on ``inputs`` in eval mode, annotating every node; return the output.

    By default the run uses meta tensors (shapes without data), then fake tensors, so capturing a
    large model on a large input costs no arithmetic. Graphs whose ops support neither are run on
    the real inputs.
    """
    if fake:
        try:  # meta twins are in eval mode whatever the module's mode: nothing to switch
            out = _meta_run(gm, inputs)
            gm.meta["fairfx_shapes"] = "meta"
            return out
        except CaptureError:
            pass
    was_training = gm.training
    gm.eval()
    try:
        if fake:
            try:
                out = _fake_run(gm, inputs)
                gm.meta["fairfx_shapes"] = "fake"
                return out
            except CaptureError:
                pass
        gm.meta["fairfx_shapes"] = "real"
        return _Recorder(gm).run(*inputs)
    finally:
        gm.train(was_training)


def _meta_run(gm: fx.GraphModule, inputs: Sequence[Any]) -> Any:
    """Shapes from the meta device: no data, no arithmetic, the cheapest way to propagate."""
    meta_inputs = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs]
    return _Recorder(gm, meta=True).run(*meta_inputs)


def _fake_run(gm: fx.GraphModule, inputs: Sequence[Any]) -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs]
    with mode:
        return _Recorder(gm).run(*fake_inputs)
