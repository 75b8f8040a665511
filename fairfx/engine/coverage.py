"""Coverage: every parameter the graph uses is accounted for by a channel group.

A parameter is accounted for when it belongs to a producer (a conv, a linear, a functional
weight) or when an edit slices it with a group's channels (a norm, a layer scale, a reader's
input columns). Any other parameter belongs to an op the rules could not tie to a tracked
channel axis: an embedding table, a custom module or function with weights, a parameter mixed in
along another axis. Rather than letting it vanish from ``channel_groups`` (a user would take its
absence for "nothing to prune here"), each such op becomes a producer of its own, blocked, with
the reason; ``fairfx inspect`` lists it like any other group.
"""

from __future__ import annotations

import torch.fx as fx

from .channel_pass import ChannelPass
from .rules.common import describe

_WIDTH_ATTRS = ("out_channels", "out_features", "embedding_dim", "num_features", "embed_dim")


def graph_parameters(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Every parameter the graph uses, with the first node that uses it (a module call or the
    op reading a ``get_attr``)."""
    out: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            for name, _ in m.named_parameters():
                out.setdefault(f"{node.target}.{name}", node)
        elif node.op == "get_attr":
            try:
                gm.get_parameter(node.target)
            except AttributeError:
                continue
            out.setdefault(node.target, next(iter(node.users), node))
    return out


def _owned(name: str, owners: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in owners for i in range(1, len(parts) + 1))


def account_for_parameters(a: ChannelPass) -> list[str]:
    """Make every unaccounted parameter's op a blocked producer; returns the names added."""
    owners = {p.name for p in a.producers}
    owners |= {e.weights for e in a.edits if e.weights is not None}
    by_op: dict[str, tuple[fx.Node, list[str]]] = {}
    for name, user in graph_parameters(a.gm).items():
        if _owned(name, owners):
            continue
        key = user.target if user.op == "call_module" else name.rpartition(".")[0] or name
        by_op.setdefault(key, (user, []))[1].append(name)
    added = []
    for key, (user, names) in by_op.items():
        if key in a.producer_index:  # e.g. a producer named after the module, read elsewhere
            continue
        a.node = user
        slots = a.produce(key, _width(a, user, names))
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        a.block(
            slots,
            f"{describe(a, user)} holds parameters ({shown}) that no channel rule ties to a "
            "tracked channel axis, so they are kept whole",
        )
        added.append(key)
    a.node = None
    return added


def _width(a: ChannelPass, user: fx.Node, names: list[str]) -> int:
    """The op's output width where it says one, else the first dimension of its parameter."""
    if user.op == "call_module":
        m = a.module(user.target)
        for attr in _WIDTH_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                return int(getattr(m, attr))
    p = a.gm.get_parameter(names[0])
    return int(p.shape[0]) if p.dim() else 1


def unlisted_parameters(gm: fx.GraphModule, groups: list) -> list[str]:
    """Parameters of ``gm`` that no group names as a producer or a member: should be none.

    Read from the public groups and ``gm.named_parameters()`` (a GraphModule holds only what its
    graph uses), independently of how the pass accounted for them: the zoo sweep's check."""
    listed = {name for g in groups for name in (*g.producers, *g.members)}
    return [name for name, _ in gm.named_parameters() if not _owned(name, listed)]
