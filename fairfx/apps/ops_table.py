"""The supported-ops table, built from the rule tables of :mod:`fairfx.engine.rules`.

One row per rule function, listing every op it serves, so adding or removing a rule changes the
table; ``python -m fairfx.apps.readme --ops`` writes it and ``tests/test_readme.py`` fails while
docs/ops.md is stale. Ops with no rule are listed as blocking (their channels are kept).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..engine import rules
from ..engine.custom import LayerRule

# What each rule function does, keyed by "<module in fairfx.engine.rules>.<qualified name>".
# A rule missing here still gets a row (its docstring's first line), so new rules never break
# the generator; rules with the same kind and text share one row.
_CONV = (
    "new output channels, input channels sliced. `groups > 1`: column *j* of every conv group is "
    "one unit (same offsets kept in every group); depthwise (groups = in) follows its input, "
    "multiplier too; ConvTranspose with groups > 1 blocks"
)
_LN = (
    "over the channel axis: prunable, but the statistics change, so such groups are marked "
    "`exact=False` and verified against the LayerNorm over the kept channels (see "
    "docs/decisions.md)"
)
_RESHAPE = (
    "solved on index tensors (view, flatten, shuffles, split heads); size constants rewritten"
)
_ALONG = "along another axis: pass through; along the channel axis: blocks"
DESCRIPTIONS: dict[str, tuple[int, str, str]] = {
    "modules.conv": (0, "produce", _CONV),
    "functional.conv": (0, "produce", _CONV + " (on parameters)"),
    "modules.linear": (1, "produce", "new output features, input features sliced"),
    "functional.linear": (1, "produce", "new output features, input features sliced"),
    "modules.per_channel.<locals>.rule": (10, "per-channel", "pass through, parameters sliced"),
    "functional.batch_norm": (10, "per-channel", "pass through, parameters sliced"),
    "common.passthrough": (11, "per-channel", "pass through"),
    "common.param_alias": (12, "per-channel", "pass through (a parameter's alias stays tied)"),
    "modules.group_norm": (20, "normalization", "whole norm groups kept or removed (exact)"),
    "modules.layer_norm": (21, "normalization", _LN),
    "functional.layer_norm": (21, "normalization", _LN),
    "common.spatial": (30, "spatial", "pass through when the channel axis is untouched"),
    "common.elementwise": (
        40,
        "couple",
        "unions the channels of its operands; a parameter broadcast along channels (layer "
        "scale, position embedding) is sliced",
    ),
    "joins.cat": (50, "concatenate", "offsets along the channel axis; along another axis, couples"),
    "joins.split": (60, "split", "slices of channels; split sizes rewritten to the kept counts"),
    "shape.getitem": (
        61,
        "index",
        "`x[:, a:b]` and items of split/chunk results: slices of channels, bounds rewritten; "
        "`x[:, i]` (one channel picked by an integer) blocks",
    ),
    "shape.index_shape": (70, "reshape", _RESHAPE),
    "modules.flatten_module": (70, "reshape", _RESHAPE),
    "common.reduce_dims": (
        80,
        "reduce",
        "over other axes: pass through; over channels: blocks (a removed zero can be the extreme)",
    ),
    "reductions.channel_reduce": (
        79,
        "reduce",
        "over other axes: pass through; over the channel axis: exact, the mean rescaled by "
        "kept/original channels (RMSNorm's mean of squares; see docs/causal_lm.md)",
    ),
    "reductions.rms_norm": (
        22,
        "normalization",
        "over the channel axis: exact (eps and output "
        "rescaled to the original width; see docs/causal_lm.md)",
    ),
    "reductions.rms_norm_module": (
        22,
        "normalization",
        "over the channel axis: exact (eps and "
        "output rescaled to the original width; see docs/causal_lm.md)",
    ),
    "common.along_dim": (81, "along an axis", _ALONG),
    "modules.softmax_module": (81, "along an axis", _ALONG),
    "attention.multihead_attention": (
        90,
        "attention",
        "opened by capture into q/k/v projections, a head split and attention: whole heads "
        "and the embedding channels prune (`kdim`/`vdim`, both `batch_first`, masks); "
        "`add_bias_kv`, `add_zero_attn` and per-head weights the caller reduces block; "
        "head-averaged weights prune (their mean over heads is rescaled)",
    ),
    "common.no_channels": (95, "no channels", "sizes, shapes and asserts: nothing to track"),
    "windows._last_axis": (
        93,
        "attention",
        "window partition and merge of opened Swin attention (`engine/windows.py`): tokens move, "
        "channels stay on the last axis; whole heads prune with their relative position bias "
        "and `logit_scale`",
    ),
    "windows.index_select": (64, "index", "along another axis than the channels: pass through"),
    "norms.normalize": (
        82,
        "along an axis",
        "`F.normalize` along another axis: pass through; along the channel axis: exact (a "
        "pruned channel adds nothing to a p-norm, p > 0)",
    ),
    "norms.sum_all": (79, "reduce", "sum of every element: reads the channels exactly"),
    "norms.vector_norm": (
        79,
        "reduce",
        "p-norm (p >= 0): over other axes pass through; over the channel axis exact, as a sum",
    ),
    "norms.power": (11, "per-channel", "pass through (a tensor exponent couples)"),
    "aten._gather_rows": (
        5,
        "produce",
        "`table[idx]` of a 2-D parameter (a relative position bias table): an embedding lookup, "
        "its columns are new channels",
    ),
    "aten._slice": (
        64,
        "index",
        "`slice` along the channel axis (Phi-3's fused qkv): the piece's channels, bounds "
        "rewritten to the kept counts; along another axis: pass through",
    ),
    "functional.aten_batch_norm": (10, "per-channel", "pass through, parameters sliced"),
    "functional.embedding": (
        2,
        "produce",
        "a lookup table `[vocab, dim]`: its `dim` columns are new channels on the last axis; "
        "tied to an output projection (GPT-2's `lm_head`), they are its input features",
    ),
    "functional.addmm": (
        3,
        "produce",
        "`addmm(bias, x, w)` with `w` of shape `[in, out]` (GPT-2's Conv1D): new output "
        "features, input features sliced",
    ),
    "heads.matmul": (
        91,
        "attention",
        "`x @ y` with channels on a batch axis of both (heads), or on the rows of `x` / the "
        "columns of `y`; channels on the contracted axis of both are consumed. Heads are units "
        "(see docs/decisions.md); per-head masks and `head_dim` channels block",
    ),
    "heads.sdpa": (
        92,
        "attention",
        "`scaled_dot_product_attention(q, k, v, ...)` with channels on the heads axis (GQA "
        "`enable_gqa`, causal, masks broadcast over heads, a per-head bias whose heads are "
        "tracked channels: T5's bias embedding, a relative position table gathered by index); "
        "heads are units (see docs/decisions.md)",
    ),
    "shape.reshape_as": (
        72,
        "reshape",
        "`y.reshape_as(other)` / `view_as`: the shape comes from a tensor pruned with it; "
        "run-time sizes (`x.shape`, `x.size(d)`) follow the kept counts (see docs/decisions.md)",
    ),
    "aten._on_other_axis": (
        62,
        "index",
        "select along an axis other than the channel axis: pass through",
    ),
    "joins.unbind": (
        63,
        "index",
        "unbind along another axis: every piece keeps the channels",
    ),
}

# Ops that block, named in the table's last row; one that gains a rule drops out by itself.
BLOCKING_EXAMPLES: dict[str, Callable[[], Any]] = {
    "`torch.roll`": lambda: torch.roll,
    "`torch.fft.fft`": lambda: torch.fft.fft,
    "torchvision's `shifted_window_attention`": lambda: _torchvision_swin(),
    "`torch.flip`": lambda: torch.flip,
    "`aten.index`": lambda: torch.ops.aten.index.Tensor,
}

_OPERATORS = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.iadd: "+=",
    operator.isub: "-=",
    operator.imul: "*=",
    operator.itruediv: "/=",
    operator.neg: "unary -",
    operator.getitem: "x[...]",
    operator.matmul: "@",
}


def _torchvision_swin() -> Any:
    from torchvision.models.swin_transformer import shifted_window_attention

    return shifted_window_attention


def rule_key(rule: Any) -> str:
    while isinstance(rule, functools.partial):  # a configured rule: name its function
        rule = rule.func
    module = getattr(rule, "__module__", "") or ""
    return f"{module.removeprefix('fairfx.engine.rules.')}.{getattr(rule, '__qualname__', rule)}"


def _module_name(cls: type) -> str:
    name = cls.__name__
    shown = f"{name[1:]}*" if name.startswith("_") else name  # a private base: any subclass
    if cls.__module__.startswith("torch.nn"):
        return f"`nn.{shown}`"
    return f"`{cls.__module__.split('.')[0]}.{shown}`"


def _function_name(fn: Any) -> str:
    if isinstance(fn, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        namespace, _, name = fn._schema.name.partition("::")  # torch.export's aten ops
        return f"`{namespace}.{name}`"
    if fn in _OPERATORS:
        return f"`{_OPERATORS[fn]}`"
    name = getattr(fn, "__name__", repr(fn))
    for prefix, namespace in (("F", F), ("torch", torch)):
        if getattr(namespace, name, None) is fn:
            return f"`{prefix}.{name}`"
    module = getattr(fn, "__module__", None) or ""
    if module == "builtins":
        return f"`{name}`"
    return f"`{module.split('.')[0]}.{name}`" if module else f"`{name}`"


def _rows() -> list[tuple[int, str, str, list[str]]]:
    """``(order, kind, description, op names)`` per distinct rule description."""
    ops: dict[tuple[int, str, str], list[str]] = {}

    def add(rule: Any, name: str) -> None:
        key = rule_key(rule)
        if key in DESCRIPTIONS:
            desc = DESCRIPTIONS[key]
        else:
            desc = (100, "other", _first_paragraph(rule) or f"rule `{key}`")
        names = ops.setdefault(desc, [])
        if name not in names:
            names.append(name)

    for cls, rule in rules.MODULE_RULES.items():
        if not isinstance(rule, LayerRule):  # a user's fairfx.register_rule, not fairfx's own
            add(rule, _module_name(cls))
    for fn, rule in rules.FUNCTION_RULES.items():
        add(rule, _function_name(fn))
    for method, rule in rules.METHOD_RULES.items():
        add(rule, f"`.{method}()`")
    return sorted((o, k, d, names) for (o, k, d), names in ops.items())


def _first_paragraph(rule: Any) -> str:
    while isinstance(rule, functools.partial):
        rule = rule.func
    doc = (getattr(rule, "__doc__", None) or "").strip().split("\n\n")[0]
    return " ".join(doc.split()).replace("``", "`").replace("|", "\\|")


def _has_rule(fn: Any) -> bool:
    return fn in rules.FUNCTION_RULES


def blocking_examples() -> list[str]:
    """The examples named in the table's last row that still have no rule."""
    shown = []
    for label, get in BLOCKING_EXAMPLES.items():
        try:
            fn = get()
        except Exception:  # pragma: no cover - an optional dependency is missing
            continue
        if not _has_rule(fn):
            shown.append(label)
    return shown


def ops_table() -> str:
    """The supported-ops section, generated from :mod:`fairfx.engine.rules`."""
    import torchvision.ops  # noqa: F401 - its rules are registered once it is imported

    rules.register_torchvision()
    lines = [
        "Generated from the rule tables in `fairfx/engine/rules/` by "
        "`python -m fairfx.apps.readme --ops` (a test fails when they disagree). Module rules "
        "match through the class's MRO, so a subclass of a listed module gets its rule *when "
        "torch.fx keeps the module as one call*: modules defined in `torch.nn` (fx's default "
        "leaves) and torchvision's `StochasticDepth`. A subclass defined elsewhere (say "
        "`class MyConv(nn.Conv2d)` in your package) is traced into, and the ops its `forward` "
        "calls are matched instead.",
        "",
        "| kind | ops | rule |",
        "|---|---|---|",
    ]
    for _, kind, desc, names in _rows():
        lines.append(f"| {kind} | {', '.join(names)} | {desc} |")
    examples = ", ".join([*blocking_examples(), "reductions over the channel axis", "`x[:, i]`"])
    lines.append(
        f"| anything else | e.g. {examples} | **blocks** the channels that reach it, named in "
        "the group's `reason` |"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ sections
